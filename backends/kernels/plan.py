"""What one region's kernel reads, computes and writes: the part both code generators share.

A `KernelPlan` lists the tensors a kernel loads (`Operand`: a value or a parameter, and how it
broadcasts over the region's shape), one statement per elementwise node (`Stmt`, printed by each
target through `expr.translate`), and the values it stores. Operands broadcast the way numpy does;
the kernel reads element `(i // inner) % size` of an operand whose non-unit axes are one run
`[a, b)` of the region's axes (`inner` = product of the axes after the run, `size` = of the run):

    full        every axis            offs
    bcast(a, b) a run of axes         (offs // inner) % size        bias [N] on [M, N]: offs % N
    scalar      none                  0
    gather      anything else         the launcher expands and copies it first (then full)

BatchNorm's statistics are per channel (axis 1), not numpy-aligned: `param_axes` says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from archc.backends.kernels import expr
from archc.backends.kernels.partition import Partition, Region, elementwise_text
from archc.backends.quote import is_identifier
from archc.ir.graph import Graph, Node
from archc.ir.types import TensorType
from archc.sizes import Size


@dataclass
class Operand:
    var: str  # the kernel variable holding the loaded element (`v4`, `bias0`)
    value: str | None = None  # the IR value it loads, or
    param: str | None = None  # the parameter it loads
    axes: tuple[int, int] | None = None  # None: full; (a, b): broadcast run; (a, a): scalar
    gather: bool = False

    @property
    def arg(self) -> str:
        return f"{self.var}_ptr"

    @property
    def scalar(self) -> bool:
        return self.axes is not None and self.axes[0] == self.axes[1]


@dataclass
class Stmt:
    node: Node
    index: int
    var: str
    text: str  # the scalar expression from the registry
    variables: dict[str, str]  # expression name -> kernel variable
    where: str  # `file:line` of the spec: spec text, quoted by each target (py_comment, c_comment)

    def code(self, dialect: expr.Dialect) -> str:
        return expr.translate(self.text, self.variables, self.node.attrs, dialect)


@dataclass
class KernelPlan:
    region: Region
    shape: TensorType  # what the elementwise work iterates over
    anchor: Node | None
    loads: list[Operand] = field(default_factory=list)  # elementwise operands (not the anchor's own)
    prologue: list[Stmt] = field(default_factory=list)  # before the anchor (rows)
    epilogue: list[Stmt] = field(default_factory=list)  # after the anchor
    stores: list[str] = field(default_factory=list)  # values written out
    inputs: list[str] = field(default_factory=list)  # values the region reads
    anchor_var: str = ""  # the anchor's result as a kernel variable

    @property
    def name(self) -> str:
        return self.region.name


def var(value: str) -> str:
    """The kernel variable of an IR value: `v12` for `%12`. A value id is text from the IR file, so
    any other id is spelled in hex (`vx6162`): always an ASCII identifier, one per id."""
    if re.fullmatch(r"%[0-9]+", value):
        return "v" + value[1:]
    return "vx" + value.encode("utf-8", "surrogatepass").hex()


def param_axes(node: Node, role: str, graph: Graph, shape: TensorType) -> tuple[int, int]:
    """The run of the region's axes a parameter varies along."""
    p = graph.params[node.params[role]]
    if node.op == "batchnorm":
        return (1, 2) if p.numel > 1 else (1, 1)
    return _run(TensorType.of("f32", [Size.of(s) for s in p.shape]), shape) or (0, 0)


def _run(t: TensorType, shape: TensorType) -> tuple[int, int] | None:
    """The axes of `shape` that `t` varies along, when they are one run; None otherwise."""
    r, k = shape.rank, t.rank
    varying = [r - k + j for j, s in enumerate(t.sizes) if s != Size.of(1)]
    if not varying:
        return (0, 0)
    a, b = varying[0], varying[-1] + 1
    if varying != list(range(a, b)) or any(t.sizes[i - (r - k)] != shape.sizes[i] for i in varying):
        return None
    return a, b


def value_operand(value: str, graph: Graph, shape: TensorType) -> Operand:
    t = graph.values[value]
    run = _run(t, shape)
    if run == (0, shape.rank):
        return Operand(var=var(value), value=value)
    if run is None:
        return Operand(var=var(value), value=value, gather=True)
    return Operand(var=var(value), value=value, axes=run)


