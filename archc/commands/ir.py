"""`archc ir spec.arch`: the typed IR as JSON, or printed back as .arch text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from archc.cli import add_spec_args, load_graph
from archc.errors import ArchError
from archc.files import read_regular, refuse_overwrite, write_atomic

MAX_IR_BYTES = 256 << 20  # an IR file of 50,000 nodes (the default --max-nodes) is well under this


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ir", help="dump the typed IR (JSON), or load and print one",
                       description="Elaborate a spec and print its typed IR as JSON (schema-versioned, "
                                   "reloadable with --load), or as .arch text with --arch.")
    add_spec_args(p)
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    p.add_argument("--arch", action="store_true", help="print the IR as .arch text instead of JSON")
    p.add_argument("--load", action="store_true", help="SPEC is an IR JSON file to load and validate")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from archc.ir.printer import print_graph
    from archc.ir.verify import InvalidIR, load_json

    if args.load:
        data = read_regular(args.spec, "IR file", MAX_IR_BYTES)
        try:
            graph = load_json(data, max_nodes=args.max_nodes)
        except InvalidIR as e:
            raise ArchError(f"{args.spec}: not a valid archc IR file: {e}") from None
    else:
        graph = load_graph(args)
    text = print_graph(graph) if args.arch else graph.to_json() + "\n"
    if args.output:
        refuse_overwrite(args.output, [args.spec])
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0
