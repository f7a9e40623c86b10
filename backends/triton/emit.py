"""The Triton target: a self-contained Python package with one `@triton.jit` kernel per region.

    OUT/__init__.py      exports the model class
    OUT/model.py         the model: the torch target's class with a kernel-launching `forward`
    OUT/kernels.py       the kernels (from elementwise.j2, gemm.j2, rows.j2, attention.j2) and launchers
    OUT/runtime.py       launch helpers and the autotune cache (a copy of backends/triton/runtime.py)
    OUT/torch_model.py   the torch target's file: module tree, parameters, reference forward

What runs each region (docs/kernels.md says why):

    gemm with an epilogue    generated: Triton GEMM, the epilogue on the tile in registers (autotuned)
    gemm alone (+ bias)      library: F.linear (cuBLAS)
    conv                     library: F.conv2d (cuDNN) without bias, then a generated epilogue kernel
    rows                     generated (autotuned block size)
    attention                generated: FlashAttention-style kernel
    elementwise              generated
"""

from __future__ import annotations

from pathlib import Path

from archc.backends.kernels import expr
from archc.backends.kernels.module import (Call, Context, context, explain, header, init_py, model_py, source_text,
                                           template, verify_package)
from archc.backends.kernels.partition import Region, partition
from archc.backends.kernels.plan import KernelPlan, Operand, plan, prepare_operands, var
from archc.backends.quote import py_comment, py_docstring, py_float
from archc.backends.torch.emit import emit_python, expression
from archc.ir.graph import Graph
from archc.ops import registry

HERE = Path(__file__).parent


class _Kernel(dict):  # type: ignore[type-arg]
    """The text pieces a template lays out (attribute access for jinja)."""

    __getattr__ = dict.__getitem__


# -- operands -----------------------------------------------------------------------------------------
def _offset(op: Operand, rank: int, gemm: bool) -> tuple[str, str]:
    """(offset expression, mask) of an operand's element for the element(s) at `offs`."""
    if op.scalar:
        return "", ""
    if op.axes is None or op.gather:
        return "offs", "mask"
    a, b = op.axes
    if gemm and (a, b) == (rank - 1, rank):
        return "rn[None, :]", "rn[None, :] < N"
    if b == rank:
        return f"offs % {op.var}_size", "mask"
    return f"(offs // {op.var}_inner) % {op.var}_size", "mask"


def _load_line(op: Operand, rank: int, gemm: bool = False) -> str:
    off, mask = _offset(op, rank, gemm)
    if not off:
        return f"{op.var} = tl.load({op.var}_ptr).to(tl.float32)"
    return f"{op.var} = tl.load({op.var}_ptr + {off}, mask={mask}, other=0.0).to(tl.float32)"


def _kernel_args(loads: list[Operand], stores: list[str], rank: int, gemm: bool = False) -> tuple[str, str]:
    """Kernel parameters and the launcher's arguments for them, in the same order."""
    params, args = [], []
    for op in loads:
        params.append(op.arg)
        args.append(op.var)
        if op.axes is not None and not op.scalar and not op.gather:
            a, b = op.axes
            if not (gemm and (a, b) == (rank - 1, rank)):
                if b != rank:
                    params.append(f"{op.var}_inner")
                    args.append(f"{op.var}_inner")
                params.append(f"{op.var}_size")
                args.append(f"{op.var}_size")
    for v in stores:
        params.append(f"{var(v)}_ptr")
        args.append(var(v))
    return ", ".join(params), ", ".join(args)


def _prepare(loads: list[Operand], stores: list[str], shape_line: str, ref: str) -> list[str]:
    return [shape_line] + prepare_operands(loads, stores, ref, "rt.bcast", cast=False)


def _shape_line(loads: list[Operand]) -> tuple[str, str]:
    """How the launcher finds the region's shape, and a tensor whose device and dtype it takes."""
    values = [op for op in loads if op.value is not None]
    full = next((op for op in values if op.axes is None and not op.gather), None)
    if full is not None:
        return f"shape = {full.var}.shape", full.var
    return f"shape = torch.broadcast_shapes({', '.join(op.var + '.shape' for op in values)})", values[0].var


def _body(kp: KernelPlan, stmts: list, dialect: expr.Dialect = expr.TRITON) -> list[str]:
    return [f"{s.var} = {s.code(dialect)}  # {py_comment(s.where)} {py_comment(s.node.op)}".rstrip() for s in stmts]


def _stores(kp: KernelPlan, offs: str = "offs", mask: str = "mask") -> list[str]:
    return [f"tl.store({var(v)}_ptr + {offs}, {var(v)}.to({var(v)}_ptr.dtype.element_ty), mask={mask})"
            for v in kp.stores]


