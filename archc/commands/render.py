"""`archc render spec.arch -o net.svg`: draw the architecture (graphviz)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Any

from archc.cli import add_spec_args, load_graph
from archc.errors import ArchError, did_you_mean


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("render", help="draw the architecture (SVG, PNG, PDF or dot)",
                       description="Draw a Neural-Circuit-Diagram-style picture: every wire labelled with its "
                                   "axes, blocks as nested boxes, a stack's identical layers drawn once with "
                                   "their count, residual additions as a skip wire into a + node.")
    add_spec_args(p)
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="the picture to write; its suffix picks the format: .svg, .png, .pdf or .dot")
    p.add_argument("--depth", type=int, default=None,
                   help="open blocks this many levels deep; deeper blocks are one box each (default: all)")
    p.add_argument("--expand", action="store_true", help="draw every layer of a stack, not one per run")
    p.add_argument("--after", metavar="PASS", action="append", default=[],
                   help="draw the graph after running this pass (repeatable)")
    p.add_argument("--dpi", type=int, default=96, help="resolution of a PNG (default 96)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from archc.backends.graphviz import INSTALL_HINT, output_format, render

    output_format(args.output)  # a bad suffix fails before the spec is compiled
    graph = after_passes(load_graph(args), args.after)
    result = render(graph, args.output, depth=args.depth, expand=args.expand, dpi=args.dpi)
    if result.fallback:
        print(f"archc: graphviz's 'dot' is not installed, so {args.output} was not drawn; "
              f"wrote the diagram as dot text to {result.path}\n  {INSTALL_HINT}", file=sys.stderr)
    else:
        print(f"wrote {result.path}")
    return 0


def after_passes(graph: Any, names: list[str]) -> Any:
    """The graph after the named passes, in order. A pass is the function `name` of the module
    `archc.passes.name`, IR -> IR (or a result with a `.graph`)."""
    if not names:
        return graph
    if importlib.util.find_spec("archc.passes") is None:
        raise ArchError(f"--after {names[0]}: there are no passes yet", hint="render without --after")
    for name in names:
        graph = _pass(name)(graph)
        graph = getattr(graph, "graph", graph)
    return graph


def _pass(name: str) -> Any:
    from archc import passes

    found = {}
    for info in pkgutil.iter_modules(passes.__path__):
        fn = getattr(importlib.import_module(f"archc.passes.{info.name}"), info.name, None)
        if callable(fn):
            found[info.name] = fn
    key = name.replace("-", "_")
    if key not in found:
        raise ArchError(f"--after: unknown pass '{name}'",
                        hint=did_you_mean(key, list(found)) or f"the passes are {', '.join(sorted(found))}")
    return found[key]
