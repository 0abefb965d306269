"""The user docs stay a guide: a short README, links that resolve, no stale session notes.

Checks README.md and every markdown file under docs/:

- README.md has at most 250 lines (the README is an overview; details live in docs/);
- every relative link resolves to an existing file, and a ``#anchor`` into a markdown file names one
  of its headings (GitHub's slug rules) or an explicit ``<a id=...>``;
- every file under docs/ is reachable from README.md through links (no orphaned guide or artefact);
- no line of README.md or of a guide in docs/ (not the experiment logs in docs/experiments/) carries a
  commit hash, a "fresh clone at" line, a session's wall-clock time or a date: those go stale.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 250

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
# [text](target "title") and ![alt](target); the text may hold one level of brackets and span lines.
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.IGNORECASE)
_HTML_ID = re.compile(r"<a\b[^>]*?\b(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")

# Lines that go stale: a commit hash (7-40 hex digits with at least one digit and one letter), a
# fresh-clone check, a session's wall-clock time ("8 min 22 s"), a date, a note about a session.
STALE_PATTERNS: dict[str, re.Pattern[str]] = {
    "commit hash": re.compile(
        r"(?<![0-9A-Za-z])(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![0-9A-Za-z])"
    ),
    "fresh clone": re.compile(r"fresh[- ]clone (?:at|check)", re.IGNORECASE),
    "session wall time": re.compile(r"\b\d+\s*min\s+\d+(?:\.\d+)?\s*s\b"),
    "date": re.compile(r"\b(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b"),
    "session note": re.compile(r"\b(?:this|that|earlier|previous|last|another) sessions?\b", re.IGNORECASE),
}


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading (github-slugger): lower case, punctuation dropped, spaces -> '-'.

    The heading's rendered text counts, so link markup keeps only its text and HTML tags vanish;
    backticks, asterisks and other punctuation are dropped by the character rule itself.
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in " -_" or (category[0] in "LMN" and category != "No"):
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def _prose(text: str) -> str:
    """``text`` with fenced code blocks and inline code spans blanked, line numbers kept."""
    lines, fence = [], ""
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = ""
            lines.append("")
        elif m:
            fence = m.group(1)
            lines.append("")
        else:
            lines.append(_CODE_SPAN.sub(lambda s: " " * len(s.group(0)), line))
    return "\n".join(lines)


def _is_setext_underline(line: str, above: str) -> bool:
    """``line`` (=== or ---) underlines ``above`` as a heading; not a rule under a list item or table."""
    if not _SETEXT.match(line) or not above.strip() or _ATX.match(above):
        return False
    return not (line.strip().startswith("-") and above.lstrip().startswith(("-", "*", "|")))


def anchors(text: str) -> set[str]:
    """Every ``#anchor`` a markdown text offers: heading slugs (numbered on repeats) and ``<a id>``."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    headings = []
    lines = text.split("\n")
    in_fence = ""
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if in_fence:
            if m and m.group(1)[0] == in_fence[0] and len(m.group(1)) >= len(in_fence):
                in_fence = ""
            continue
        if m:
            in_fence = m.group(1)
            continue
        atx = _ATX.match(line)
        if atx:
            headings.append(atx.group(2))
        elif i > 0 and _is_setext_underline(line, lines[i - 1]):
            headings.append(lines[i - 1].strip())
    for heading in headings:
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    found.update(_HTML_ID.findall(text))
    return found


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of every link and image in the prose of a markdown text."""
    prose = _prose(text)
    for pattern in (_INLINE_LINK, _REF_DEF, _HTML_LINK):
        for m in pattern.finditer(prose):
            yield prose.count("\n", 0, m.start()) + 1, m.group(1)


def broken_links(path: Path, root: Path) -> list[str]:
    """Relative links of ``path`` whose file (or, in a markdown file, heading) does not exist."""
    problems = []
    text = path.read_text(encoding="utf-8")
    for line, target in links(text):
        if _SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{line}: {target}"
        if not dest.is_relative_to(root.resolve()):
            problems.append(f"{where}: points outside the repository")
        elif not dest.exists():
            problems.append(f"{where}: {dest.relative_to(root.resolve())} does not exist")
        elif (
            anchor
            and dest.suffix == ".md"
            and dest.is_file()
            and unquote(anchor).lower() not in anchors(dest.read_text(encoding="utf-8"))
        ):
            problems.append(f"{where}: no heading with the anchor #{anchor} in {dest.name}")
    return problems


def stale_lines(text: str) -> list[tuple[int, str, str]]:
    """(line number, pattern name, line) of every line that matches a stale pattern."""
    hits = []
    for number, line in enumerate(text.split("\n"), start=1):
        for name, pattern in STALE_PATTERNS.items():
            if pattern.search(line):
                hits.append((number, name, line.strip()))
    return hits


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _guides() -> list[Path]:
    """README.md and the user guides: docs/*.md, not the experiment logs under docs/experiments/."""
    return [README, *sorted(DOCS.glob("*.md"))]


# --- the repository's docs --------------------------------------------------------------------------


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines; keep it at most {MAX_README_LINES}, move detail to docs/"
    )


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(path: Path) -> None:
    assert broken_links(path, REPO) == []


def test_every_docs_file_is_reachable_from_readme() -> None:
    reached, todo = {README.resolve()}, [README.resolve()]
    while todo:
        page = todo.pop()
        for _, target in links(page.read_text(encoding="utf-8")):
            file_part = target.partition("#")[0]
            if _SCHEME.match(target) or not file_part:
                continue
            dest = (page.parent / unquote(file_part)).resolve()
            if dest.is_file() and dest not in reached:
                reached.add(dest)
                if dest.suffix == ".md":
                    todo.append(dest)
    orphans = sorted(
        str(p.relative_to(REPO)) for p in DOCS.rglob("*") if p.is_file() and p.resolve() not in reached
    )
    assert orphans == [], f"files under docs/ that no link from README.md leads to: {orphans}"


@pytest.mark.parametrize("path", _guides(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_stale_lines_in_user_docs(path: Path) -> None:
    hits = stale_lines(path.read_text(encoding="utf-8"))
    assert hits == [], "\n".join(f"{path.relative_to(REPO)}:{n}: {name}: {line}" for n, name, line in hits)


# --- the checks themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        (
            "Multi-domain training: several datasets at once (Boutillon et al.)",
            "multi-domain-training-several-datasets-at-once-boutillon-et-al",
        ),
        (
            "Benchmark: `bench/train_step.py` (CE step against pretraining step)",
            "benchmark-benchtrain_steppy-ce-step-against-pretraining-step",
        ),
        ("Every method: `pixcon demo --methods all`", "every-method-pixcon-demo---methods-all"),
        ("Recipes (the demo's methods)", "recipes-the-demos-methods"),
        (
            "Why contrast → CE lost, and the **prototype** head",
            "why-contrast--ce-lost-and-the-prototype-head",
        ),
        ("See [the loss](loss.md) here", "see-the-loss-here"),
        ("Überblick & Größe", "überblick--größe"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_anchors_number_repeated_headings_and_skip_code() -> None:
    text = (
        '# Title\n\n## Setup\n\n```bash\n# not a heading\n```\n\n## Setup\n\nOther\n-----\n<a id="x-y"></a>\n'
    )
    assert anchors(text) == {"title", "setup", "setup-1", "other", "x-y"}


def test_broken_links_are_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## A section\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/guide.md) [ok](docs/guide.md#a-section) [ok](#top) [web](https://example.org/x)\n"
        "# Top\n"
        "[missing](docs/nope.md) and [bad anchor](docs/guide.md#b-section)\n"
        "`[code](not/checked.md)`\n"
        "```\n[fenced](not/checked.md)\n```\n"
        "[split\ntext](docs/gone.png) [up](../outside.md)\n"
    )
    problems = broken_links(page, tmp_path)
    assert len(problems) == 4, problems
    assert problems[0].startswith("README.md:3: docs/nope.md: docs/nope.md does not exist")
    assert "no heading with the anchor #b-section in guide.md" in problems[1]
    assert problems[2].startswith("README.md:8: docs/gone.png")
    assert "outside the repository" in problems[3]


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("README: the fresh-clone check at a92c63f (828 passed)", {"commit hash", "fresh clone"}),
        ("the recipes of commit b498cf4", {"commit hash"}),
        ("Fresh clone at the tip: 828 passed", {"fresh clone"}),
        ("9 min 13 s and, at a later commit, 8 min 22 s in all", {"session wall time"}),
        ("measured on 2025-03-14", {"date"}),
        ("the hint that this session followed up", {"session note"}),
    ],
)
def test_stale_patterns(line: str, names: set[str]) -> None:
    assert {name for _, name, _ in stale_lines(line)} == names


def test_clean_lines_are_not_stale() -> None:
    clean = (
        "make demo   # 5-10 min on 2 CPU cores\n"
        "about 90 s of compilation; lr 1e-3; 10,582 images; bf16-mixed; sha256 of the ids\n"
        "colour (255,255,0); 0x7fffffff; a 1024-pixel budget; defaced; seeds 0-15\n"
    )
    assert stale_lines(clean) == []