def _launcher_args(ctx: Context, first: list[tuple[str, str]], loads: list[Operand]) -> list[tuple[str, str]]:
    args = list(first)
    for op in loads:
        args.append((op.var, ctx.names[op.value] if op.value is not None else ctx.tensors[op.param or ""]))
    return args


def _doc(ctx: Context, region: Region) -> str:
    """A launcher's docstring, as its first `prepare` line (the template indents the first line)."""
    return py_docstring(f"{region.name}: {' -> '.join(ctx.graph.nodes[i].op for i in region.nodes)}.",
                        indent="    ").lstrip(" ")


# -- one function per region kind ---------------------------------------------------------------------
def elementwise(ctx: Context, region: Region, kp: KernelPlan, pre: list[str] | None = None,
                extra: list[tuple[str, str]] | None = None, first_loads: list[Operand] | None = None,
                first_body: list[str] | None = None, impl: str = "generated") -> tuple[str, Call]:
    loads = (first_loads or []) + kp.loads
    rank = kp.shape.rank
    shape_line, ref = _shape_line(loads)
    kargs, cargs = _kernel_args(loads, kp.stores, rank)
    args = _launcher_args(ctx, extra or [], kp.loads)
    k = _Kernel(name=region.name, kernel_args=kargs, call_args=cargs,
                launcher_args=", ".join(a for a, _ in args),
                loads=[_load_line(op, rank) for op in loads],
                body=(first_body or []) + _body(kp, kp.epilogue),
                stores=_stores(kp),
                prepare=[_doc(ctx, region)] + (pre or []) + _prepare(loads, kp.stores, shape_line, ref),
                returns=", ".join(var(v) for v in kp.stores) + ",")
    text = template(HERE, "elementwise.j2").render(k=k, header=header(ctx, region, impl))
    return text, Call(region, args, kp.stores, impl)


def conv(ctx: Context, region: Region, kp: KernelPlan) -> tuple[str, Call]:
    """cuDNN's convolution without its bias, then the bias and the epilogue in one kernel."""
    node = kp.anchor
    assert node is not None
    op = registry.get(node.op)
    call = op.torch_expr(op.make_attrs(node.attrs), ["x"], {"weight": "weight"}, [ctx.graph.values[node.inputs[0]]])
    extra = [("x", ctx.names[node.inputs[0]]), ("weight", ctx.tensors[node.params["weight"]])]
    first = [Operand(var="conv", value="")]  # the library's result, a tensor of the launcher
    body = [f"{kp.anchor_var} = conv  # {node.op}"]
    if "bias" in node.params:
        first.append(Operand(var="bias", param=node.params["bias"], axes=(1, 2)))
        extra.append(("bias", ctx.tensors[node.params["bias"]]))
        body = [f"{kp.anchor_var} = conv + bias  # {node.op} (its bias)"]
    return elementwise(ctx, region, kp, pre=[f"conv = {call}  # cuDNN"], extra=extra, first_loads=first,
                       first_body=body, impl=f"library {node.op} (cuDNN) + generated epilogue")


def gemm(ctx: Context, region: Region, kp: KernelPlan) -> tuple[str, Call]:
    node = kp.anchor
    assert node is not None
    rank = kp.shape.rank
    extra = [("x", ctx.names[node.inputs[0]]), ("weight", ctx.tensors[node.params["weight"]])]
    loads = list(kp.loads)
    body = [f"{kp.anchor_var} = acc"]
    if "bias" in node.params:
        bias = Operand(var="bias", param=node.params["bias"], axes=(rank - 1, rank))
        loads.insert(0, bias)
        extra.append(("bias", ctx.tensors[node.params["bias"]]))
        body = [f"{kp.anchor_var} = acc + bias"]
    kargs, cargs = _kernel_args(loads, kp.stores, rank, gemm=True)
    args = _launcher_args(ctx, extra, kp.loads)
    pre = [_doc(ctx, region), "shape = (*x.shape[:-1], weight.shape[0])", "x2 = x.reshape(-1, x.shape[-1])"]
    prepare = pre + _prepare(loads, kp.stores, "", "x")[1:]
    k = _Kernel(name=region.name, kernel_args=kargs, call_args=cargs,
                launcher_args=", ".join(a for a, _ in args),
                loads=[_load_line(op, rank, gemm=True) for op in loads],
                body=body + _body(kp, kp.epilogue), stores=_stores(kp), prepare=prepare,
                returns=", ".join(var(v) for v in kp.stores) + ",")
    impl = "generated Triton GEMM + epilogue (autotuned)"
    return template(HERE, "gemm.j2").render(k=k, header=header(ctx, region, impl)), Call(region, args, kp.stores, impl)


