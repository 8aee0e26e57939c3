"""Nested mappings: the one `flatten` the package uses (config diffs, sweep plans, the report's
columns, logger keys)."""

from __future__ import annotations

from typing import Any


def flatten(node: Any, prefix: str = "", sep: str = ".", keep_empty: bool = True) -> dict[str, Any]:
    """Nested dicts → `{"a.b.c": leaf}`; keys become strings, lists and other values stay leaves.

    `keep_empty`: an empty dict is a leaf of its own (True) or dropped (False). A non-dict `node`
    is the leaf `prefix` (nothing without a prefix)."""
    if not isinstance(node, dict):
        return {prefix: node} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict) and (value or not keep_empty):
            out.update(flatten(value, name, sep, keep_empty))
        else:
            out[name] = value
    return out
