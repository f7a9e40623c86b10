"""Sparse weights against dense, side by side in one run (#16).

CPU (always): `F.linear` with the weight dense (masked) against CSR (unstructured) and BSR
(32x32 blocks), for several shapes, densities and numbers of input rows; interleaved rounds, the
median time of each and the median of the per-round ratios dense/sparse (> 1: sparse is faster).
The table says, row by row, what `archc.sparsity.lower` would choose (it measures the same way, at
lowering time, on the machine that runs the model).

GPU (when one is present): a 2:4 linear (`to_sparse_semi_structured`) against dense cuBLAS at
8192x8192x8192 in bf16, and a ViT-B MLP stack (12 x [768 -> 3072 -> 768], 197 x 64 tokens) end to
end, the MLP linears 2:4.

    python bench/bench_sparse.py                 # CPU table, then GPU if there is one
    python bench/bench_sparse.py --threads 1 --rounds 15

Prints markdown (copy it into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from archc.backends.torch.masks import block_mask, magnitude_mask, nm_mask  # noqa: E402
from timing import interleaved, ratio  # noqa: E402

import bench_kernels  # noqa: E402

SHAPES = [(1024, 1024), (4096, 1024), (1024, 4096)]  # (out, in)
DENSITIES = [0.5, 0.2, 0.1, 0.05, 0.01]
ROWS = [1, 8, 64]






def cpu_table(rounds: int) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    lines = ["| weight (out x in) | pattern | rows | dense ms | sparse ms | dense/sparse | lower chooses |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for out_f, in_f in SHAPES:
        w = torch.randn(out_f, in_f, generator=gen)
        for kind in ("csr", "bsr"):
            for d in DENSITIES:
                mask = magnitude_mask(w, d) if kind == "csr" else block_mask(w, 32, 32, d)
                dense = w * mask
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    sparse = dense.to_sparse_csr() if kind == "csr" else dense.to_sparse_bsr((32, 32))
                for rows in ROWS:
                    x = torch.randn(rows, in_f, generator=gen)
                    inner = max(1, int(2e6 // (out_f * in_f * max(rows, 8) // 8)))
                    with torch.no_grad():
                        t = interleaved({"dense": lambda: F.linear(x, dense), "sparse": lambda: F.linear(x, sparse)},
                                        rounds, inner)
                    r = ratio(t, "dense", "sparse")
                    pattern = f"{kind} {d:g}" if kind == "csr" else f"bsr 32x32 {d:g}"
                    lines.append(f"| {out_f} x {in_f} | {pattern} | {rows} | {statistics.median(t['dense']):.3f} | "
                                 f"{statistics.median(t['sparse']):.3f} | {r:.2f} | "
                                 f"{kind if r > 1 else 'dense'} |")
                    print(lines[-1], file=sys.stderr, flush=True)
    return lines


def gpu_tables(rounds: int) -> list[str]:
    from torch.sparse import to_sparse_semi_structured

    dev, dt = "cuda", torch.bfloat16

    def time_cuda(fn: Callable[[], Any], iters: int = 20) -> list[float]:
        return [bench_kernels.time_cuda(torch, fn, 1, warmup=3 if i == 0 else 0) for i in range(iters)]

    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16", "",
             "| case | dense ms | 2:4 ms | dense/2:4 | max rel diff |", "| --- | ---: | ---: | ---: | ---: |"]
    n = 8192
    w = torch.randn(n, n, device=dev, dtype=dt)
    w = w * nm_mask(w, 2, 4)
    x = torch.randn(n, n, device=dev, dtype=dt)
    ws = to_sparse_semi_structured(w)
    td, ts = [], []
    for _ in range(rounds):
        td += time_cuda(lambda: F.linear(x, w), 5)
        ts += time_cuda(lambda: F.linear(x, ws), 5)
    ref, got = F.linear(x, w).float(), F.linear(x, ws).float()
    rel = ((ref - got).abs().max() / ref.abs().max()).item()
    lines.append(f"| linear 8192x8192x8192 | {statistics.median(td):.3f} | {statistics.median(ts):.3f} | "
                 f"{statistics.median(td) / statistics.median(ts):.2f} | {rel:.1e} |")
    layers = [(torch.randn(3072, 768, device=dev, dtype=dt), torch.randn(768, 3072, device=dev, dtype=dt))
              for _ in range(12)]
    layers = [(a * nm_mask(a, 2, 4), b * nm_mask(b, 2, 4)) for a, b in layers]
    packed = [(to_sparse_semi_structured(a), to_sparse_semi_structured(b)) for a, b in layers]
    tokens = torch.randn(197 * 64, 768, device=dev, dtype=dt)

    def mlp(ws: list[tuple[Any, Any]]) -> Any:
        h = tokens
        for a, b in ws:
            h = h + F.linear(F.gelu(F.linear(h, a)), b) * 0.01
        return h
    td, ts = [], []
    for _ in range(rounds):
        td += time_cuda(lambda: mlp(layers), 5)
        ts += time_cuda(lambda: mlp(packed), 5)
    ref, got = mlp(layers).float(), mlp(packed).float()
    rel = ((ref - got).abs().max() / ref.abs().max()).item()
    lines.append(f"| ViT-B MLP stack (12 layers, 12,608 tokens) | {statistics.median(td):.3f} | "
                 f"{statistics.median(ts):.3f} | {statistics.median(td) / statistics.median(ts):.2f} | {rel:.1e} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-cpu", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, "
          f"fp32, {args.rounds} interleaved rounds\n")
    if not args.no_cpu:
        print("\n".join(cpu_table(args.rounds)))
    if torch.cuda.is_available():
        print()
        print("\n".join(gpu_tables(args.rounds)))
    else:
        print("\n(no GPU here: the 2:4 rows need one)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