def rows(ctx: Context, region: Region, kp: KernelPlan) -> tuple[str, Call]:
    node = kp.anchor
    assert node is not None
    rank = kp.shape.rank
    axis = node.attrs.get("dim", -1) % rank if node.op != "rmsnorm" else rank - 1
    loads = list(kp.loads)
    shape_line, ref = _shape_line(loads)
    kargs, cargs = _kernel_args(loads, kp.stores, rank)
    args = _launcher_args(ctx, [], kp.loads)
    scale = shift = ""
    for role in ("weight", "bias"):
        if role in node.params:
            kargs += f", row_{role}_ptr"
            cargs += f", row_{role}"
            args.append((f"row_{role}", ctx.tensors[node.params[role]]))
            term = f"tl.load(row_{role}_ptr + cols, mask=mask, other=0.0).to(tl.float32)"
            if role == "weight":
                scale = f" * {term}"
            else:
                shift = f" + {term}"
    k = _Kernel(name=region.name, kernel_args=kargs, call_args=cargs, op=node.op,
                launcher_args=", ".join(a for a, _ in args), strided=axis != rank - 1, axis=axis,
                loads=[_load_line(op, rank) for op in loads], prologue=_body(kp, kp.prologue),
                row_in=var(node.inputs[0]), row_out=kp.anchor_var, scale=scale, shift=shift,
                eps=py_float(node.attrs.get("eps", 0.0)), dtype_of=ref,
                body=_body(kp, kp.epilogue), stores=_stores(kp),
                prepare=[_doc(ctx, region)] + _prepare(loads, kp.stores, shape_line, ref)
                + [f"{role} = {role}.contiguous()" for role in ("row_weight", "row_bias")
                   if any(a == role for a, _ in args)],
                returns=", ".join(var(v) for v in kp.stores) + ",")
    impl = "generated (autotuned block size)"
    return template(HERE, "rows.j2").render(k=k, header=header(ctx, region, impl)), Call(region, args, kp.stores, impl)


def attention(ctx: Context, region: Region, kp: KernelPlan) -> tuple[str, Call]:
    node = kp.anchor
    assert node is not None
    scale = node.attrs.get("scale")
    k = _Kernel(name=region.name, causal=bool(node.attrs.get("causal")),
                scale=py_float(scale) if scale is not None else "D ** -0.5",
                doc=py_docstring(f"{region.name}: attention (causal={bool(node.attrs.get('causal'))}).",
                                 indent="    "))
    args = [(n, ctx.names[v]) for n, v in zip(("q", "k", "v"), node.inputs)]
    impl = "generated FlashAttention-style kernel"
    text = template(HERE, "attention.j2").render(k=k, header=header(ctx, region, impl))
    return text, Call(region, args, [node.outputs[0]], impl)


# -- the package --------------------------------------------------------------------------------------
def plan_regions(graph: Graph) -> tuple[Context, dict[int, Call], list[str]]:
    """The regions, how each runs, and the kernel texts."""
    part = partition(graph)
    ctx = context(graph, part)
    calls: dict[int, Call] = {}
    texts: list[str] = []
    for region in part.regions:
        if region.kind == "torch":
            continue
        kp = plan(part, region, ctx.labels)
        if region.kind == "gemm" and len(region.nodes) == 1:
            region.note = "library F.linear (cuBLAS): a plain matrix product"
            region.kind = "torch"
            continue
        if region.kind == "conv" and len(region.nodes) == 1:
            region.note = "library F.conv2d (cuDNN): nothing to fuse"
            region.kind = "torch"
            continue
        make = {"elementwise": elementwise, "conv": conv, "gemm": gemm, "rows": rows, "attention": attention}
        text, call = make[region.kind](ctx, region, kp)
        texts.append(text)
        calls[region.index] = call
    return ctx, calls, texts


def explain_lines(graph: Graph) -> list[str]:
    ctx, calls, _ = plan_regions(graph)
    return explain(ctx, calls)


def package(graph: Graph) -> dict[str, str]:
    """The files of the package: name -> text."""
    ctx, calls, texts = plan_regions(graph)
    doc = (f"Triton kernels for {ctx.cls}, generated by archc from {source_text(ctx)}. Do not edit.\n\n"
           "One `@triton.jit` kernel per region of the model, each with its launcher (a plain function of\n"
           "tensors that returns the region's outputs). Every element is computed in fp32 and stored in the\n"
           "output's dtype (fp32, fp16 or bf16); loads are masked, so any size works.\n")
    kernels = template(HERE, "kernels.py.j2").render(module_doc=py_docstring(doc), kernels=texts)
    files = {"__init__.py": init_py(ctx, "triton"), "model.py": model_py(ctx, calls, "triton", "Triton", "py"),
             "kernels.py": kernels, "runtime.py": (HERE / "runtime.py").read_text(),
             "torch_model.py": emit_python(graph)}
    verify_package(files, ("__init__.py", "model.py", "kernels.py"))
    return files


__all__ = ["explain_lines", "expression", "package", "plan_regions"]
