"""`archc list [PATTERN] [--json]`: the model zoo, with each model's reference, parameter count and
op count at its defaults (elaborated, no weights allocated)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("list", help="the model zoo: names, references, parameters, ops",
                       description="List the zoo's models (specs/models/), which every spec command takes by "
                                   "name (archc check resnet50), with the reference each reproduces and its "
                                   "parameter and op counts at its defaults.")
    p.add_argument("pattern", nargs="?", default="*", help="only the names matching this shell pattern, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from archc.registry import list_models, model_info

    rows = [model_info(name) for name in list_models(args.pattern)]
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print(f"no model matches '{args.pattern}'; the zoo has {', '.join(list_models())}", file=sys.stderr)
        return 1
    table = [("model", "reference", "parameters", "ops")]
    table += [(r["name"], r["reference"], f"{r['params']:,}", str(r["ops"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}".rstrip())
    return 0
