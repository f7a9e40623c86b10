"""`archc summary spec.arch`: parameters, FLOPs, MACs and activation memory per block."""

from __future__ import annotations

import argparse
import json
import sys

from archc.cli import add_spec_args, load_graph
from archc.errors import ArchError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("summary", help="parameters, FLOPs and activation memory per block",
                       description="Elaborate a spec and print a table per block: output type, parameters, "
                                   "FLOPs (as torch.utils.flop_counter counts them), MACs and the bytes of "
                                   "the activations each block produces. Identical stack layers share a row.")
    add_spec_args(p)
    p.add_argument("--batch", type=int, default=1, help="the size of axis B (default 1)")
    p.add_argument("--axis", action="append", default=[], metavar="NAME=N",
                   help="the size of another symbolic axis, e.g. --axis T=1024 (repeatable); an axis that "
                        "indexes a positions table defaults to its length, the token axis of a model "
                        "without one to its max_position_embeddings (with a note)")
    p.add_argument("--depth", type=int, default=2, help="levels of blocks to show (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON for tools instead of the table")
    p.set_defaults(func=run)


def parse_axes(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier() or not value.strip().isdigit() or int(value) <= 0:
            raise ArchError(f"--axis takes NAME=N with a positive integer N, got '{item}'")
        out[name] = int(value)
    return out


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from archc.analysis.connections import connection_costs
    from archc.analysis.conditional import conditional_rows
    from archc.analysis.conditional import format_rows as format_conditional
    from archc.analysis.sparsity import format_rows, sparse_rows
    from archc.analysis.summary import axis_values, format_table, human, summarize

    if args.batch <= 0:
        raise ArchError(f"--batch must be positive, got {args.batch}")
    graph = load_graph(args)
    summary = summarize(graph, batch=args.batch, axes=parse_axes(args.axis), max_depth=args.depth)
    env = axis_values(graph, args.batch, parse_axes(args.axis))
    costs = connection_costs(graph, env)
    sparse = sparse_rows(graph, env)
    conditional = conditional_rows(graph, env)
    if args.json:
        json.dump(summary.to_dict() | {"connections": [asdict(c) for c in costs],
                                       "sparsity": [r.to_dict() for r in sparse],
                                       "conditional": [r.to_dict() for r in conditional]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(summary))
        for c in costs:
            print(f"connection {c.stack}: {c.policy} adds {c.params:,} parameters and "
                  f"{human(c.act_bytes, 'B', 1024)} of activations (its own ops)")
        for line in format_rows(sparse, graph) + format_conditional(conditional, graph):
            print(line)
    return 0
