"""The PyTorch backend against the hand-written models it reproduces: run time and build time.

One run measures, side by side:

1. eager forward (eval, no_grad, fp32): `archc.compile(spec)` vs timm's model of the same name
   (resnet18, resnet50, vit_small_patch16_224, convnext_tiny, poolformer_s12; batch 1 and 8,
   224x224) and vs Hugging Face's GPT2LMHeadModel (1 x 128 tokens); the same weights in both;
2. build time: `archc.compile(spec)` vs `timm.create_model(name)` (GPT-2: `GPT2LMHeadModel(
   GPT2Config())`), warm (median of several calls in this process) and cold (the first call in a
   fresh process, imports timed apart);
3. `torch.compile` (inductor) of both modules, resnet18 and vit_small at batch 8, steady state.

The machine is shared, so the two contestants are timed in interleaved rounds (A B, then B A) and
every ratio is the median of the per-round ratios; the spread is the 25th-75th percentile.
Prints markdown tables (copy them into docs/benchmarks.md). Timing is never a pass/fail test.

    python bench/bench_torch.py                      # everything (about 10 minutes on 2 cores)
    python bench/bench_torch.py --only eager --models resnet18 --rounds 5
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VISION = ["resnet18", "resnet50", "vit_small_patch16_224", "convnext_tiny", "poolformer_s12"]
ALL_MODELS = VISION + ["gpt2"]
COMPILED = ["resnet18", "vit_small_patch16_224"]
GPT2_TOKENS = 128


# ---- the reference libraries ---------------------------------------------------------------------
@functools.cache
def _compat() -> ModuleType:
    """tests/_timm_compat.py, loaded by path, once (it makes timm importable next to the CPU torch,
    and the operator schemas it declares live as long as the module does)."""
    path = ROOT / "tests" / "_timm_compat.py"
    spec = importlib.util.spec_from_file_location("_timm_compat", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_timm_compat"] = module
    spec.loader.exec_module(module)
    return module


def build_reference(name: str) -> Any:
    if name == "gpt2":
        transformers = _compat().import_transformers()
        return transformers.GPT2LMHeadModel(transformers.GPT2Config())
    return _compat().import_timm().create_model(name, pretrained=False)


def build_archc(name: str) -> Any:
    import archc
    from archc import zoo

    return archc.compile(zoo.spec_path(name))


def load_reference_weights(name: str, ours: Any, ref: Any) -> None:
    from archc import zoo

    sd = ref.state_dict()
    sd = zoo.hf_gpt2_to_archc(sd) if name == "gpt2" else zoo.timm_to_archc(name, sd)
    ours.load_state_dict(sd, strict=True)


def example_input(name: str, batch: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    if name == "gpt2":
        return torch.randint(0, 50257, (batch, GPT2_TOKENS), generator=g)
    return torch.randn(batch, 3, 224, 224, generator=g)


def forward_fn(name: str, module: Any, x: Any, reference: bool) -> Callable[[], Any]:
    """A no-argument call that runs one forward and returns the output tensor."""
    if name == "gpt2" and reference:  # logits only, no key/value cache: what archc computes
        return lambda: module(input_ids=x, use_cache=False).logits
    return lambda: module(x)


# ---- timing --------------------------------------------------------------------------------------
def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[1], q[2]


@dataclass
class Duel:
    """Wall-clock and CPU times of A (archc) and B (reference) per round, in seconds per call.
    CPU time (`time.process_time`) leaves out the time the process waited for a core, so its
    ratio is the steadier one on a busy machine (with one torch thread it is the work done)."""

    a: list[float]
    b: list[float]
    cpu_a: list[float]
    cpu_b: list[float]

    @property
    def ratios(self) -> list[float]:
        return [x / y for x, y in zip(self.a, self.b)]

    @property
    def cpu_ratios(self) -> list[float]:
        return [x / y for x, y in zip(self.cpu_a, self.cpu_b)]


def duel(fa: Callable[[], Any], fb: Callable[[], Any], rounds: int, inner: int) -> Duel:
    """Interleaved rounds: A then B in even rounds, B then A in odd ones; each sample is the mean
    of `inner` back-to-back calls."""

    def sample(f: Callable[[], Any], wall: list[float], cpu: list[float]) -> None:
        t, c = time.perf_counter(), time.process_time()
        for _ in range(inner):
            f()
        cpu.append((time.process_time() - c) / inner)
        wall.append((time.perf_counter() - t) / inner)

    d = Duel([], [], [], [])
    for r in range(rounds):
        if r % 2 == 0:
            sample(fa, d.a, d.cpu_a)
            sample(fb, d.b, d.cpu_b)
        else:
            sample(fb, d.b, d.cpu_b)
            sample(fa, d.a, d.cpu_a)
    return d


def inner_count(f: Callable[[], Any], target_s: float) -> int:
    """How many calls make one sample of about `target_s` seconds (from one timed call)."""
    t = time.perf_counter()
    f()
    return max(1, math.ceil(target_s / max(time.perf_counter() - t, 1e-6)))


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def fmt_times(values: list[float]) -> str:
    lo, med, hi = quartiles(values)
    return f"{fmt_ms(med)} ({fmt_ms(lo)}-{fmt_ms(hi)})"


def fmt_ratio(values: list[float]) -> str:
    lo, med, hi = quartiles(values)
    return f"**{med:.3f}** ({lo:.3f}-{hi:.3f})"


# ---- 1. eager forward ----------------------------------------------------------------------------
def bench_eager(models: list[str], batches: list[int], rounds: int, sample_s: float) -> list[str]:
    import torch

    lines = ["| model | input | archc ms | reference ms | archc / reference | same, CPU time | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for name in models:
        torch.manual_seed(0)
        ref = build_reference(name).eval()
        ours = build_archc(name).eval()
        load_reference_weights(name, ours, ref)
        for batch in ([1] if name == "gpt2" else batches):
            x = example_input(name, batch)
            fa, fb = forward_fn(name, ours, x, False), forward_fn(name, ref, x, True)
            with torch.no_grad():
                diff = (fa() - fb()).abs().max().item()
                for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
                    fa(), fb()
                inner = inner_count(fb, sample_s)
                d = duel(fa, fb, rounds, inner)
            shape = f"{batch}x{GPT2_TOKENS} tokens" if name == "gpt2" else f"{batch}x3x224x224"
            row = (f"| {name} | {shape} | {fmt_times(d.a)} | {fmt_times(d.b)} | {fmt_ratio(d.ratios)} "
                   f"| {fmt_ratio(d.cpu_ratios)} | {diff:.1e} |")
            print(row, file=sys.stderr, flush=True)
            lines.append(row)
        del ref, ours
    return lines


# ---- 2. build time -------------------------------------------------------------------------------
def build_call(name: str, contestant: str) -> Callable[[], Any]:
    return (lambda: build_archc(name)) if contestant == "archc" else (lambda: build_reference(name))


def cold_child(contestant: str, name: str, threads: int) -> None:
    """Runs in a fresh process: import, then time the first build. Prints JSON."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    if contestant == "archc":
        import archc  # noqa: F401  (archc.compile imports the rest on first use)
    elif name == "gpt2":
        _compat().import_transformers()
    else:
        _compat().import_timm()
    t1 = time.perf_counter()
    build_call(name, contestant)()
    t2 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "first_s": t2 - t1}))


