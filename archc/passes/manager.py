"""The pass manager: runs passes by level (-O0, -O1, -O2) or by name (--passes a,b,c), verifies
the IR after each, composes the weight transforms, and prints the IR after a pass on request.

    -O0  nothing
    -O1  clean-up, valid in training and eval: fold_constants, cse, dce, hoist_constants
    -O2  -O1, then the eval/deploy rewrites: strip_dropout, fold_bn, reparam, merge_parallel,
         fuse_pool_mixer, mark_epilogues, dce, hoist_constants. The result computes the eval-mode function of the
         model (BatchNorm folded with its running statistics, dropout removed); its weights follow
         through the composed transform.

`add_pass_args(parser)` and `run_passes(graph, args)` give any command these options.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Sequence, TextIO

from archc.errors import ArchError, did_you_mean
from archc.ir.graph import Graph
from archc.ir.printer import print_graph
from archc.ir.verify import verify
from archc.passes.cse import cse
from archc.passes.dce import dce
from archc.passes.fold_bn import fold_bn
from archc.passes.fold_constants import fold_constants
from archc.passes.fuse_pool_mixer import fuse_pool_mixer
from archc.passes.hoist_constants import hoist_constants
from archc.passes.mark_epilogues import mark_epilogues
from archc.passes.merge_parallel import merge_parallel
from archc.passes.prune import prune
from archc.passes.reparam import reparam
from archc.passes.result import PassResult, WeightTransform, compose, restrict
from archc.passes.strip_dropout import strip_dropout

Pass = Callable[[Graph], PassResult]

PASSES: dict[str, Pass] = {
    "dce": dce,
    "cse": cse,
    "fold_constants": fold_constants,
    "strip_dropout": strip_dropout,
    "fold_bn": fold_bn,
    "reparam": reparam,
    "merge_parallel": merge_parallel,
    "fuse_pool_mixer": fuse_pool_mixer,
    "mark_epilogues": mark_epilogues,
    "prune": prune,
    "hoist_constants": hoist_constants,
}

EVAL_ONLY = ("strip_dropout", "fold_bn", "reparam")  # they assume eval mode

LEVELS: dict[int, tuple[str, ...]] = {
    0: (),
    1: ("fold_constants", "cse", "dce", "hoist_constants"),
    2: ("fold_constants", "cse", "dce", "strip_dropout", "fold_bn", "reparam", "merge_parallel",
        "fuse_pool_mixer", "mark_epilogues", "dce", "hoist_constants"),
}

# the passes `archc deploy` runs: every pass that changes weights for inference, then clean-up
# (`prune` writes each sparse weight times its mask; the others leave sparse weights' patterns alone)
DEPLOY: tuple[str, ...] = ("fold_constants", "cse", "dce", "strip_dropout", "fold_bn", "reparam", "prune", "dce")


@dataclass(frozen=True)
class Pipeline:
    graph: Graph
    transform: WeightTransform | None
    ran: tuple[str, ...]

    def weights(self, state_dict: "dict") -> "dict":  # type: ignore[type-arg]
        """The state_dict of the optimized graph, made from one of the input graph."""
        sd = self.transform(state_dict) if self.transform is not None else dict(state_dict)
        return restrict(self.graph, sd)


def resolve(names: Sequence[str]) -> list[str]:
    for name in names:
        if name not in PASSES:
            raise ArchError(f"unknown pass '{name}'", None,
                            did_you_mean(name, list(PASSES)) or f"the passes are {', '.join(PASSES)}")
    return list(names)


def run_pipeline(graph: Graph, names: Sequence[str], print_after: Sequence[str] = (), out: TextIO | None = None,
                 check: bool = True) -> Pipeline:
    """Run the named passes in order; verify after each that changed the graph (check=True; a pass
    that changed nothing returns its input); print the IR after the passes named in `print_after`
    ("all" for every pass)."""
    transform: WeightTransform | None = None
    for name in resolve(names):
        result = PASSES[name](graph)
        graph = verify(result.graph) if check and result.graph is not graph else result.graph
        transform = compose(transform, result.transform)
        if name in print_after or "all" in print_after:
            stream = out or sys.stdout
            stream.write(f"# ---- IR after pass '{name}' ----\n{print_graph(graph)}")
    return Pipeline(graph, transform, tuple(names))


def add_pass_args(p: argparse.ArgumentParser) -> None:
    """-O0/-O1/-O2, --passes and --print-after for a command that optimizes the IR."""
    p.add_argument("-O", dest="opt_level", type=int, choices=sorted(LEVELS), default=0, metavar="LEVEL",
                   help="optimization level: -O0 none (default), -O1 clean-up (constant folding, CSE, DCE), "
                        "-O2 also eval-mode fusion and re-parameterization")
    p.add_argument("--passes", metavar="A,B,C",
                   help=f"run these passes in order instead of a level ({', '.join(PASSES)})")
    p.add_argument("--print-after", action="append", default=[], metavar="PASS",
                   help="print the IR as .arch after this pass (repeatable; 'all' for every pass)")


def selected(args: argparse.Namespace) -> list[str]:
    if getattr(args, "passes", None):
        return resolve([n.strip() for n in args.passes.split(",") if n.strip()])
    return list(LEVELS[getattr(args, "opt_level", 0) or 0])


def run_passes(graph: Graph, args: argparse.Namespace, out: TextIO | None = None) -> Pipeline:
    """Run what add_pass_args' options select; --print-after a pass that does not run is an error."""
    names = selected(args)
    for name in args.print_after:
        if name != "all" and name not in names:
            resolve([name])
            raise ArchError(f"--print-after {name}: the pass '{name}' does not run "
                            f"(running: {', '.join(names) or 'nothing'})")
    return run_pipeline(graph, names, args.print_after, out)