def _spec_line(node: Node, labels: dict[str, str]) -> str:
    if node.span is None:
        return ""
    return f"{labels.get(node.span.file, node.span.file)}:{node.span.line}"


def plan(part: Partition, region: Region, labels: dict[str, str]) -> KernelPlan:
    """The plan of a generated region (any kind but `torch`)."""
    graph = part.graph
    anchor = graph.nodes[region.anchor] if region.anchor is not None else None
    first = graph.nodes[region.nodes[0]]
    shape = graph.values[anchor.outputs[0] if anchor is not None else first.outputs[0]]
    if anchor is not None and anchor.op in ("layernorm", "rmsnorm", "softmax"):
        shape = graph.values[anchor.inputs[0]]
    kp = KernelPlan(region=region, shape=shape, anchor=anchor, inputs=part.inputs(region),
                    stores=part.outputs(region))
    if anchor is not None:
        kp.anchor_var = var(anchor.outputs[0])
    made: set[str] = set()
    loaded: dict[str, Operand] = {}
    counter = [0]
    after = False
    for i in region.nodes:
        node = graph.nodes[i]
        if i == region.anchor:
            made.update(node.outputs)
            after = True
            if node.op in ("layernorm", "rmsnorm", "softmax") and node.inputs[0] not in made:
                loaded[node.inputs[0]] = value_operand(node.inputs[0], graph, shape)
                kp.loads.append(loaded[node.inputs[0]])
            continue
        variables: dict[str, str] = {}
        for name, v in zip(("x", "y"), node.inputs):
            if v not in made and v not in loaded:
                loaded[v] = value_operand(v, graph, shape)
                kp.loads.append(loaded[v])
            variables[name] = var(v)
        text = elementwise_text(node, graph)
        assert text is not None
        used = expr.names(text)
        for role in node.params:
            if role not in used:  # BatchNorm's num_batches_tracked
                continue
            base = role if is_identifier(role) else "p"  # a role is IR text too
            op = Operand(var=f"{base}{counter[0]}", param=node.params[role],
                         axes=param_axes(node, role, graph, shape))
            counter[0] += 1
            kp.loads.append(op)
            variables[role] = op.var
        text = _bind_scalar_operand(node, text)
        stmt = Stmt(node=node, index=i, var=var(node.outputs[0]), text=text, variables=variables,
                    where=_spec_line(node, labels))
        (kp.epilogue if after or anchor is None else kp.prologue).append(stmt)
        made.update(node.outputs)
    return kp


def _bind_scalar_operand(node: Node, text: str) -> str:
    """Binary ops with a scalar `other` (and `swap`): rename so `y` reads the constant."""
    attrs = node.attrs
    if "other" not in attrs or attrs.get("other") is None:
        return text
    # x op y with y = other; swapped: other op x
    left, right = ("other", "x") if attrs.get("swap") else ("x", "other")
    placeholder = {"x": "__L__", "y": "__R__"}
    out = re.sub(r"\b(x|y)\b", lambda m: placeholder[m.group(1)], text)
    return out.replace("__L__", left).replace("__R__", right)


__all__ = ["KernelPlan", "Operand", "Stmt", "plan", "var"]


def prepare_operands(loads: list[Operand], stores: list[str], ref: str, bcast: str, cast: bool) -> list[str]:
    """The Python lines before a kernel launch: operands made contiguous (and broadcast where the
    kernel gathers), their broadcast strides, and the empty outputs. `cast` converts each operand
    to the reference dtype first (the CUDA kernels take one dtype); `bcast` is the helper's name."""
    to = ".to(ref.dtype)" if cast else ""
    lines = []
    for op in loads:
        if op.gather:
            lines.append(f"{op.var} = {op.var}{to}.expand(shape).contiguous()")
            continue
        lines.append(f"{op.var} = {op.var}{to}.contiguous()")
        if op.axes is not None and not op.scalar:
            lines.append(f"{op.var}_inner, {op.var}_size = {bcast}(shape, {op.axes[0]}, {op.axes[1]})")
    for v in stores:
        lines.append(f"{var(v)} = torch.empty(shape, device={ref}.device, dtype={ref}.dtype)")
    return lines
