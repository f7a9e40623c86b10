"""Generated kernels on a GPU: eager PyTorch, torch.compile, `archc build --target triton` and
`--target cuda`, side by side in one run.

1. Forward time of GPT-2 small (batch 8 x 1024 tokens) and ViT-S/16 (batch 64, 224 x 224), eval,
   inference mode, the same weights everywhere: eager (the torch target), torch.compile of it
   (inductor, default mode), the Triton package and the CUDA package. Each result is checked
   against eager (max abs diff printed).
2. Each generated elementwise / normalization kernel's achieved bandwidth (bytes its tensors hold,
   read and written, over its time under CUDA-graph replay) as a fraction of the GPU's peak: a
   table by device name (H100 SXM 3.35 TB/s, H200 4.8 TB/s, A100 2.0 TB/s), else a measured copy.

    python bench/bench_kernels.py                       # fp16, both models
    python bench/bench_kernels.py --dtype bf16 --models gpt2 --iters 20
    python bench/bench_kernels.py --autotune             # tune the Triton configs first (slow)

Prints markdown tables (copy them into docs/benchmarks.md). On a machine without a GPU it says so
and exits 0. The Triton column needs `triton`; the CUDA column needs `nvcc` (skipped, with a note,
when either is missing). First runs autotune (Triton) and compile (nvcc): both are cached.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "gpt2": (ROOT / "specs/models/gpt2.arch", {}, {"B": 8, "T": 1024}),
    "vit": (ROOT / "specs/models/vit_small_patch16_224.arch", {}, {"B": 64}),
}
# Peak DRAM bandwidth, bytes/s, by a substring of torch.cuda.get_device_name() (first match wins).
PEAK_BANDWIDTH = [("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100", 2.0e12)]


def peak_bandwidth(torch: Any) -> tuple[float, str]:
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_BANDWIDTH:
        if key in name:
            return peak, f"{name}: {peak / 1e12:.2f} TB/s (data sheet)"
    x = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")  # 256 MiB, copied: read + write
    y = torch.empty_like(x)
    ms = time_cuda(torch, lambda: y.copy_(x), iters=20)
    peak = 2 * x.numel() / (ms / 1e3)
    return peak, f"{name}: {peak / 1e12:.2f} TB/s (measured copy)"


def time_cuda(torch: Any, fn: Callable[[], Any], iters: int, warmup: int = 3) -> float:
    """Median milliseconds of `fn`, each call between two CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_graph(torch: Any, fn: Callable[[], Any], reps: int = 20, replays: int = 10) -> float:
    """Milliseconds of one `fn` call, replayed from a CUDA graph (no Python or launch overhead)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # autotuning and compilation happen here, before capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / (reps * replays)


def progress(text: str) -> None:
    """A line on stderr as each step starts (compiling and autotuning take minutes on a cold cache)."""
    print(f"bench_kernels: {text}", file=sys.stderr, flush=True)


def build_package(graph: Any, target: str, folder: Path) -> Any:
    if target == "triton":
        from archc.backends.triton.emit import package
    else:
        from archc.backends.cuda.emit import package
    name = f"bench_{graph.name.lower()}_{target}"
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    for file, text in package(graph).items():
        (out / file).write_text(text)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(name)


class KernelLog:
    """Wraps a package's generated elementwise / row launchers to remember one call's arguments."""

    def __init__(self, kernels: Any) -> None:
        self.calls: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        for name in dir(kernels):
            fn = getattr(kernels, name)
            if callable(fn) and name.startswith("r") and name.endswith(("_rows", "_elementwise")):
                setattr(kernels, name, self._wrap(name, fn))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def launcher(*args: Any) -> Any:
            self.calls.setdefault(name, (fn, args))
            return fn(*args)

        return launcher


def bandwidth_rows(torch: Any, label: str, log: KernelLog, peak: float) -> list[str]:
    rows = []
    for name, (fn, args) in sorted(log.calls.items(), key=lambda kv: int(kv[0].split("_")[0][1:])):
        outs = fn(*args)
        moved = sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))
        moved += sum(o.numel() * o.element_size() for o in outs)
        ms = time_graph(torch, lambda fn=fn, args=args: fn(*args))
        rate = moved / (ms / 1e3)
        rows.append(f"| {label} | {name} | {moved / 2**20:.1f} | {ms * 1e3:.1f} | {rate / 1e9:.0f} | "
                    f"{100 * rate / peak:.0f}% |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2,vit", help="comma-separated: gpt2, vit")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to warm up)")
    parser.add_argument("--autotune", action="store_true",
                        help="benchmark the Triton configs on first launch (ARCHC_AUTOTUNE=1; minutes per model) "
                             "instead of the rule-of-thumb configs")
    args = parser.parse_args()

    if args.autotune:
        os.environ["ARCHC_AUTOTUNE"] = "1"
    import torch

    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA GPU is available on this machine; nothing to measure.\n"
              "Run it on a machine with an NVIDIA GPU (A100, H100, H200): python bench/bench_kernels.py")
        return 0

    from archc.backends.torch.inputs import example_inputs
    from archc.elaborate import elaborate_file

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    try:
        import triton  # noqa: F401

        have_triton = True
    except ImportError:
        have_triton = False
    have_nvcc = shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()
    peak, peak_text = peak_bandwidth(torch)
    tuning = "autotuned" if args.autotune else "rule-of-thumb Triton configs"
    print(f"# archc kernels: {peak_text}; torch {torch.__version__}; {args.dtype}; eval, inference_mode; {tuning}\n")
    notes = []
    if not have_triton:
        notes.append("triton is not installed: no Triton column")
    if not have_nvcc:
        notes.append("nvcc is not on PATH: no CUDA column")

    model_rows, kernel_rows = [], []
    work = Path(tempfile.mkdtemp(prefix="archc-bench-"))
    for key in args.models.split(","):
        path, overrides, sizes = MODELS[key]
        graph = elaborate_file(path, overrides=overrides)
        from archc.api import build

        torch.manual_seed(0)
        eager = build(graph).eval().to("cuda", dtype)
        xs = tuple(x.to("cuda", dtype) if x.is_floating_point() else x.to("cuda")
                   for x in example_inputs(graph, sizes))
        contestants: list[tuple[str, Callable[..., Any]]] = [("eager", eager)]
        if not args.no_compile:
            contestants.append(("torch.compile", torch.compile(eager)))
        logs: dict[str, KernelLog] = {}
        for target, ok in (("triton", have_triton), ("cuda", have_nvcc)):
            if not ok:
                continue
            progress(f"{key}: writing and loading the {target} package")
            pkg = build_package(graph, target, work)
            model = getattr(pkg, pkg.__all__[0])().eval().to("cuda", dtype)
            model.load_state_dict(eager.state_dict())
            logs[target] = KernelLog(pkg.kernels)
            contestants.append((f"archc {target}", model))
        with torch.inference_mode():
            want = eager(*xs).float()
            times = {}
            for label, fn in contestants:
                progress(f"{key} {label}: first call (compiles / autotunes), then {args.iters} timed calls")
                try:
                    got = fn(*xs).float()
                    err = (got - want).abs().max().item()
                    times[label] = (time_cuda(torch, lambda fn=fn: fn(*xs), args.iters), err)
                    progress(f"{key} {label}: {times[label][0]:.2f} ms, max abs diff {err:.2e}")
                except Exception as e:  # a contestant that fails is reported, not fatal
                    notes.append(f"{key} {label}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            base = times.get("eager", (float("nan"), 0.0))[0]
            for label, (ms, err) in times.items():
                model_rows.append(f"| {key} | {label} | {ms:.2f} | {base / ms:.2f}x | {err:.2e} |")
            for target, log in logs.items():
                progress(f"{key} {target}: kernel bandwidth under CUDA-graph replay")
                kernel_rows += bandwidth_rows(torch, f"{key} {target}", log, peak)

    print("| model | contestant | ms / forward | speed-up vs eager | max abs diff vs eager |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(model_rows))
    print("\n| model, target | kernel | MiB moved | us | GB/s | of peak |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(kernel_rows))
    for note in notes:
        print(f"\nnote: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
