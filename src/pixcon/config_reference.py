"""The config reference (``docs/config.md``), generated from the config dataclasses themselves.

Every key's type and default come from :mod:`pixcon.config`'s dataclasses and its meaning from the
comment written beside the field, so the reference cannot drift from the code:
``python -m pixcon.config_reference > docs/config.md`` regenerates it, and a test fails when the
committed file differs.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import tokenize
import types
import typing
from typing import Any

from pixcon import config

HEADER = """# Config reference

Every key of a run's config, by section: its type, its default and what it means. A config file
is YAML with these sections (missing keys keep their defaults); `--set section.key=value` overrides
one key on the command line, and the resolved config is saved as `config.yaml` in the run folder
and inside every checkpoint. Unknown keys, wrong types and out-of-range values are refused with the
key named.

This page is generated from `src/pixcon/config.py` by `python -m pixcon.config_reference`; a test
fails when it is stale.
"""


def _field_comments(cls: type) -> dict[str, str]:
    """{field name: the comment written on its lines} of a dataclass defined in pixcon.config."""
    source = inspect.getsource(config)
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            end = stmt.end_lineno or stmt.lineno
            text = [comments[line] for line in range(stmt.lineno, end + 1) if line in comments]
            out[stmt.target.id] = " ".join(text)
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:  # pragma: no cover - every config field has a default
        return ""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value!r}`".replace("'", '"')


def render() -> str:
    """The whole reference as markdown."""
    lines = [HEADER]
    hints = typing.get_type_hints(config.RunConfig)
    for section in dataclasses.fields(config.RunConfig):
        cls = hints[section.name]
        doc = inspect.cleandoc(cls.__doc__ or "")
        summary = "" if doc.startswith(f"{cls.__name__}(") else doc  # the dataclass's generated signature
        lines += [f"## `{section.name}`", ""]
        if summary:
            lines += [summary, ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        comments = _field_comments(cls)
        types = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meaning = comments.get(f.name, "").replace("|", "\\|")
            lines.append(
                f"| `{section.name}.{f.name}` | {_type_name(types[f.name])} | {_default(f)} | {meaning} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
