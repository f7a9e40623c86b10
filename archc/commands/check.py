"""`archc check spec.arch`: parse and type-check; print a one-line summary."""

from __future__ import annotations

import argparse
import time

from archc.cli import add_spec_args, load_graph


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check", help="parse and type-check a spec",
                       description="Parse and type-check a spec: every shape is inferred and checked, "
                                   "nothing runs. Errors print as file:line:col with the line and a caret.")
    add_spec_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when the spec is correct")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    graph = load_graph(args)
    ms = (time.perf_counter() - start) * 1000
    if not args.quiet:
        ins = ", ".join(f"{p.name}: {p.type}" for p in graph.inputs)
        outs = ", ".join(str(p.type) for p in graph.outputs)
        print(f"{args.spec}: ok: model {graph.name} ({ins}) -> {outs}; {len(graph.nodes)} ops, "
              f"{graph.param_count():,} parameters ({ms:.0f} ms)")
        from archc.analysis.sparsity import check_lines

        for line in check_lines(graph):
            print(line)
        for g in graph.guards:  # what only the run time can check: the model checks it on entry
            where = f"{g.span.file}:{g.span.line}:{g.span.col}: " if g.span else ""
            print(f"  run-time guard: {g.condition} ({where}{g.why})")
    return 0
