"""Deployment passes, measured: what re-parameterization and BatchNorm folding buy at run time.

One run on this machine (eval, no_grad, fp32), side by side:

1. RepVGG-A0 (224x224, batch 1 and 8): the train-time archc module (three branches and
   BatchNorms per block), the archc module after `archc deploy`'s passes (one 3x3 conv per block),
   and timm's `repvgg_a0` after `timm.utils.model.reparameterize_model` -- the same weights in all
   three (taken from timm's model, BatchNorm statistics randomized).
2. ResNet-50 (224x224, batch 1 and 8): eager archc, archc after conv-BN folding (`fold_bn`),
   and `torch.compile` (inductor) of the eager archc module.

The machine is shared, so contestants are timed in interleaved rounds (the order rotates each
round). A time is the best round (contention only ever adds time) with its ratio to the first
contestant's best; "per round" is the median of the per-round ratios and its 25th-75th percentile.

    python bench/bench_deploy.py                   # prints markdown tables
    python bench/bench_deploy.py --write           # also replaces the "Passes" section of docs/benchmarks.md
    python bench/bench_deploy.py --rounds 3 --batches 1 --no-compile

Timing is never a pass/fail test.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import platform
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archc import zoo  # noqa: E402
from archc.backends.torch import build_module  # noqa: E402
from archc.deploy import max_abs_error  # noqa: E402
from archc.elaborate import elaborate_file  # noqa: E402
from archc.passes.manager import DEPLOY, run_pipeline  # noqa: E402


def _timm() -> ModuleType:
    path = ROOT / "tests" / "_timm_compat.py"
    spec = importlib.util.spec_from_file_location("_timm_compat", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_timm_compat"] = module
    spec.loader.exec_module(module)
    return module.import_timm()


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """BatchNorm affine parameters at random, statistics from one random batch, then perturbed."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) * 0.5 + 0.75)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=g) * 0.1)
            bn.momentum = 1.0
        model.train()
        model(torch.randn(2, 3, 224, 224, generator=g))
        for bn in bns:
            bn.momentum = 0.1
            bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=g) * 0.1)
            bn.running_var.mul_(torch.rand(bn.running_var.shape, generator=g) * 0.4 + 0.8)
    model.eval()


