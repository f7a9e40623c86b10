"""-O2 with and without one of its CPU passes, side by side (issue #17): eager, -O2 without the
pass, -O2, in one process on the same weights and inputs, interleaved rounds, medians and
per-round ratios. `archc bench` compares -O2 with torch.compile; this isolates what one pass buys.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cpu_fusion.py poolformer_s12 --pass fuse_pool_mixer \
        --batch 1 --rounds 30
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cpu_fusion.py poolformer_s12 --freeze --rounds 40
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cpu_fusion.py --mixer --batch 1 --rounds 40

`--freeze` adds torch.compile with freezing (cold, as `archc bench` compiles it): -O2 with and
without the pass against it in the same rounds. `--mixer` times the fused op alone
(backends/torch/fused.py's pool_mixer_residual) against the chain it replaces on PoolFormer-S12's
four shapes, channels-last as the convolutions leave them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics

import torch

from archc.api import build
from archc.backends.torch.inputs import example_inputs
from archc.commands.bench import _first_call, _fresh_entry, cold_inductor
from archc.elaborate import elaborate_file
from archc.passes.manager import LEVELS, run_pipeline
from archc.registry import resolve_spec

from timing import interleaved, median, ratio


def mixer(batch: int, rounds: int) -> None:
    import torch.nn.functional as F

    from archc.backends.torch.fused import pool_mixer_residual

    def chain(x: torch.Tensor, s: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = F.group_norm(x, 1, w, b, 1e-5)
        return x + (F.avg_pool2d(n, 3, 1, 1, count_include_pad=False) - n) * s

    print(f"pool_mixer_residual against the chain, batch {batch}, {rounds} rounds, load {os.getloadavg()[0]:.2f}")
    g = torch.Generator().manual_seed(0)
    for c, h in ((64, 56), (128, 28), (320, 14), (512, 7)):
        x = torch.randn(batch, c, h, h, generator=g).contiguous(memory_format=torch.channels_last)
        s, w, b = torch.rand(c, 1, 1, generator=g), torch.randn(c, generator=g), torch.randn(c, generator=g)
        with torch.inference_mode():
            torch.testing.assert_close(pool_mixer_residual(x, s, w, b, 1, 1e-5, [3, 3], [1, 1]), chain(x, s, w, b),
                                       rtol=1e-5, atol=1e-5)
            fns = {"chain": lambda: chain(x, s, w, b),
                   "fused": lambda: pool_mixer_residual(x, s, w, b, 1, 1e-5, [3, 3], [1, 1])}
            for _ in range(5):  # the allocator's first touches
                for fn in fns.values():
                    fn()
            times = interleaved(fns, rounds)
        print(f"  [{batch}, {c}, {h}, {h}]: chain {median(times, 'chain') * 1e3:7.0f} us, fused "
              f"{median(times, 'fused') * 1e3:7.0f} us, fused / chain {ratio(times, 'fused', 'chain'):.3f} per round")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="poolformer_s12")
    p.add_argument("--mixer", action="store_true", help="time pool_mixer_residual alone against its chain")
    p.add_argument("--pass", dest="name", default="fuse_pool_mixer", help="the -O2 pass to leave out")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--freeze", action="store_true",
                   help="also torch.compile with freezing (a cold compile, as archc bench makes it)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.mixer:
        mixer(args.batch, args.rounds)
        return
    graph = elaborate_file(resolve_spec(args.model))
    torch.manual_seed(0)
    eager = build(graph).eval()
    inputs = example_inputs(graph, {"B": args.batch}, seed=0)
    fns = {"eager": eager}
    for label, names in (("O2 without", [n for n in LEVELS[2] if n != args.name]), ("O2", list(LEVELS[2]))):
        pipeline = run_pipeline(graph, names)
        model = build(pipeline.graph).eval()
        model.load_state_dict(pipeline.weights(eager.state_dict()))
        fns[label] = model
    with contextlib.ExitStack() as stack, torch.inference_mode():
        if args.freeze:
            stack.enter_context(cold_inductor())
            fns["freezing"] = torch.compile(_fresh_entry(copy.deepcopy(eager)))
            _first_call("freeze", fns["freezing"], inputs)
        ref = eager(*inputs)
        for k in fns:
            out = fns[k](*inputs)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
        times = interleaved({k: (lambda m=m: m(*inputs)) for k, m in fns.items()}, args.rounds)
    print(f"{args.model} batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds, "
          f"load {os.getloadavg()[0]:.2f}; -O2 {'with' if args.name in LEVELS[2] else 'and'} {args.name}")
    for k in fns:
        q = statistics.quantiles([a / b for a, b in zip(times["eager"], times[k])], n=4)
        print(f"  {k:<11} {median(times, k):8.2f} ms  {ratio(times, 'eager', k):.3f}x of eager ({q[0]:.2f}-{q[2]:.2f})")
    per = [a / b for a, b in zip(times["O2"], times["O2 without"])]
    q = statistics.quantiles(per, n=4)
    print(f"  -O2 / -O2 without {args.name}: {statistics.median(per):.3f} per round ({q[0]:.3f}-{q[2]:.3f})")
    for k in ("O2 without", "O2") if args.freeze else ():
        per = [a / b for a, b in zip(times[k], times["freezing"])]
        q = statistics.quantiles(per, n=4)
        print(f"  {k} / freezing: {statistics.median(per):.3f} per round ({q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
    main()