def compile_child(contestant: str, name: str, batch: int) -> None:
    """Runs in a fresh process with an empty inductor cache: the first call of the compiled module
    (dynamo trace, inductor, C++ build, one run), after one throwaway compile. Prints JSON."""
    import torch

    module = (build_archc(name) if contestant == "archc" else build_reference(name)).eval()
    x = example_input(name, batch)
    with torch.no_grad():
        torch.compile(torch.nn.Linear(4, 4))(torch.randn(2, 4))
        compiled = torch.compile(module)
        t = time.perf_counter()
        compiled(x)
    print(json.dumps({"first_s": time.perf_counter() - t}))


def cold_run(contestant: str, name: str, threads: int, kind: str = "build") -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--{kind}-child", contestant, name,
           "--threads", str(threads)]
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_build(models: list[str], warm_rounds: int, cold_runs: int, threads: int) -> list[str]:
    lines = [("| model | archc warm ms | reference warm ms | warm ratio | archc cold ms | reference cold ms "
              "| cold ratio | import s, after torch (archc / reference) |"),
             "|---|---|---|---|---|---|---|---|"]
    for name in models:
        fa, fb = build_call(name, "archc"), build_call(name, "reference")
        fa(), fb()  # warm-up: imports, grammar, caches
        warm = duel(fa, fb, warm_rounds, 1)
        cold: dict[str, list[dict[str, float]]] = {"archc": [], "reference": []}
        for r in range(cold_runs):
            order = ["archc", "reference"] if r % 2 == 0 else ["reference", "archc"]
            for contestant in order:
                cold[contestant].append(cold_run(contestant, name, threads))
        ca = [c["first_s"] for c in cold["archc"]]
        cb = [c["first_s"] for c in cold["reference"]]
        ia = statistics.median(c["import_s"] for c in cold["archc"])
        ib = statistics.median(c["import_s"] for c in cold["reference"])
        row = (f"| {name} | {fmt_times(warm.a)} | {fmt_times(warm.b)} | {fmt_ratio(warm.ratios)} "
               f"| {fmt_times(ca)} | {fmt_times(cb)} | {fmt_ratio([a / b for a, b in zip(ca, cb)])} "
               f"| {ia:.2f} / {ib:.2f} |")
        print(row, file=sys.stderr, flush=True)
        lines.append(row)
    return lines


