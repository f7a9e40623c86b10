"""Regional compilation against whole-model `torch.compile` on archc's GPT-2: cold compile time
and forward time after compile.

The torch backend emits one nn.Module class per distinct block instance (issue #12), so the 12
layers of GPT-2 are 12 instances of one `GPT2Block` class. Regional compilation compiles that
class's forward once (`for blk in model.transformer.h: blk.compile()`; Dynamo reuses the one
graph for every instance, the parameters being graph inputs) where `torch.compile(model)` traces
and optimizes all 12 layers unrolled. One run measures, side by side:

1. cold compile: the first call of the compiled model (Dynamo trace, AOT autograd, inductor, C++
   build, one run) in a fresh process per sample, each with its own empty
   `TORCHINDUCTOR_CACHE_DIR` and the FX-graph and AOT-autograd caches off, whole and regional
   alternating in order (W R, then R W); the ratio is the median of the per-pair ratios. Wall
   time, and CPU time of the process and its C++ compiler runs (`compile_threads = 1`, so the
   compiler runs as a child of the process, not in a worker pool), which a busy machine inflates
   less;
2. forward time after compile: eager, regional and whole in interleaved rounds (the order rotates
   each round), medians and the 25th-75th percentile, ratios the medians of per-round ratios.

Inference (eval, `torch.no_grad()`, fp32), CPU, inductor. Prints a markdown report on stdout,
progress on stderr. Timing is never a pass/fail test.

    python bench/bench_regional_compile.py                  # about 5 minutes on 2 cores
    python bench/bench_regional_compile.py --cold-runs 1 --rounds 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODES = ("whole", "regional")


def no_compile_caches() -> None:
    """Inductor's FX-graph cache and the AOT-autograd cache off, so that a compile is a compile; and
    C++ builds run from this process (no worker pool), so that their compiler processes are its
    children and `cpu_s` counts them."""
    import torch

    torch._inductor.config.fx_graph_cache = False
    torch._inductor.config.compile_threads = 1
    if hasattr(torch._functorch.config, "enable_autograd_cache"):
        torch._functorch.config.enable_autograd_cache = False


def build_model(args: argparse.Namespace) -> Any:
    import torch

    import archc

    torch.manual_seed(0)
    spec = ROOT / "specs" / "models" / "gpt2.arch"
    return archc.compile(spec, depth=args.depth, dim=args.dim, heads=args.heads, vocab=args.vocab).eval()


def example_input(args: argparse.Namespace) -> Any:
    import torch

    return torch.randint(0, args.vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))


def compiled(model: Any, mode: str) -> Any:
    """`model` compiled whole (a new OptimizedModule) or regionally (its blocks, in place)."""
    import torch

    if mode == "whole":
        return torch.compile(model)
    for block in model.transformer.h:
        block.compile()
    return model


# ---- 1. cold compile, one sample per fresh process ---------------------------------------------
def cpu_s() -> float:
    """CPU time of this process and of its finished children (the C++ compiler), user + system."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def compile_child(mode: str, args: argparse.Namespace) -> None:
    """Runs in a fresh process with an empty inductor cache. Prints JSON."""
    t0 = time.perf_counter()
    import torch
    from torch._dynamo.utils import counters

    torch.set_num_threads(args.threads)
    no_compile_caches()
    model = build_model(args)
    x = example_input(args)
    with torch.no_grad():
        torch.compile(torch.nn.Linear(4, 4))(torch.randn(2, 4))  # inductor's imports
        torch._dynamo.reset()
        counters.clear()
        t1, c1 = time.perf_counter(), cpu_s()
        m = compiled(model, mode)
        m(x)
        t2, c2 = time.perf_counter(), cpu_s()
        m(x)
        t3 = time.perf_counter()
    print(json.dumps({
        "setup_s": t1 - t0, "first_s": t2 - t1, "first_cpu_s": c2 - c1, "second_s": t3 - t2,
        "frames": counters["frames"]["ok"], "graphs": counters["stats"]["unique_graphs"],
        "inductor_compiles": counters["aot_autograd"]["total"],
    }))


def cold_run(mode: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-child", mode, *child_args(args)]
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCHINDUCTOR_FX_GRAPH_CACHE="0",
                   TORCHINDUCTOR_AUTOGRAD_CACHE="0")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def child_args(args: argparse.Namespace) -> list[str]:
    return [f"--{k}={getattr(args, k)}" for k in ("depth", "dim", "heads", "vocab", "batch", "tokens", "threads")]


def bench_cold(args: argparse.Namespace) -> list[str]:
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(args.cold_runs):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            res = cold_run(mode, args)
            runs[mode].append(res)
            print(f"cold {mode} #{r + 1}: first call {res['first_s']:.2f} s ({res['first_cpu_s']:.2f} s CPU), "
                  f"{res['graphs']} graph(s), {res['inductor_compiles']} inductor compile(s)",
                  file=sys.stderr, flush=True)
    first = {m: [r["first_s"] for r in runs[m]] for m in MODES}
    ratios = [w / g for w, g in zip(first["whole"], first["regional"])]
    lines = [("| compile | first call s, median (min-max) | same, CPU time (with the C++ compiler) | second call ms "
             "| Dynamo frames | graphs | inductor compiles |"), "|---|---|---|---|---|---|---|"]
    for mode, label in (("whole", "`torch.compile(model)`"), ("regional", "`blk.compile()` for each block")):
        f = first[mode]
        last = runs[mode][-1]
        c = [r["first_cpu_s"] for r in runs[mode]]
        lines.append(f"| {label} | {statistics.median(f):.2f} ({min(f):.2f}-{max(f):.2f}) "
                     f"| {statistics.median(c):.2f} ({min(c):.2f}-{max(c):.2f}) "
                     f"| {1000 * statistics.median(r['second_s'] for r in runs[mode]):.1f} "
                     f"| {last['frames']} | {last['graphs']} | {last['inductor_compiles']} |")
    cpu_ratios = [r["first_cpu_s"] / q["first_cpu_s"] for r, q in zip(runs["whole"], runs["regional"])]
    lines += ["", (f"whole / regional, first call: **{statistics.median(ratios):.2f}x** "
                  f"(per pair: {', '.join(f'{r:.2f}' for r in ratios)}); CPU time "
                  f"**{statistics.median(cpu_ratios):.2f}x** (per pair: {', '.join(f'{r:.2f}' for r in cpu_ratios)})")]
    return lines


