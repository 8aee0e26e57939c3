"""`python -m sparse_ft.config [GROUP ...]`: every key of the config groups (trainer, task, model,
energy, logger, distributed, job) with type, default and help, from their schemas
(sparse_ft/config/schemas.py); `python -m sparse_ft.methods` does the same for `method`.
`GROUP=OPTION` (e.g. `task=mrpc`) shows the values conf/GROUP/OPTION.yaml sets instead of the defaults.

`--write-yaml-comments` rewrites the key comments of conf/**/*.yaml from the schemas;
`--check-yaml-comments` exits 1 naming each file whose comments are out of step."""

from __future__ import annotations

import argparse
import sys
import textwrap
import typing

from .schemas import SCHEMAS, GroupSchema
from .yaml_comments import CONF_DIR


def describe(group: str, schema: type[GroupSchema], option: str | None = None) -> str:
    doc = (schema.__doc__ or "").strip().splitlines()
    where = "top-level keys of conf/config.yaml" if group == "job" else f"conf/{group}/{option or '*'}.yaml"
    lines = [f"{group}{'=' + option if option else ''}  ({where})"]
    if doc:
        lines.append(f"  {doc[0]}")
    values = None
    if option is not None:
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    lines.extend(_rows(schema, "" if group == "job" else f"{group}.", values))
    return "\n".join(lines)


def _rows(schema: type[GroupSchema], prefix: str, values: dict | None = None) -> list[str]:
    lines, hints = [], typing.get_type_hints(schema)
    for key, kind, default, help_text in schema.help():
        nested = hints[key] if isinstance(hints[key], type) and issubclass(hints[key], GroupSchema) else None
        shown = repr(default if values is None else values[key]) if values is None or key in values else "(not set)"
        lines.append(f"  {prefix}{key}:" if nested else f"  {prefix}{key} = {shown}  [{kind}]")
        lines.extend(textwrap.wrap(help_text, 96, initial_indent="      ", subsequent_indent="      "))
        if nested:
            lines.extend(_rows(nested, f"{prefix}{key}.", None if values is None else values.get(key) or {}))
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
    wanted = [tuple(a.split("=", 1)) if "=" in a else (a, None) for a in args.groups]
    unknown = [g for g, _ in wanted if g not in SCHEMAS]
    if unknown:
        hint = " (method: python -m sparse_ft.methods)" if "method" in unknown else ""
        print(f"unknown group(s): {', '.join(unknown)}; known: {', '.join(SCHEMAS)}{hint}", file=sys.stderr)
        return 2
    missing = [f"{g}={o}" for g, o in wanted if o is not None and (g == "job" or not (CONF_DIR / g / f"{o}.yaml").is_file())]
    if missing:
        print(f"no conf/<group>/<option>.yaml for: {', '.join(missing)}", file=sys.stderr)
        return 2
    print("\n\n".join(describe(g, SCHEMAS[g], o) for g, o in (wanted or [(g, None) for g in SCHEMAS])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
