"""The CUDA target: plain CUDA C++ kernels with `extern "C"` launchers, a build script, and a model.

    OUT/kernels.cu       one kernel per generated region (elementwise.cu.j2, rows.cu.j2), each with
                         an `extern "C"` launcher: dtype code, raw pointers, sizes, cudaStream_t
    OUT/build.py         nvcc -> shared library (sm_80, sm_90), cached by the hash of source and flags
    OUT/kernels.py       Python launchers: ctypes calls with data pointers and the current stream
    OUT/model.py         the model: the torch target's class with a kernel-launching `forward`
    OUT/torch_model.py   the torch target's file

What runs each region (docs/kernels.md says why):

    gemm         library F.linear (cuBLAS); the epilogue, bias included, is one generated kernel
    conv         library F.conv2d (cuDNN) without bias, then a generated epilogue kernel
    rows         generated: one block per row, warp-shuffle reductions
    attention    library F.scaled_dot_product_attention (FlashAttention / cuDNN / memory-efficient)
    elementwise  generated: grid-stride loop
"""

from __future__ import annotations

from pathlib import Path

from archc.backends.kernels import expr
from archc.backends.kernels.module import (Call, Context, context, explain, header, init_py, model_py, source_text,
                                           template, verify_package)
from archc.backends.kernels.partition import Region, partition
from archc.backends.kernels.plan import KernelPlan, Operand, plan, prepare_operands, var
from archc.backends.quote import c_comment, is_identifier, py_comment, py_docstring, py_float, py_str
from archc.backends.torch.emit import emit_python
from archc.ir.graph import Graph
from archc.ops import registry

HERE = Path(__file__).parent
DTYPES = [(0, "float"), (1, "__half"), (2, "__nv_bfloat16")]


class _Kernel(dict):  # type: ignore[type-arg]
    __getattr__ = dict.__getitem__


def _offset(op: Operand, rank: int) -> str:
    if op.scalar:
        return "0"
    if op.axes is None or op.gather:
        return "offs"
    a, b = op.axes
    return f"offs % {op.var}_size" if b == rank else f"(offs / {op.var}_inner) % {op.var}_size"


def _size_args(op: Operand, rank: int) -> list[str]:
    if op.axes is None or op.scalar or op.gather:
        return []
    return ([f"{op.var}_inner"] if op.axes[1] != rank else []) + [f"{op.var}_size"]


class _Signature:
    """The same arguments three ways: kernel parameters, extern "C" parameters, the call between them,
    plus the Python launcher's arguments and their ctypes types."""

    def __init__(self) -> None:
        self.kernel: list[str] = []
        self.extern: list[str] = []
        self.call: list[str] = []
        self.python: list[str] = []
        self.ctypes: list[str] = []

    def pointer(self, name: str, py: str, const: bool = True) -> None:
        c = "const " if const else ""
        self.kernel.append(f"{c}T* __restrict__ {name}")
        self.extern.append(f"{c}void* {name}")
        self.call.append(f"({c}T*){name}")
        self.python.append(f"{py}.data_ptr()")
        self.ctypes.append("P")

    def size(self, name: str) -> None:
        self.kernel.append(f"int64_t {name}")
        self.extern.append(f"int64_t {name}")
        self.call.append(name)
        self.python.append(name)
        self.ctypes.append("I64")


def _operands(sig: _Signature, loads: list[Operand], stores: list[str], rank: int) -> None:
    for op in loads:
        sig.pointer(op.arg, op.var)
    for v in stores:
        sig.pointer(f"{var(v)}_ptr", var(v), const=False)
    for op in loads:
        for name in _size_args(op, rank):
            sig.size(name)


def _prepare(loads: list[Operand], stores: list[str]) -> list[str]:
    values = [op for op in loads if op.value is not None]
    full = next((op for op in values if op.axes is None and not op.gather), None)
    ref = (full or values[0]).var
    lines = [f"shape = {full.var}.shape" if full is not None else
             f"shape = torch.broadcast_shapes({', '.join(op.var + '.shape' for op in values)})",
             f"ref = {ref}"]
    return lines + prepare_operands(loads, stores, "ref", "bcast", cast=True)


def _body(stmts: list) -> list[str]:
    return [f"const float {s.var} = {s.code(expr.CUDA)};  // {c_comment(s.where)} {c_comment(s.node.op)}".rstrip()
            for s in stmts]


def _loads(loads: list[Operand], rank: int) -> list[str]:
    return [f"const float {op.var} = archc_load({op.arg}, {_offset(op, rank)});" for op in loads]


