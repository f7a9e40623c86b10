"""`archc bench spec.arch`: how fast the model runs, eager against -O2 against torch.compile.

In one process, on the same weights and inputs (eval, inference mode, CPU unless --device):

    eager     the -O0 module (torch's own layers)
    O2        the -O2 module (BatchNorm folded, re-parameterized, oneDNN epilogue groups on CPU)
    compile   torch.compile (Inductor) of the eager module
    freeze    torch.compile with `torch._inductor.config.freezing = True` (weights as constants,
              prepacked and fused: what -O2 emits directly)

Each variant is built and called once (its build time: passes, code, construction, and the first
call, which compiles or packs), then the variants run in interleaved rounds, the order rotating
each round, so that load on a shared machine falls on all of them alike. Reported per variant:
the median time, the median and quartiles of the per-round ratio to eager, the build time, and
the largest difference from eager's output relative to eager's largest magnitude. Inductor's
on-disk caches are off unless --warm-cache (graphs not cached, C++ kernels compiled into a fresh
folder), so compile times are cold. A progress bar goes to
stderr when it is a terminal; --json prints everything for tools.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from archc.cli import add_spec_args, load_graph
from archc.errors import ArchError

VARIANTS = ("eager", "O2", "compile", "freeze")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="time eager, -O2 and torch.compile (with and without freezing)",
                       description="Time a model in one process: eager, archc -O2, torch.compile and "
                                   "torch.compile with freezing, on the same weights and inputs, in "
                                   "interleaved rounds; medians, per-round ratios to eager, build and "
                                   "compile times, and the difference from eager's output.")
    add_spec_args(p)
    p.add_argument("--batch", type=int, default=8, help="the size of axis B (default 8)")
    p.add_argument("--axis", action="append", default=[], metavar="NAME=N",
                   help="the size of another symbolic axis, e.g. --axis T=128 (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant first (default 2)")
    p.add_argument("--variants", default=",".join(VARIANTS), metavar="A,B",
                   help=f"which to run, eager always included ({','.join(VARIANTS)}; the compile variants "
                        "take tens of seconds each on a CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    p.add_argument("--warm-cache", action="store_true", help="let Inductor use its on-disk caches")
    p.add_argument("--json", action="store_true", help="print JSON for tools instead of the table")
    p.set_defaults(func=run)


@dataclass
class Variant:
    name: str
    build_s: float = 0.0  # passes, code and construction
    first_call_s: float = 0.0  # the first call: compiles (torch.compile) or packs weights (-O2)
    times_ms: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # eager's time / this one's, per round
    max_rel_diff: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # -O2's build: passes, code, construction
    call: Callable[[], Any] | None = None

    def summary(self) -> dict[str, Any]:
        q = statistics.quantiles(self.ratios, n=4) if len(self.ratios) > 1 else self.ratios * 3
        out = {k: v for k, v in asdict(self).items() if k != "call"}
        out.update(median_ms=statistics.median(self.times_ms), speedup=statistics.median(self.ratios),
                   speedup_p25=q[0], speedup_p75=q[2])
        return out


def parse_variants(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in VARIANTS:
            raise ArchError(f"--variants: unknown variant '{n}'", None, f"the variants are {', '.join(VARIANTS)}")
    return ["eager"] + [n for n in VARIANTS[1:] if n in names]


def machine() -> dict[str, Any]:
    import torch

    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "machine": platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "mkldnn": torch.backends.mkldnn.is_available()}


def _fresh_entry(module: Any) -> Any:
    """The module behind a forward of its own code object: torch.compile caches per code object,
    so two compiled variants of one class would otherwise share (and skip) a compilation."""
    import torch

    class Entry(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *xs: Any) -> Any:
            return self.inner(*xs)

    f = Entry.forward
    Entry.forward = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__,  # type: ignore[method-assign]
                                       f.__closure__)
    return Entry(module).eval()


def _build(v: Variant, graph: Any, eager: Any) -> Any:
    """The module of variant `v` (eager's weights; -O2's through the passes' weight transform)."""
    import torch

    from archc.api import build
    from archc.backends.torch import emit_python
    from archc.passes.manager import LEVELS, run_pipeline

    if v.name == "O2":
        start = time.perf_counter()
        pipeline = run_pipeline(graph, LEVELS[2])
        v.steps["passes_s"] = time.perf_counter() - start
        start = time.perf_counter()
        emit_python(pipeline.graph)
        v.steps["code_s"] = time.perf_counter() - start
        start = time.perf_counter()
        model = build(pipeline.graph).eval()  # the code again, its import, the module and its random init
        model.load_state_dict(pipeline.weights(eager.state_dict()))
        v.steps["module_s"] = time.perf_counter() - start
        return model
    return torch.compile(_fresh_entry(copy.deepcopy(eager)))


def _first_call(name: str, model: Any, inputs: tuple[Any, ...]) -> Any:
    if name != "freeze":
        return model(*inputs)
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):  # read when Inductor compiles: at this first call
        return model(*inputs)


def _rel_diff(out: Any, ref: Any) -> float:
    import torch

    outs, refs = (out, ref) if isinstance(out, (tuple, list)) else ((out,), (ref,))
    worst = 0.0
    for o, r in zip(outs, refs):
        if isinstance(r, torch.Tensor) and r.is_floating_point():
            scale = r.abs().max().clamp_min(torch.finfo(r.dtype).tiny).double()
            worst = max(worst, float((o.double() - r.double()).abs().max() / scale))
    return worst


