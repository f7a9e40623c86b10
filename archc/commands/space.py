"""`archc space spec.arch`: count, enumerate or sample the well-typed completions of a search space."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from archc.errors import ArchError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("space", help="count, enumerate or sample a spec with choice(...) holes",
                       description="A spec with choice(...) holes is a search space: choice(a, b, c), "
                                   "choice(range(lo, hi, step)), and choice(..., per_layer=true) in a stack's "
                                   "body for one hole per layer (paths such as Net.blocks[3]). Count its "
                                   "completions that type-check (exactly), list them, or draw them uniformly; "
                                   "each sample is a concrete spec that checks on its own.")
    p.add_argument("spec", type=Path, help="the .arch file with choice(...) holes")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--count", action="store_true", help="the number of well-typed completions")
    what.add_argument("--enumerate", action="store_true", help="every well-typed completion")
    what.add_argument("--sample", type=int, metavar="N", help="draw N completions uniformly")
    p.add_argument("--seed", type=int, default=0, help="the random seed of --sample (default 0)")
    p.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="write each sampled or enumerated completion as DIR/<spec>_<i>.arch")
    p.add_argument("--json", action="store_true", help="print JSON (the hole choices) instead of text")
    p.add_argument("--where", metavar="BUDGET",
                   help="keep only completions within a budget, e.g. 'params <= 25e6 and flops <= 4e9' "
                        "(FLOPs at batch 1)")
    p.add_argument("--axis", action="append", default=[], metavar="NAME=N",
                   help="the size of a symbolic axis for the FLOPs of --where, e.g. --axis T=1024")
    p.add_argument("--model", help="which model to compile (when the file has several)")
    p.add_argument("--include", action="append", type=Path, default=[], metavar="DIR",
                   help="also allow imports from DIR (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from archc.commands.summary import parse_axes
    from archc.space import Space

    space = Space(args.spec, model=args.model, where=args.where, axes=parse_axes(args.axis),
                  includes=args.include)
    if args.count:
        return _count(space, args)
    if args.sample is not None:
        if args.sample < 0:
            raise ArchError(f"--sample takes a count of at least 0, got {args.sample}")
        rng = random.Random(args.seed)
        choices = [space.sample(rng) for _ in range(args.sample)]
    else:
        choices = space.enumerate()
    files = _write(space, choices, args) if args.output else [None] * len(choices)
    if args.json:
        json.dump([_record(space, c, f) for c, f in zip(choices, files)], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for i, (c, f) in enumerate(zip(choices, files)):
            picked = " ".join(f"{path}={option}" for path, option in space.describe(c).items())
            print(f"{i}: {picked}" + (f" -> {f}" if f else ""))
    return 0


def _count(space: Any, args: argparse.Namespace) -> int:
    n = space.count()
    if args.json:
        json.dump({"holes": [{"path": p, "options": list(o)} for p, o in space.holes()],
                   "combinations": space.combinations(), "count": n}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    budget = f" within '{space.budget.text}'" if space.budget else ""
    print(f"{args.spec}: {len(space.holes())} holes, {space.combinations():,} combinations, "
          f"{n:,} well-typed{budget}")
    for path, options in space.holes():
        print(f"  {path}: {' | '.join(options)}")
    return 0


def _record(space: Any, choice: dict[str, int], file: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"choice": choice, "options": space.describe(choice)}
    if file is not None:
        out["file"] = str(file)
    return out


def _write(space: Any, choices: list[dict[str, int]], args: argparse.Namespace) -> list[Path]:
    from archc.files import refuse_overwrite, write_atomic

    out: Path = args.output
    if out.exists() and not out.is_dir():
        raise ArchError(f"-o {out}: not a folder")
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(len(choices) - 1)))
    files = []
    for i, c in enumerate(choices):
        path = out / f"{args.spec.stem}_{i:0{width}d}.arch"
        refuse_overwrite(path, [args.spec])
        write_atomic(path, space.concrete(c))
        files.append(path)
    return files