def _stores(kp: KernelPlan) -> list[str]:
    return [f"archc_store({var(v)}_ptr, offs, {var(v)});" for v in kp.stores]


def _launcher_args(ctx: Context, first: list[tuple[str, str]], loads: list[Operand]) -> list[tuple[str, str]]:
    return list(first) + [(op.var, ctx.names[op.value] if op.value is not None else ctx.tensors[op.param or ""])
                          for op in loads]


def _python(name: str, doc: str, args: list[tuple[str, str]], prepare: list[str], call: list[str],
            returns: str) -> str:
    assert is_identifier(name), name  # a region name (`r3_gemm`), made by the partitioner
    lines = [f"def {name}({', '.join(a for a, _ in args)}):", py_docstring(doc, indent="    ")]
    lines += [f"    {line}" for line in prepare]
    lines.append(f"    call({py_str(name)}, dtype_code(ref), {', '.join(call)}, stream(ref))")
    lines.append(f"    return {returns},")
    return "\n".join(lines)


def elementwise(ctx: Context, region: Region, kp: KernelPlan, pre: list[str] | None = None,
                extra: list[tuple[str, str]] | None = None, first_loads: list[Operand] | None = None,
                first_body: list[str] | None = None, impl: str = "generated") -> tuple[str, str, str, Call]:
    loads = (first_loads or []) + kp.loads
    rank = kp.shape.rank
    sig = _Signature()
    _operands(sig, loads, kp.stores, rank)
    k = _Kernel(name=region.name, kernel_params=", ".join(sig.kernel), launcher_params=", ".join(sig.extern),
                call_args=", ".join(sig.call), loads=_loads(loads, rank),
                body=(first_body or []) + _body(kp.epilogue), stores=_stores(kp))
    cu = template(HERE, "elementwise.cu.j2").render(k=k, header=header(ctx, region, impl, "//"), dtypes=DTYPES)
    args = _launcher_args(ctx, extra or [], kp.loads)
    prepare = (pre or []) + _prepare(loads, kp.stores) + ["numel = math.prod(shape)"]
    py = _python(region.name, f"{region.name}: {' -> '.join(ctx.graph.nodes[i].op for i in region.nodes)}.",
                 args, prepare, sig.python + ["numel"], ", ".join(var(v) for v in kp.stores))
    signature = ", ".join(["I32"] + sig.ctypes + ["I64", "P"])
    return cu, py, signature, Call(region, args, kp.stores, impl)


def library_epilogue(ctx: Context, region: Region, kp: KernelPlan) -> tuple[str, str, str, Call]:
    """cuBLAS / cuDNN without the bias, then bias and epilogue in one generated kernel."""
    node = kp.anchor
    assert node is not None
    op = registry.get(node.op)
    call = op.torch_expr(op.make_attrs(node.attrs), ["x"], {"weight": "weight"}, [ctx.graph.values[node.inputs[0]]])
    extra = [("x", ctx.names[node.inputs[0]]), ("weight", ctx.tensors[node.params["weight"]])]
    lib = "cuBLAS" if node.op == "linear" else "cuDNN"
    first = [Operand(var="lib", value="")]  # the library's result, a tensor of the launcher
    body = [f"const float {kp.anchor_var} = lib;  // {node.op}"]
    if "bias" in node.params:
        rank = kp.shape.rank
        first.append(Operand(var="bias", param=node.params["bias"],
                             axes=(rank - 1, rank) if node.op == "linear" else (1, 2)))
        extra.append(("bias", ctx.tensors[node.params["bias"]]))
        body = [f"const float {kp.anchor_var} = lib + bias;  // {node.op} (its bias)"]
    return elementwise(ctx, region, kp, pre=[f"lib = {call}  # {py_comment(lib)}"], extra=extra, first_loads=first,
                       first_body=body, impl=f"library {node.op} ({lib}) + generated epilogue")