class Progress:
    """A bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.on = total, 0, sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.on:
            n = 30 * self.done // max(self.total, 1)
            sys.stderr.write(f"\r[{'#' * n}{'.' * (30 - n)}] {self.done}/{self.total} {what:<24}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\r" + " " * 70 + "\r")


def bench(graph: Any, names: list[str], batch: int, axes: dict[str, int], rounds: int, warmup: int,
          seed: int) -> dict[str, Any]:
    """Build each variant, then time them in rotating interleaved rounds; the report as a dict."""
    import torch

    from archc.api import build
    from archc.backends.torch.inputs import example_inputs

    progress = Progress(len(names) + rounds)
    variants = {n: Variant(n) for n in names}
    torch.manual_seed(seed)
    start = time.perf_counter()
    eager = build(graph).eval()
    variants["eager"].build_s = time.perf_counter() - start
    inputs = example_inputs(graph, {"B": batch, **axes}, seed=seed)
    for name, v in variants.items():
        start = time.perf_counter()
        model = eager if name == "eager" else _build(v, graph, eager)
        v.build_s = v.build_s if name == "eager" else time.perf_counter() - start
        with torch.inference_mode():
            start = time.perf_counter()
            out = _first_call(name, model, inputs)
            v.first_call_s = time.perf_counter() - start
            if name == "eager":
                reference = out
            v.max_rel_diff = _rel_diff(out, reference)
            v.call = functools.partial(model, *inputs)
            for _ in range(warmup):
                v.call()
        progress.step(f"built {name}")
    order = list(variants.values())
    with torch.inference_mode():
        for r in range(rounds):
            k = r % len(order)
            taken = {}
            for v in order[k:] + order[:k]:
                start = time.perf_counter()
                v.call()  # type: ignore[misc]
                taken[v.name] = time.perf_counter() - start
            for v in order:
                v.times_ms.append(1e3 * taken[v.name])
                v.ratios.append(taken["eager"] / taken[v.name])
            progress.step(f"round {r + 1}")
    progress.close()
    report = {"model": graph.name, "batch": batch, "axes": axes, "rounds": rounds, "machine": machine(),
              "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
              "variants": {n: v.summary() for n, v in variants.items()}}
    if "O2" in variants and "freeze" in variants:  # the goal: -O2 at or below compile+freezing
        per_round = [a / b for a, b in zip(variants["O2"].times_ms, variants["freeze"].times_ms)]
        report["O2_over_freeze"] = statistics.median(per_round)
    return report


def table(report: dict[str, Any]) -> str:
    m = report["machine"]
    axes = "".join(f", {k}={v}" for k, v in report["axes"].items())
    load = ", ".join(f"{x:.1f}" for x in report["loadavg"] or [])
    title = (f"{report['model']}: batch {report['batch']}{axes}, {m['threads']} thread(s), {report['rounds']} "
             f"rounds on {m['cpu']} ({m['cores']} cores, load {load}), torch {m['torch']}")
    header = (f"{'variant':<9} {'median ms':>10} {'vs eager':>9} {'(p25-p75)':>13} {'build s':>9} "
              f"{'1st call s':>10} {'max rel diff':>12}")
    lines = [title, "", header]
    for name, v in report["variants"].items():
        lines.append(f"{name:<9} {v['median_ms']:>10.2f} {v['speedup']:>8.3f}x {v['speedup_p25']:>6.3f}-{v['speedup_p75']:<6.3f}"
                     f" {v['build_s']:>9.3f} {v['first_call_s']:>10.3f} {v['max_rel_diff']:>12.2e}")
    if "O2_over_freeze" in report:
        lines.append(f"\n-O2 time / compile+freezing time: {report['O2_over_freeze']:.3f} (median per round)")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def cold_inductor() -> Iterator[str]:
    """Cold compiles: no cached graphs, and a kernel cache folder of this run's own, removed after.
    Inductor's compile workers are shut down first and TORCHINDUCTOR_CACHE_DIR is restored: Inductor
    makes the folder it names again whenever it looks it up (a worker, an exit handler), which
    left an empty archc-bench-inductor-* folder behind."""
    import shutil
    import tempfile

    import torch._inductor.config as inductor_config

    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    cache = tempfile.mkdtemp(prefix="archc-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    try:
        with inductor_config.patch(fx_graph_cache=False, autotune_local_cache=False):
            yield cache
    finally:
        if "torch._inductor.async_compile" in sys.modules:
            sys.modules["torch._inductor.async_compile"].shutdown_compile_workers()
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
        shutil.rmtree(cache, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    from archc.commands.summary import parse_axes

    names = parse_variants(args.variants)
    if args.batch <= 0 or args.rounds <= 0 or args.warmup < 0 or (args.threads is not None and args.threads <= 0):
        raise ArchError("--batch, --rounds and --threads take positive numbers, --warmup zero or more")
    axes = parse_axes(args.axis)
    graph = load_graph(args)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.warm_cache:
        report = bench(graph, names, args.batch, axes, args.rounds, args.warmup, args.seed)
    else:
        with cold_inductor():
            report = bench(graph, names, args.batch, axes, args.rounds, args.warmup, args.seed)
    report["spec"] = str(args.spec)
    report["set"] = list(args.set)
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else table(report))
    return 0
