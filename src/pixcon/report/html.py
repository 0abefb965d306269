"""Render report sections into one self-contained HTML page (images as base64 PNG data URIs).

The page loads nothing from elsewhere: no scripts, fonts or style sheets. It states its number of
figures twice, for people (``#figure-count``) and for tests (``<meta name="pixcon-figures">``);
every figure is one ``<img>``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class FigureItem:
    png: bytes
    caption: str


@dataclass
class Section:
    """One part of the report; a section with ``skipped`` set shows only why it has no data."""

    key: str  # HTML id
    title: str
    figures: list[FigureItem] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # HTML from :func:`table_html`
    notes: list[str] = field(default_factory=list)  # plain text
    skipped: str | None = None


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; margin-top: .3em; }
.skipped { color: #8a5a00; background: #fff6e0; padding: .5em .8em; border-left: 4px solid #e0a800; }
.note { color: #444; } code { background: #f3f3f3; padding: 0 .2em; }
nav ul { columns: 2; }
"""


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; every cell is escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def count_figures(sections: Sequence[Section]) -> int:
    return sum(len(s.figures) for s in sections if s.skipped is None)


def render_html(title: str, sections: Sequence[Section], intro: Sequence[str] = ()) -> str:
    """The whole page.

    Args:
        title: Page title and heading.
        sections: In display order.
        intro: Plain-text paragraphs under the heading (e.g. the inputs).
    """
    n_figures = count_figures(sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="pixcon-figures" content="{n_figures}">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f'<p class="note">{html.escape(p)}</p>' for p in intro]
    skipped = [s for s in sections if s.skipped is not None]
    parts.append(
        f'<p id="figure-count">This report has <strong>{n_figures}</strong> figure{"s" if n_figures != 1 else ""}'
        + (
            f" ({len(skipped)} section{'s' if len(skipped) != 1 else ''} skipped for lack of data)."
            if skipped
            else "."
        )
        + "</p>"
    )
    toc = "".join(
        f'<li><a href="#{s.key}">{html.escape(s.title)}</a>{" (skipped)" if s.skipped else ""}</li>'
        for s in sections
    )
    parts.append(f"<nav><ul>{toc}</ul></nav>")
    number = 0
    for s in sections:
        parts.append(f'<section id="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>')
        if s.skipped is not None:
            parts.append(f'<p class="skipped">Skipped: {html.escape(s.skipped)}</p></section>')
            continue
        parts += [f'<p class="note">{html.escape(n)}</p>' for n in s.notes]
        parts += s.tables
        for fig in s.figures:
            number += 1
            caption = html.escape(fig.caption)
            parts.append(
                f'<figure><img src="{data_uri(fig.png)}" alt="Figure {number}: {caption}">'
                f"<figcaption>Figure {number}. {caption}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
