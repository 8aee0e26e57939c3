"""`python -m sparse_ft.methods [NAME ...]`: every registered method's options, with type, default
and help (what `python run.py method=NAME method.KEY=VALUE` accepts)."""

from __future__ import annotations

import argparse
import sys
import textwrap

from .registry import registered


def describe(name: str, cls) -> str:
    doc = (cls.__doc__ or "").strip().splitlines()
    lines = [f"method={name}  ({cls.__module__}; job={'compress' if getattr(cls, 'kind', 'trainer') == 'compressor' else 'train'})"]
    if doc:
        lines.append(f"  {doc[0]}")
    for key, kind, default, help_text in cls.Options.help():
        if key == "name":
            continue
        lines.append(f"  method.{key} = {default!r}  [{kind}]")
        lines.extend(textwrap.wrap(help_text, 96, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_ft.methods", description=__doc__)
    parser.add_argument("names", nargs="*", help="methods to describe (default: all)")
    args = parser.parse_args(argv)
    methods = registered()
    unknown = [n for n in args.names if n not in methods]
    if unknown:
        print(f"unknown method(s): {', '.join(unknown)}; known: {', '.join(methods)}", file=sys.stderr)
        return 2
    print("\n\n".join(describe(n, methods[n]) for n in (args.names or methods)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
