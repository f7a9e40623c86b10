"""Fast feedforward inference against the dense feedforward of the same width, side by side (#15).

For each configuration: a dense two-layer MLP `in -> width -> in` (F.linear, ReLU/GELU), and the
fast feedforward op of the same training width in its inference (hard) form, as archc's generated
code runs it (backends/torch/conditional.py): `fff` (2^depth leaves of `leaf` neurons, width =
2^depth * leaf) and `fff_neurons` (UltraFastBERT: one tree of depth + 1 levels, 2^(depth+1) - 1
neurons). Batch 128 (and 1), eval, no grad, interleaved rounds: the median time of each and the
median of per-round ratios dense/fff.

    python bench/bench_fff.py --threads 1 --rounds 15

Prints a markdown table (copy it into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from archc.backends.torch.conditional import fff, fff_neurons  # noqa: E402
from timing import interleaved, ratio  # noqa: E402

CONFIGS = [  # (op, in, depth, leaf): fff's width is 2^depth * leaf; fff_neurons' 2^(depth+1) - 1
    ("fff", 768, 7, 24),
    ("fff", 768, 5, 96),
    ("fff", 1024, 8, 16),
    ("fff_neurons", 768, 11, 0),
]




def case(op: str, d: int, depth: int, leaf: int, batch: int, rounds: int) -> str:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, d, generator=gen)
    if op == "fff":
        n, width = 2 ** depth, 2 ** depth * leaf
        p = [torch.randn(n - 1, d, generator=gen) / d ** 0.5, torch.randn(n - 1, 1, generator=gen) * 0.1,
             torch.randn(n, d, leaf, generator=gen) / d ** 0.5, torch.randn(n, leaf, generator=gen) * 0.1,
             torch.randn(n, leaf, d, generator=gen) / leaf ** 0.5, torch.randn(n, d, generator=gen) * 0.1]
        _act, act_fn = "relu", F.relu

        def fast() -> Any:
            return fff(x, *p, depth=depth, act="relu", form="hard", training=False)
        label = f"fff in={d} depth={depth} leaf={leaf}"
    else:
        width = 2 ** (depth + 1) - 1
        p = [torch.randn(width, d, generator=gen) / d ** 0.5, torch.randn(width, generator=gen) * 0.1,
             torch.randn(width, d, generator=gen) / width ** 0.5]
        _act, act_fn = "gelu", F.gelu

        def fast() -> Any:
            return fff_neurons(x, *p, depth=depth, trees=1, act="gelu", form="hard", training=False)
        label = f"fff_neurons in={d} depth={depth} (UltraFastBERT)"
    w1, b1 = torch.randn(width, d, generator=gen) / d ** 0.5, torch.zeros(width)
    w2, b2 = torch.randn(d, width, generator=gen) / width ** 0.5, torch.zeros(d)

    def dense() -> Any:
        return F.linear(act_fn(F.linear(x, w1, b1)), w2, b2)
    with torch.no_grad():
        t = interleaved({"dense": dense, "fff": fast}, rounds, inner=3)
    r = ratio(t, "dense", "fff")
    return (f"| {label} | {width} | {batch} | {statistics.median(t['dense']):.3f} | "
            f"{statistics.median(t['fff']):.3f} | {r:.2f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU {platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, fp32, eval, "
          f"{args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f}\n")
    print("| fast feedforward (hard form) | dense width | batch | dense ms | fff ms | dense/fff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for op, d, depth, leaf in CONFIGS:
        for batch in (128, 1):
            print(case(op, d, depth, leaf, batch, args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