# ---- timing -------------------------------------------------------------------------------------
def timed_rounds(fns: dict[str, Callable[[], Any]], rounds: int, inner: int) -> dict[str, list[float]]:
    """Per contestant, one mean time per round; the order of contestants rotates every round."""
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for f in fns.values():  # warm up (and let torch.compile compile)
            f()
            f()
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                start = time.perf_counter()
                for _ in range(inner):
                    fns[n]()
                out[n].append((time.perf_counter() - start) / inner)
    return out


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def table(title: str, batch_times: dict[int, dict[str, list[float]]], errors: dict[str, float]) -> list[str]:
    names = list(next(iter(batch_times.values())))
    base = names[0]
    lines = [f"**{title}**", "", "| batch | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for batch, times in batch_times.items():
        cells = []
        for n in names:
            best = min(times[n]) * 1000
            if n == base:
                cells.append(f"{best:.1f} ms")
                continue
            lo, mid, hi = quartiles([a / b for a, b in zip(times[n], times[base], strict=True)])
            cells.append(f"{best:.1f} ms, {best / (min(times[base]) * 1000):.2f}x (per round {mid:.2f}x, "
                         f"{lo:.2f}-{hi:.2f})")
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    lines += ["", "Max abs difference from the first column's output: " +
              ", ".join(f"{n} {e:.1e}" for n, e in errors.items()) + ".", ""]
    return lines


# ---- the two comparisons --------------------------------------------------------------------------
def bench_repvgg(batches: list[int], rounds: int, inner: int) -> list[str]:
    timm = _timm()  # first: it makes torchvision importable
    from timm.utils.model import reparameterize_model

    ref = timm.create_model("repvgg_a0", pretrained=False)
    randomize_bn(ref)
    graph = elaborate_file(zoo.spec_path("repvgg_a0"))
    sd = zoo.timm_to_archc("repvgg_a0", ref.state_dict())
    train = build_module(graph).eval()
    train.load_state_dict(sd, strict=True)
    start = time.perf_counter()
    pipeline = run_pipeline(graph, DEPLOY)
    deployed = build_module(pipeline.graph).eval()
    deployed.load_state_dict(pipeline.weights(dict(train.state_dict())), strict=True)
    deploy_s = time.perf_counter() - start
    start = time.perf_counter()
    timm_rep = reparameterize_model(copy.deepcopy(ref)).eval()
    timm_s = time.perf_counter() - start
    errors = {"deployed": max_abs_error(train, deployed, graph), "timm": max_abs_error(train, timm_rep, graph)}
    results = {}
    for b in batches:
        x = torch.randn(b, 3, 224, 224)
        fns = {"archc train-time": lambda: train(x), "archc deployed": lambda: deployed(x),
               "timm reparameterized": lambda: timm_rep(x)}
        results[b] = timed_rounds(fns, rounds, inner)
    lines = table("RepVGG-A0 (eval, fp32, 224x224): forward time, ratio to the train-time module", results, errors)
    lines.append(f"Folding time: archc deploy passes + weight transform + build {deploy_s:.2f} s; "
                 f"timm reparameterize_model {timm_s:.2f} s. Ops: {len(graph.nodes)} train-time, "
                 f"{len(pipeline.graph.nodes)} deployed.")
    return lines + ["", "The deployed model runs one 3x3 conv and a ReLU per block where the train-time one "
                    "runs a 3x3 and a 1x1 conv, three BatchNorms and two adds; it matches timm's own fold, as "
                    "it should: the two are the same convolutions.", ""]


def bench_resnet50(batches: list[int], rounds: int, inner: int, compile_: bool) -> list[str]:
    graph = elaborate_file(zoo.spec_path("resnet50"))
    eager = build_module(graph).eval()
    randomize_bn(eager)
    pipeline = run_pipeline(graph, ("fold_bn",))
    folded = build_module(pipeline.graph).eval()
    folded.load_state_dict(pipeline.weights(dict(eager.state_dict())), strict=True)
    errors = {"folded": max_abs_error(eager, folded, graph)}
    compiled = None
    if compile_:
        compiled = torch.compile(copy.deepcopy(eager))
        errors["torch.compile"] = max_abs_error(eager, compiled, graph)
    results = {}
    for b in batches:
        x = torch.randn(b, 3, 224, 224)
        fns: dict[str, Callable[[], Any]] = {"archc eager": lambda: eager(x), "archc conv-BN folded": lambda: folded(x)}
        if compiled is not None:
            fns["torch.compile(archc eager)"] = lambda: compiled(x)
        results[b] = timed_rounds(fns, rounds, inner)
    note = ("Folding removes the 53 BatchNorm passes over memory; torch.compile (inductor) instead fuses the "
            "BatchNorm, ReLU and residual-add elementwise work into generated kernels next to the convolutions, "
            "which also saves the ReLU and add passes: hence its larger lead at batch 8.")
    title = "ResNet-50 (eval, fp32, 224x224): forward time, ratio to eager archc"
    return table(title, results, errors) + [f"Ops: {len(graph.nodes)} eager, {len(pipeline.graph.nodes)} after "
                                            f"fold_bn.", "", note, ""]


def write_section(lines: list[str]) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = "\n".join(["## Passes", ""] + lines).rstrip() + "\n"
    head, sep, rest = text.partition("\n## Passes\n")
    if sep:  # replace the old section, keep the ones after it
        nxt = rest.find("\n## ")
        text = head.rstrip() + "\n\n" + section + (rest[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--inner", type=int, default=2, help="forward calls per timed sample")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--only", choices=("repvgg", "resnet50"))
    ap.add_argument("--write", action="store_true", help="replace the Passes section of docs/benchmarks.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    cpu = platform.processor() or platform.machine()
    lines = [f"Measured by `bench/bench_deploy.py` on {datetime.date.today()}: {cpu}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}; {args.rounds} rounds x "
             f"{args.inner} calls, interleaved; a shared machine (other jobs running), so the absolute times are "
             f"noisy and the ratios are what to read.", ""]
    if args.only in (None, "repvgg"):
        lines += bench_repvgg(args.batches, args.rounds, args.inner)
    if args.only in (None, "resnet50"):
        lines += bench_resnet50(args.batches, args.rounds, args.inner, not args.no_compile)
    print("\n".join(lines))
    if args.write:
        write_section(lines)


if __name__ == "__main__":
    main()