# ---- 3. torch.compile ----------------------------------------------------------------------------
def bench_compiled(models: list[str], batch: int, rounds: int, sample_s: float) -> list[str]:
    import torch

    try:  # does inductor work here? (it needs a C++ compiler); also pays its imports up front
        with torch.no_grad():
            torch.compile(torch.nn.Linear(4, 4))(torch.randn(2, 4))
        torch._dynamo.reset()
    except Exception as e:  # noqa: BLE001  (inductor needs a working C++ toolchain)
        return [f"skipped: torch.compile fails on this machine: {type(e).__name__}: {str(e)[:300]}"]
    lines = [("| model | input | archc compiled ms | reference compiled ms | archc / reference "
              "| same, CPU time | first call s (archc / reference) | eager ms (archc / reference) |"),
             "|---|---|---|---|---|---|---|---|"]
    threads = torch.get_num_threads()
    for name in models:
        try:
            first = " / ".join(f"{cold_run(c, name, threads, 'compile')['first_s']:.1f}" for c in ("archc", "reference"))
        except subprocess.CalledProcessError:
            first = "failed"
        row = compiled_row(name, batch, rounds, sample_s, first)
        print(row, file=sys.stderr, flush=True)
        lines.append(row)
        torch._dynamo.reset()
    return lines


def compiled_row(name: str, batch: int, rounds: int, sample_s: float, first: str) -> str:
    import torch

    torch.manual_seed(0)
    ref = build_reference(name).eval()
    ours = build_archc(name).eval()
    load_reference_weights(name, ours, ref)
    x = example_input(name, batch)
    try:
        ca, cb = torch.compile(ours), torch.compile(ref)
        with torch.no_grad():
            ca(x), cb(x)
    except Exception as e:  # noqa: BLE001  (inductor needs a working C++ toolchain)
        return f"| {name} | skipped: torch.compile failed: {type(e).__name__}: {str(e)[:200]} |"
    with torch.no_grad():
        for _ in range(3):
            ca(x), cb(x)
        inner = inner_count(lambda: cb(x), sample_s)
        d = duel(lambda: ca(x), lambda: cb(x), rounds, inner)
        eager = duel(lambda: ours(x), lambda: ref(x), max(3, rounds // 3), inner)
    return (f"| {name} | {batch}x3x224x224 | {fmt_times(d.a)} | {fmt_times(d.b)} | {fmt_ratio(d.ratios)} "
            f"| {fmt_ratio(d.cpu_ratios)} | {first} | {fmt_ms(statistics.median(eager.a))} / "
            f"{fmt_ms(statistics.median(eager.b))} |")


# ---- the report ----------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(threads: int) -> list[str]:
    import torch

    compat = _compat()
    versions = [f"torch {torch.__version__}", f"timm {compat.import_timm().__version__}",
                f"transformers {compat.import_transformers().__version__}"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"- date: {datetime.date.today().isoformat()}",
        (f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, load average {load:.1f} at start; "
         f"`torch.set_num_threads({threads})`"),
        f"- software: Python {platform.python_version()}, {', '.join(versions)}",
        f"- command: `python {' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}`",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["eager", "build", "compile"], action="append",
                   help="run only these parts (repeatable); default all three")
    p.add_argument("--models", nargs="+", default=ALL_MODELS, choices=ALL_MODELS)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: steadier on a shared 2-core machine)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per eager comparison")
    p.add_argument("--sample-s", type=float, default=0.2, help="about how long one timed sample lasts")
    p.add_argument("--build-rounds", type=int, default=7, help="warm build rounds per model")
    p.add_argument("--cold-runs", type=int, default=3, help="fresh processes per model and contestant")
    p.add_argument("--build-child", nargs=2, metavar=("CONTESTANT", "MODEL"), help=argparse.SUPPRESS)
    p.add_argument("--compile-child", nargs=2, metavar=("CONTESTANT", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(args.threads)
    if args.build_child:
        cold_child(args.build_child[0], args.build_child[1], args.threads)
        return
    if args.compile_child:
        compile_child(args.compile_child[0], args.compile_child[1], 8)
        return
    parts = args.only or ["eager", "build", "compile"]
    out = header(torch.get_num_threads())
    print("\n".join(out), file=sys.stderr, flush=True)
    if "eager" in parts:
        out += ["", ("Eager forward, eval, `torch.no_grad()`, fp32; ms per call, median (25th-75th "
                     "percentile); ratio = median of per-round ratios."), ""]
        out += bench_eager(args.models, args.batches, args.rounds, args.sample_s)
    if "build" in parts:
        out += ["", ("Build: `archc.compile(spec)` vs `timm.create_model(name, pretrained=False)` "
                     "(GPT-2: `GPT2LMHeadModel(GPT2Config())`), freshly initialized weights. Warm: in this "
                     "process after one call; cold: first call in a fresh process, after its imports."), ""]
        out += bench_build(args.models, args.build_rounds, args.cold_runs, torch.get_num_threads())
    if "compile" in parts:
        models = [m for m in args.models if m in COMPILED]
        out += ["", ("`torch.compile` (inductor, default mode), batch 8, steady state after warm-up. First "
                     "call: compile + one run, in a fresh process with an empty inductor cache."), ""]
        out += bench_compiled(models, 8, args.rounds, args.sample_s)
    print("\n".join(out))


if __name__ == "__main__":
    main()
