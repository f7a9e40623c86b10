"""Mixture-of-experts layers side by side (#15): Hugging Face's MixtralSparseMoeBlock (its expert
loop) against archc's moe_experts lowerings (loop, grouped, batched) on the same weights and tokens,
CPU, eval, no grad, interleaved rounds: median time of each and median per-round ratio HF/archc.
On a GPU (when present): the grouped lowering against torch._grouped_mm called directly on
Mixtral-8x7B layer shapes in bf16.

    python bench/bench_moe.py --threads 1 --rounds 9

Prints markdown (copy it into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from archc.backends.torch.conditional import moe_experts, moe_route  # noqa: E402
from timing import interleaved, ratio  # noqa: E402


def peak_gflops() -> float:
    """The best rate of one large fp32 GEMM on this machine and thread count (GFLOP/s): no lowering
    of the same expert FLOPs can beat FLOPs / this rate."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.nn.functional.linear(a, b)  # MKL's first call sets up
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        torch.nn.functional.linear(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def cpu_rows(rounds: int) -> list[str]:
    import _timm_compat

    _timm_compat.install_import_hook()
    transformers = _timm_compat.import_transformers()
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    peak = peak_gflops()
    lines = [f"Peak of one 2048^3 GEMM here: {peak:.0f} GFLOP/s. 'HF / ideal' is the most any lowering could gain: "
             "Hugging Face's time over the experts' FLOPs run at that peak.\n",
             "| layer (D, hidden, E, top-k) | tokens | HF loop ms | archc loop | archc grouped | archc batched | "
             "HF / grouped | HF / ideal | max rel diff |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for d, h, e, k in ((128, 448, 8, 2), (512, 1792, 8, 2), (1024, 3584, 8, 2)):
        config = transformers.MixtralConfig(hidden_size=d, intermediate_size=h, num_local_experts=e, num_experts_per_tok=k)
        torch.manual_seed(0)
        block = MixtralSparseMoeBlock(config).eval()
        with torch.no_grad():
            for p in block.parameters():
                p.normal_(0, 0.02)
        gate, first, second = block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj
        for tokens in (512, 2048):
            x = torch.randn(1, tokens, d)

            def ours(impl: str) -> Callable[[], Any]:
                def run() -> Any:
                    w, i = moe_route(x @ gate.t(), k, "softmax", True)
                    return moe_experts(x, w, i, first, second, "swiglu", "silu", impl, None)
                return run
            fns = {"hf": lambda: block(x), "loop": ours("loop"), "grouped": ours("grouped"), "batched": ours("batched")}
            with torch.no_grad():
                t = interleaved(fns, rounds)
                ref = block(x)
                rel = max(float((fns[i]() - ref).abs().max() / ref.abs().max()) for i in ("loop", "grouped", "batched"))
            med = {k2: statistics.median(v) for k2, v in t.items()}
            r = ratio(t, "hf", "grouped")
            ideal = tokens * k * 6 * d * h / (peak * 1e9) * 1e3  # ms: gate_up (2h x d) and down (d x h) per choice
            lines.append(f"| {d}, {h}, {e}, {k} | {tokens} | {med['hf']:.1f} | {med['loop']:.1f} | {med['grouped']:.1f} | "
                         f"{med['batched']:.1f} | {r:.2f} | {med['hf'] / ideal:.2f} | {rel:.1e} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def gpu_rows(rounds: int) -> list[str]:
    dev, dt = "cuda", torch.bfloat16
    d, h, e, k, tokens = 4096, 14336, 8, 2, 4096
    torch.manual_seed(0)
    first = torch.randn(e, 2 * h, d, device=dev, dtype=dt) * 0.02
    second = torch.randn(e, d, h, device=dev, dtype=dt) * 0.02
    x = torch.randn(tokens, d, device=dev, dtype=dt)
    w, i = moe_route(torch.randn(tokens, e, device=dev), k, "softmax", True)

    def direct() -> Any:  # the two grouped matmuls alone, inputs already sorted
        flat = i.reshape(-1)
        order = torch.argsort(flat, stable=True)
        ends = torch.cumsum(torch.bincount(flat, minlength=e), 0).to(torch.int32)
        xs = x[order // k]
        g, u = torch._grouped_mm(xs, first.transpose(1, 2), ends).chunk(2, dim=-1)
        return torch._grouped_mm(torch.nn.functional.silu(g) * u, second.transpose(1, 2), ends)

    def ours() -> Any:
        return moe_experts(x, w, i, first, second, "swiglu", "silu", "grouped", None)

    def timed(fn: Callable[[], Any]) -> float:
        fn()
        torch.cuda.synchronize()
        s, t = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            fn()
        t.record()
        torch.cuda.synchronize()
        return s.elapsed_time(t) / 10
    a, b = [], []
    for _ in range(rounds):  # interleaved: each round times both, side by side
        a.append(timed(direct))
        b.append(timed(ours))
    ratios = sorted(y / x for x, y in zip(a, b))
    return [f"GPU {torch.cuda.get_device_name()}: Mixtral-8x7B layer, {tokens} tokens, bf16: "
            f"torch._grouped_mm directly {statistics.median(a):.2f} ms, archc grouped {statistics.median(b):.2f} ms "
            f"({statistics.median(b) / statistics.median(a):.2f}x; per round {statistics.median(ratios):.2f}x, "
            f"{ratios[0]:.2f}-{ratios[-1]:.2f}; archc's time includes the weighted combine, the direct one does not)"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-cpu", action="store_true", help="only the GPU comparison (bench/gpu_check.sh)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU {platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, fp32, eval, "
          f"{args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f}\n")
    if not args.no_cpu:
        print("\n".join(cpu_rows(args.rounds)))
    if torch.cuda.is_available():
        print("\n" + "\n".join(gpu_rows(args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