def rows(ctx: Context, region: Region, kp: KernelPlan) -> tuple[str, str, str, Call]:
    node = kp.anchor
    assert node is not None
    rank = kp.shape.rank
    axis = node.attrs.get("dim", -1) % rank if node.op != "rmsnorm" else rank - 1
    sig = _Signature()
    _operands(sig, kp.loads, kp.stores, rank)
    args = _launcher_args(ctx, [], kp.loads)
    scale = shift = ""
    prepare = _prepare(kp.loads, kp.stores)
    for role in ("weight", "bias"):
        if role in node.params:
            sig.pointer(f"row_{role}_ptr", f"row_{role}")
            args.append((f"row_{role}", ctx.tensors[node.params[role]]))
            prepare.append(f"row_{role} = row_{role}.to(ref.dtype).contiguous()")
            term = f"archc_load(row_{role}_ptr, col)"
            scale, shift = (f" * {term}", shift) if role == "weight" else (scale, f" + {term}")
    k = _Kernel(name=region.name, op=node.op, kernel_params=", ".join(sig.kernel),
                launcher_params=", ".join(sig.extern), call_args=", ".join(sig.call), strided=axis != rank - 1,
                loads=_loads(kp.loads, rank), prologue=_body(kp.prologue), row_in=var(node.inputs[0]),
                row_out=kp.anchor_var, scale=scale, shift=shift, body=_body(kp.epilogue), stores=_stores(kp))
    impl = "generated"
    cu = template(HERE, "rows.cu.j2").render(k=k, header=header(ctx, region, impl, "//"), dtypes=DTYPES)
    prepare += [f"N, inner = shape[{axis}], math.prod(shape[{axis} + 1:])", "rows = math.prod(shape) // max(N, 1)"]
    eps = py_float(node.attrs.get("eps", 0.0))
    py = _python(region.name, f"{region.name}: {' -> '.join(ctx.graph.nodes[i].op for i in region.nodes)}.",
                 args, prepare, sig.python + ["rows", "N", "inner", eps], ", ".join(var(v) for v in kp.stores))
    signature = ", ".join(["I32"] + sig.ctypes + ["I64", "I64", "I64", "F32", "P"])
    return cu, py, signature, Call(region, args, kp.stores, impl)


def plan_regions(graph: Graph) -> tuple[Context, dict[int, Call], list[tuple[str, str, str]]]:
    part = partition(graph)
    ctx = context(graph, part)
    calls: dict[int, Call] = {}
    texts: list[tuple[str, str, str]] = []
    for region in part.regions:
        if region.kind == "torch":
            continue
        if region.kind == "attention":
            region.kind, region.note = "torch", "library F.scaled_dot_product_attention (FlashAttention / cuDNN)"
            continue
        if region.kind in ("gemm", "conv") and len(region.nodes) == 1:
            lib = "F.linear (cuBLAS)" if region.kind == "gemm" else "F.conv2d (cuDNN)"
            region.kind, region.note = "torch", f"library {lib}: nothing to fuse"
            continue
        kp = plan(part, region, ctx.labels)
        make = {"elementwise": elementwise, "conv": library_epilogue, "gemm": library_epilogue, "rows": rows}
        cu, py, signature, call = make[region.kind](ctx, region, kp)
        texts.append((cu, py, f"{region.name}", ) + (signature,))  # type: ignore[arg-type]
        calls[region.index] = call
    return ctx, calls, texts  # type: ignore[return-value]


def explain_lines(graph: Graph) -> list[str]:
    ctx, calls, _ = plan_regions(graph)
    return explain(ctx, calls)


def package(graph: Graph) -> dict[str, str]:
    ctx, calls, texts = plan_regions(graph)
    source = source_text(ctx)
    cu = template(HERE, "kernels.cu.j2").render(title=c_comment(f"CUDA kernels for {ctx.cls}, generated by archc "
                                                                f"from {source}. Do not edit."),
                                                kernels=[t[0] for t in texts])
    doc = (f"Python launchers for the CUDA kernels of {ctx.cls} (kernels.cu), generated by archc from\n"
           f"{source}. Do not edit.\n\n"
           "Each launcher takes tensors, allocates the region's outputs, and calls the kernel's `extern \"C\"`\n"
           "launcher through ctypes with the tensors' data pointers, their sizes and the current CUDA\n"
           "stream. Library regions (cuBLAS matrix products, cuDNN convolutions) run through torch first.\n")
    launch = template(HERE, "launch.py.j2").render(module_doc=py_docstring(doc), launchers=[t[1] for t in texts],
                                                   signatures=[(py_str(t[2]), t[3]) for t in texts])
    files = {"__init__.py": init_py(ctx, "cuda"), "model.py": model_py(ctx, calls, "cuda", "CUDA", "cu"),
             "kernels.cu": cu, "kernels.py": launch, "build.py": (HERE / "build.py").read_text(),
             "torch_model.py": emit_python(graph)}
    # kernels.py looks the launchers up in the library by name: getattr(handle, name)
    verify_package(files, ("__init__.py", "model.py", "kernels.py"), extra=frozenset({"getattr"}))
    return files


__all__ = ["explain_lines", "package", "plan_regions"]
