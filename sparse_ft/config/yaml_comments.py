"""The key comments of the YAML files in conf/, written from the schemas' help texts.

Help is written once, in the schema (`option(default, "help", …)` in sparse_ft/config/schemas.py,
or a method's `Options`); every key line of conf/<group>/*.yaml (and the job keys of
conf/config.yaml) carries that text as its inline comment:

    python -m sparse_ft.config --write-yaml-comments   # rewrite the comments from the schemas
    python -m sparse_ft.config --check-yaml-comments   # exit 1 naming each file out of step (a test runs it)

Only the inline comments of known keys change: values, full-line comments (a file's header) and
free-form blocks (model.config) stay as written. A key a schema does not have is an error.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections import Counter
from pathlib import Path
from typing import Literal, get_args, get_origin

from ..core.options import Options

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SCHEMA_GROUPS = ("trainer", "task", "model", "energy", "logger", "distributed")
DEFAULT_COLUMN = 26  # where comments start when a file has none yet
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


def _split_comment(rest: str) -> tuple[str, str | None]:
    """`  value  # comment` -> ('  value', 'comment'); a # inside quotes is part of the value."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].rstrip(), rest[i + 1:].strip()
    return rest.rstrip(), None


def _choices(f: dataclasses.Field, annotation) -> list[str]:
    values = list(f.metadata.get("choices") or ())
    stack = [annotation]
    while stack:
        a = stack.pop()
        if get_origin(a) is Literal:
            values.extend(get_args(a))
        elif get_args(a) and get_origin(a) is not list and get_origin(a) is not dict:
            stack.extend(get_args(a))
    return [("null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for v in dict.fromkeys(values)]


def comment_for(schema: type[Options], key: str) -> str:
    """A key's YAML comment: its help text, plus its allowed values where the text does not list them."""
    f = {f.name: f for f in dataclasses.fields(schema)}[key]
    text = f.metadata.get("help", "")
    values = _choices(f, typing.get_type_hints(schema)[key])
    if values and not all(re.search(rf"(?<![\w.]){re.escape(v)}(?![\w])", text) for v in values):
        text = f"{text} ({' | '.join(values)})" if text else " | ".join(values)
    return text


def _nested(schema: type[Options], key: str) -> type[Options] | None:
    hint = typing.get_type_hints(schema).get(key)
    return hint if isinstance(hint, type) and issubclass(hint, Options) else None


def _column(lines: list[str]) -> int:
    cols = Counter()
    for line in lines:
        m = _KEY_LINE.match(line)
        if m and not m["indent"]:
            code, comment = _split_comment(m["rest"])
            if comment is not None:
                cols[line.find("#", len(m["key"]) + 1 + len(code))] += 1
    return cols.most_common(1)[0][0] if cols else DEFAULT_COLUMN


def rewrite(text: str, schema: type[Options], source: str = "") -> str:
    """`text` (a YAML file of `schema`'s group) with every known key's inline comment written from
    the schema. A key the schema does not have raises ValueError naming it."""
    lines = text.splitlines()
    column = _column(lines)
    out, stack = [], []  # stack: (indent, schema) of the blocks that are schemas
    skip_below = None  # indentation of a block that is not a schema (free-form mapping, hydra:, defaults:)
    for line in lines:
        m = _KEY_LINE.match(line)
        if not m or line.lstrip().startswith("#"):
            out.append(line)
            continue
        indent = len(m["indent"])
        if skip_below is not None:
            if indent > skip_below:
                out.append(line)
                continue
            skip_below = None
        while stack and indent <= stack[-1][0]:
            stack.pop()
        current = stack[-1][1] if stack else schema
        if stack and indent != stack[-1][0] + 2:
            out.append(line)
            continue
        key = m["key"]
        fields = {f.name for f in dataclasses.fields(current)}
        if key not in fields:
            if not stack and (key in ("defaults", "hydra") or current.__name__ == "JobSchema"):
                skip_below = indent  # conf/config.yaml: the defaults list, hydra and the config groups' names
                out.append(line)
                continue
            raise ValueError(f"{source}: {key!r} is not a key of {current.__name__}")
        code, _ = _split_comment(m["rest"])
        head = f"{m['indent']}{key}:{code}"
        comment = comment_for(current, key)
        out.append(f"{head.ljust(column - 2)}  # {comment}" if comment else head)
        nested = _nested(current, key)
        if nested is not None:
            stack.append((indent, nested))
        elif not code.strip():
            skip_below = indent  # a free-form block (model.config, image_processor)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def files() -> list[tuple[Path, type[Options]]]:
    """Every YAML file whose key comments come from a schema, with that schema."""
    from ..methods.registry import registered
    from .schemas import SCHEMAS, JobSchema

    pairs = [(CONF_DIR / "config.yaml", JobSchema)]
    for group in SCHEMA_GROUPS:
        pairs += [(p, SCHEMAS[group]) for p in sorted((CONF_DIR / group).glob("*.yaml"))]
    methods = registered()
    for p in sorted((CONF_DIR / "method").glob("*.yaml")):
        pairs.append((p, methods[p.stem].Options))
    return pairs


def out_of_step() -> list[str]:
    """The files whose comments differ from what the schemas say (relative to conf/)."""
    stale = []
    for path, schema in files():
        text = path.read_text()
        if rewrite(text, schema, str(path)) != text:
            stale.append(str(path.relative_to(CONF_DIR.parent)))
    return stale


def write_all() -> list[str]:
    changed = []
    for path, schema in files():
        text = path.read_text()
        new = rewrite(text, schema, str(path))
        if new != text:
            path.write_text(new)
            changed.append(str(path.relative_to(CONF_DIR.parent)))
    return changed
