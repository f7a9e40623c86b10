"""`archc fmt spec.arch ...`: rewrite specs in the canonical format (comments kept)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from archc.errors import ArchError
from archc.files import write_atomic


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("fmt", help="format .arch files canonically",
                       description="Rewrite .arch files in the canonical format, in place. With --check, "
                                   "change nothing and exit 1 if any file is not formatted.")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--check", action="store_true", help="only report files that would change")
    p.add_argument("--stdout", action="store_true", help="print the formatted text instead of writing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from archc.frontend.fmt import format_module
    from archc.frontend.parser import parse

    changed = 0
    for path in args.files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ArchError(f"cannot read {path}: {e.strerror}") from None
        formatted = format_module(parse(text, str(path)))
        if args.stdout:
            sys.stdout.write(formatted)
        elif formatted != text:
            changed += 1
            if args.check:
                print(f"would reformat {path}")
            else:
                write_atomic(path, formatted)
                print(f"reformatted {path}")
    return 1 if args.check and changed else 0
