"""`archc build spec.arch --target torch|fx|onnx|triton|cuda -o OUT`: lower a spec.

--target torch writes a standalone `.py` file that needs only torch; --target fx writes the code
of the `torch.fx.GraphModule` built from the IR. -o names the file (or a folder, where the file is
named after the spec); without -o the code goes to stdout. Files are written atomically.
--target triton|cuda writes a Python package of generated kernels into the folder -o names
(backends/kernels); --explain prints which kernel or library call runs each region.
--target onnx writes an .onnx file (dynamic axes named B, T, ...) and checks it with onnxruntime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from archc.api import TARGETS
from archc.backends.kernels.targets import KERNEL_TARGETS
from archc.cli import add_spec_args, load_graph
from archc.errors import ArchError
from archc.files import refuse_overwrite, write_atomic
from archc.passes.manager import add_pass_args, run_passes


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("build", help="lower a spec to PyTorch (a .py file, or torch.fx code)",
                       description="Lower a spec to PyTorch: --target torch writes a standalone, readable "
                                   ".py file whose module tree and state_dict keys follow the spec; "
                                   "--target fx writes the code of the torch.fx GraphModule built from the IR.")
    add_spec_args(p)
    p.add_argument("--target", choices=TARGETS + ("onnx",) + KERNEL_TARGETS, default="torch",
                   help="what to build (default: torch)")
    p.add_argument("--explain", action="store_true",
                   help="triton/cuda: print which kernel or library call runs each region, and why")
    p.add_argument("--parallel", action="store_true",
                   help="torch: also write `def parallelize(model, mesh, ...)`, the tensor-parallel and FSDP "
                        "plan derived from the spec's axes (docs/parallel.md)")
    p.add_argument("--tp", type=int, default=1, metavar="N",
                   help="with --parallel: check that N tensor-parallel ranks divide the heads, hidden sizes "
                        "and vocabulary (default 1)")
    p.add_argument("--replicate", action="append", default=[], metavar="PATH",
                   help="with --parallel: keep the linears in this module whole; * stands for one part "
                        "(blocks.*.adaLN_modulation) (repeatable)")
    p.add_argument("--sp", action="store_true",
                   help="with --parallel: sequence parallelism inside the stacks (norms SequenceParallel)")
    p.add_argument("--ep", type=int, default=1, metavar="N",
                   help="with --parallel: expert parallelism, stacked experts split over N data-parallel ranks "
                        "(tokens sent by all-to-all) instead of by tensor parallelism (default 1: off)")
    p.add_argument("-o", "--output",
                   help="the .py file to write, or a folder (default: print the code to stdout)")
    add_pass_args(p)
    p.set_defaults(func=run)


def output_path(args: argparse.Namespace) -> Path | None:
    if args.output is None:
        return None
    out = Path(args.output)
    if out.is_dir() or args.output.endswith(("/", "\\")):  # a folder: name the file after the spec
        return out / f"{Path(args.spec).stem}.py"
    return out


def fx_source(graph: object) -> str:
    """The `--target fx` file: the fx backend writes it, through the quoting layer."""
    from archc.backends.fx.build import fx_source as write

    return write(graph)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    if args.parallel and args.target != "torch":
        raise ArchError(f"--parallel writes a torch plan; it does not apply to --target {args.target}")
    graph = run_passes(load_graph(args), args).graph
    if args.target in KERNEL_TARGETS:
        return run_kernels(args, graph)
    if args.target == "onnx":
        return run_onnx(args, graph)
    if args.target == "torch":
        from archc.backends.torch import emit_python

        text = emit_python(graph)
        if args.parallel:
            text = with_parallel(text, graph, args.tp, args.sp, tuple(args.replicate), args.ep)
    else:
        text = fx_source(graph)
    path = output_path(args)
    if path is None:
        sys.stdout.write(text)
        return 0
    refuse_overwrite(path, [args.spec])
    write_atomic(path, text)
    print(f"{path}: model {graph.name}, {len(graph.nodes)} ops, {graph.param_count():,} parameters "
          f"(target {args.target})")
    return 0


def with_parallel(text: str, graph: object, tp: int, sp: bool = False, replicate: tuple[str, ...] = (),
                  ep: int = 1) -> str:
    """The model's file followed by its parallel plan as `def parallelize(model, mesh, ...)`."""
    from archc.analysis.parallel import plan_parallel
    from archc.backends.quote import verify_python
    from archc.backends.torch.emit import class_name
    from archc.backends.torch.parallel_emit import parallel_source

    name = class_name(graph)  # type: ignore[arg-type]
    plan = plan_parallel(graph, tp=tp, sp=sp, replicate=replicate, ep=ep)  # type: ignore[arg-type]
    text = text + "\n\n" + parallel_source(plan, name)
    verify_python(text, f"<archc: {name}>")
    return text


def run_onnx(args: argparse.Namespace, graph: object) -> int:
    from archc.backends.onnx import check, export_onnx
    from archc.backends.torch import build_module
    from archc.errors import ArchError

    if args.output is None:
        raise ArchError("--target onnx needs -o FILE.onnx (the file is binary)")
    out = Path(args.output)
    path = out / f"{Path(args.spec).stem}.onnx" if out.is_dir() or args.output.endswith(("/", "\\")) else out
    refuse_overwrite(path, [args.spec])
    module = build_module(graph)  # type: ignore[arg-type]
    data = export_onnx(graph, module)  # type: ignore[arg-type]
    close = check(graph, module, data)  # type: ignore[arg-type]
    if not close.ok:
        raise ArchError(f"the ONNX file does not match the torch target (allowed: {close.atol:g} + "
                        f"{close.rtol:g} * |torch|): {close.describe()}")
    write_atomic(path, data)
    print(f"{path}: model {graph.name}, {len(data):,} bytes (target onnx; onnxruntime matches the torch "  # type: ignore[attr-defined]
          f"target within {close.max_abs:.1e} at other input sizes)")
    return 0


def run_kernels(args: argparse.Namespace, graph: object) -> int:
    from archc.backends.kernels import targets

    if args.explain:
        print("\n".join(targets.explain(graph, args.target)))  # type: ignore[arg-type]
        if args.output is None:
            return 0
    if args.output is not None:
        refuse_overwrite(args.output, [args.spec])
    files = targets.write_package(graph, args.target, args.output)  # type: ignore[arg-type]
    print(f"{args.output}: model {graph.name}, {len(files)} files (target {args.target})")  # type: ignore[attr-defined]
    return 0
