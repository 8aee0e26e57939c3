"""`python -m sparse_ft.config [GROUP ...]`: every key of the config groups (trainer, task, model,
energy, logger, distributed, job) with type, default and help, from their schemas
(sparse_ft/config/schemas.py); `python -m sparse_ft.methods` does the same for `method`.

`--write-yaml-comments` rewrites the key comments of conf/**/*.yaml from the schemas;
`--check-yaml-comments` exits 1 naming each file whose comments are out of step."""

from __future__ import annotations

import argparse
import sys
import textwrap
import typing

from .schemas import SCHEMAS, GroupSchema


def describe(group: str, schema: type[GroupSchema]) -> str:
    doc = (schema.__doc__ or "").strip().splitlines()
    where = "top-level keys of conf/config.yaml" if group == "job" else f"conf/{group}/*.yaml"
    lines = [f"{group}  ({where})"]
    if doc:
        lines.append(f"  {doc[0]}")
    lines.extend(_rows(schema, "" if group == "job" else f"{group}."))
    return "\n".join(lines)


def _rows(schema: type[GroupSchema], prefix: str) -> list[str]:
    lines, hints = [], typing.get_type_hints(schema)
    for key, kind, default, help_text in schema.help():
        nested = hints[key] if isinstance(hints[key], type) and issubclass(hints[key], GroupSchema) else None
        lines.append(f"  {prefix}{key}:" if nested else f"  {prefix}{key} = {default!r}  [{kind}]")
        lines.extend(textwrap.wrap(help_text, 96, initial_indent="      ", subsequent_indent="      "))
        if nested:
            lines.extend(_rows(nested, f"{prefix}{key}."))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_ft.config", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="*", help=f"groups to describe (default: all): {', '.join(SCHEMAS)}")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write-yaml-comments", action="store_true", help="rewrite conf/**/*.yaml key comments from the schemas")
    action.add_argument("--check-yaml-comments", action="store_true", help="exit 1 when a YAML file's comments are out of step")
    args = parser.parse_args(argv)
    if args.write_yaml_comments or args.check_yaml_comments:
        from .yaml_comments import out_of_step, write_all

        if args.write_yaml_comments:
            changed = write_all()
            print("\n".join(f"rewrote {p}" for p in changed) or "every YAML comment already follows the schemas")
            return 0
        stale = out_of_step()
        if stale:
            print("key comments out of step with the schemas (run `python -m sparse_ft.config --write-yaml-comments`): "
                  + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    unknown = [g for g in args.groups if g not in SCHEMAS]
    if unknown:
        hint = " (method: python -m sparse_ft.methods)" if "method" in unknown else ""
        print(f"unknown group(s): {', '.join(unknown)}; known: {', '.join(SCHEMAS)}{hint}", file=sys.stderr)
        return 2
    print("\n\n".join(describe(g, SCHEMAS[g]) for g in (args.groups or SCHEMAS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