# ---- 2. forward time after compile -------------------------------------------------------------
def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[1], q[2]


def fmt_ms(values: list[float]) -> str:
    lo, med, hi = quartiles([1000 * v for v in values])
    return f"{med:.2f} ({lo:.2f}-{hi:.2f})"


def fmt_ratio(values: list[float]) -> str:
    lo, med, hi = quartiles(values)
    return f"**{med:.3f}** ({lo:.3f}-{hi:.3f})"


def race(fns: dict[str, Callable[[], Any]], rounds: int, inner: int) -> tuple[dict[str, list[float]], ...]:
    """Interleaved rounds; the order rotates by one each round. Each sample is the mean of `inner`
    back-to-back calls, in seconds: wall-clock and CPU time (`time.process_time`, which leaves out
    the time the process waited for a core)."""
    names = list(fns)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t, c = time.perf_counter(), time.process_time()
            for _ in range(inner):
                fns[name]()
            cpu[name].append((time.process_time() - c) / inner)
            wall[name].append((time.perf_counter() - t) / inner)
    return wall, cpu


def bench_steady(args: argparse.Namespace) -> list[str]:
    import torch

    eager = build_model(args)
    whole_base, regional = build_model(args), build_model(args)  # same seed: the same weights
    whole = compiled(whole_base, "whole")
    compiled(regional, "regional")
    x = example_input(args)
    fns = {"eager": lambda: eager(x), "regional": lambda: regional(x), "whole": lambda: whole(x)}
    with torch.no_grad():
        ref = eager(x)
        diffs = {n: (fns[n]() - ref).abs().max().item() for n in ("regional", "whole")}
        for _ in range(3):
            for f in fns.values():
                f()
        t = time.perf_counter()
        eager(x)
        inner = max(1, round(args.sample_s / max(time.perf_counter() - t, 1e-6)))
        times, cpu = race(fns, args.rounds, inner)
    for n, v in times.items():
        print(f"steady {n}: {fmt_ms(v)} ms, CPU {fmt_ms(cpu[n])} ms", file=sys.stderr, flush=True)

    def ratios(a: str, b: str, t: dict[str, list[float]] = times) -> str:
        return fmt_ratio([x / y for x, y in zip(t[a], t[b])])

    lines = [("| forward | ms per call | CPU ms per call | / eager | same, CPU time | / whole | same, CPU time "
             "| max abs diff from eager |"), "|---|---|---|---|---|---|---|---|"]
    for n in ("eager", "regional", "whole"):
        vs_eager = "1 | 1" if n == "eager" else f"{ratios(n, 'eager')} | {ratios(n, 'eager', cpu)}"
        vs_whole = "1 | 1" if n == "whole" else f"{ratios(n, 'whole')} | {ratios(n, 'whole', cpu)}"
        lines.append(f"| {n} | {fmt_ms(times[n])} | {fmt_ms(cpu[n])} | {vs_eager} | {vs_whole} "
                     f"| {diffs.get(n, 0.0):.1e} |")
    return lines


# ---- the report --------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(args: argparse.Namespace) -> list[str]:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"- date: {datetime.date.today().isoformat()}",
        (f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, load average {load:.1f} at start; "
         f"`torch.set_num_threads({args.threads})`"),
        f"- software: Python {platform.python_version()}, torch {torch.__version__}",
        (f"- model: `specs/models/gpt2.arch` depth={args.depth} dim={args.dim} heads={args.heads} "
         f"vocab={args.vocab}; input {args.batch}x{args.tokens} tokens; eval, `torch.no_grad()`, fp32"),
        f"- command: `python {' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}`",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: steadier on a shared 2-core machine)")
    p.add_argument("--cold-runs", type=int, default=3, help="fresh processes per compile mode")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds of the forward race")
    p.add_argument("--sample-s", type=float, default=0.2, help="about how long one timed sample lasts")
    p.add_argument("--only", choices=["cold", "steady"], action="append", help="run only these parts")
    p.add_argument("--compile-child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    if args.compile_child:
        compile_child(args.compile_child, args)
        return
    # this process compiles too (part 2): its own empty cache, not the user's
    cache = tempfile.TemporaryDirectory()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    import torch

    torch.set_num_threads(args.threads)
    no_compile_caches()
    parts = args.only or ["cold", "steady"]
    out = header(args)
    print("\n".join(out), file=sys.stderr, flush=True)
    if "cold" in parts:
        out += ["", ("Cold compile: the first call of the compiled model (trace, inductor, C++ build, one run), "
                     "in a fresh process with an empty inductor cache; second call = one compiled forward."), ""]
        out += bench_cold(args)
    if "steady" in parts:
        out += ["", ("Forward after compile, ms per call, median (25th-75th percentile) of interleaved rounds; "
                     "ratios are medians of per-round ratios."), ""]
        out += bench_steady(args)
    print("\n".join(out))
    cache.cleanup()


if __name__ == "__main__":
    main()
