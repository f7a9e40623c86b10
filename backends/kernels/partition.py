"""Cut an IR graph into regions; each region becomes one generated kernel (or one library call).

Regions, as kernel engineers fuse by hand (and as torch.compile's inductor schedules):

    gemm         linear, then the elementwise ops that follow it (bias, activation, residual add, scale)
    conv         conv2d / conv1d, then the elementwise ops that follow (bias, eval BatchNorm, ReLU, add)
    rows         layernorm / rmsnorm / softmax over one axis, with the elementwise ops before it
                 (the residual add) and after it
    attention    scaled dot-product attention
    elementwise  a chain of elementwise ops over one shape
    torch        anything else (embedding, pooling, views, concat), spelled as the torch target spells it

The partitioner walks the nodes in order and keeps a schedule of regions. An elementwise node
joins the region that produced one of its inputs when its shape is that region's shape and all of
its other inputs are computed by that region or by one scheduled before it: the schedule stays a
topological order, so no region waits on a later one. A row op turns a pure elementwise region
that produces its input into a `rows` region (its prologue). A torch node goes right after the
regions that compute its inputs, so parameters and views are ready before the kernels that read
them. Nodes annotated `@no_fuse` get a region of their own.

An op is elementwise when the registry gives it a scalar expression (`Op.elementwise`) that the
translator can print; BatchNorm in eval mode is the one extra: a per-channel affine map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from archc.backends.kernels import expr
from archc.ir.graph import Graph, Node
from archc.ir.sparsity import MASK
from archc.ir.types import TensorType
from archc.ops import registry

ROW_OPS = frozenset({"layernorm", "rmsnorm", "softmax"})
CONV_OPS = frozenset({"conv2d", "conv1d"})
FUSING_KINDS = frozenset({"gemm", "conv", "rows", "elementwise"})  # regions that take an epilogue
KERNEL_DTYPES = frozenset({"f32", "f16", "bf16"})


@dataclass
class Region:
    index: int
    kind: str  # gemm | conv | rows | attention | elementwise | torch
    nodes: list[int]  # node indices, in graph order
    anchor: int | None = None  # the linear / conv / row op / attention node
    sealed: bool = False  # @no_fuse: nothing joins
    note: str = ""  # why a node runs as torch

    @property
    def name(self) -> str:
        return f"r{self.index}_{self.kind}"


@dataclass
class Partition:
    graph: Graph
    regions: list[Region]
    where: dict[str, Region] = field(default_factory=dict)  # value -> region computing it

    def outputs(self, region: Region) -> list[str]:
        """Values a region computes that something outside it reads (or the graph returns)."""
        inside = set(region.nodes)
        graph_outs = {p.value for p in self.graph.outputs}
        users = self.graph.users()
        index = {id(n): i for i, n in enumerate(self.graph.nodes)}
        out = []
        for i in region.nodes:
            for v in self.graph.nodes[i].outputs:
                if v in graph_outs or any(index[id(u)] not in inside for u in users.get(v, [])):
                    out.append(v)
        return out

    def inputs(self, region: Region) -> list[str]:
        """Values a region reads that it does not compute, in first-use order."""
        made = {v for i in region.nodes for v in self.graph.nodes[i].outputs}
        seen: dict[str, None] = {}
        for i in region.nodes:
            for v in self.graph.nodes[i].inputs:
                if v not in made:
                    seen.setdefault(v)
        return list(seen)


# -- what each node is ------------------------------------------------------------------------------
def elementwise_text(node: Node, graph: Graph) -> str | None:
    """The scalar expression of an elementwise node (eval-mode BatchNorm included), or None."""
    if node.op == "batchnorm":
        text = "(x - running_mean) * rsqrt(running_var + eps)"
        if "weight" in node.params:
            text = f"({text}) * weight"
        if "bias" in node.params:
            text = f"{text} + bias"
        return text
    return registry.get(node.op).elementwise


def is_identity(node: Node, graph: Graph) -> bool:
    """Identity, dropout and drop_path: `x` in eval mode, so no kernel is needed."""
    return elementwise_text(node, graph) == "x" and len(node.inputs) == 1


def elementwise_reason(node: Node, graph: Graph) -> str | None:
    """None when `node` can run inside a generated elementwise kernel; else why not."""
    text = elementwise_text(node, graph)
    if text is None:
        return "not elementwise"
    types = [graph.values[v] for v in node.inputs + node.outputs]
    if any(t.dtype not in KERNEL_DTYPES for t in types):
        return f"dtype {', '.join(sorted({t.dtype for t in types} - KERNEL_DTYPES))} has no kernel"
    variables = {n: n for n in ("x", "y")} | {role: role for role in node.params}
    try:
        expr.translate(text, variables, node.attrs, expr.TRITON)
    except expr.ExprError as err:
        return str(err)
    return None


def attention_reason(node: Node, graph: Graph) -> str | None:
    q = graph.values[node.inputs[0]]
    if q.dtype not in KERNEL_DTYPES:
        return f"dtype {q.dtype} has no kernel"
    if any(graph.values[v].rank not in (3, 4) for v in node.inputs):
        return "q, k, v of rank 3 or 4 only ([B, T, d] or [B, H, T, d])"
    if graph.values[node.inputs[1]].sizes[:-2] != q.sizes[:-2]:
        return "grouped-query attention (k, v with fewer heads than q)"
    return None


def rows_reason(node: Node, graph: Graph) -> str | None:
    t = graph.values[node.inputs[0]]
    if t.dtype not in KERNEL_DTYPES:
        return f"dtype {t.dtype} has no kernel"
    return None


def classify(node: Node, graph: Graph) -> tuple[str, str]:
    """(kind, note): the region kind a node starts or joins, and why it is `torch` when it is."""
    if MASK in node.params:  # the kernels read a weight as it is; a sparse one is weight * weight_mask
        return "torch", f"{node.op}: a sparse weight (@sparse) runs as torch"
    if node.op == "linear":
        bad = [t.dtype for v in node.inputs if (t := graph.values[v]).dtype not in KERNEL_DTYPES]
        return ("gemm", "") if not bad else ("torch", f"linear on {bad[0]}: no kernel")
    if node.op in CONV_OPS:
        return "conv", ""
    if node.op in ROW_OPS:
        reason = rows_reason(node, graph)
        return ("rows", "") if reason is None else ("torch", reason)
    if node.op == "attention":
        reason = attention_reason(node, graph)
        return ("attention", "") if reason is None else ("torch", reason)
    if is_identity(node, graph):
        return "identity", ""
    reason = elementwise_reason(node, graph)
    if reason is None:
        return "elementwise", ""
    if reason == "not elementwise":
        return "torch", f"{node.op}: no kernel template (runs as torch)"
    return "torch", f"{node.op}: {reason}"


def _no_fuse(node: Node) -> bool:
    return any(a.name == "no_fuse" for a in node.annotations)


def _same_shape(a: TensorType, b: TensorType) -> bool:
    return a.sizes == b.sizes


# -- the partitioner --------------------------------------------------------------------------------
def partition(graph: Graph) -> Partition:
    """The regions of `graph`, in an order that runs them correctly (see the module docstring)."""
    schedule: list[Region] = []
    where: dict[str, Region] = {}
    shape_of: dict[int, TensorType] = {}  # id(region) -> the shape its elementwise work iterates over

    def position(region: Region | None) -> int:
        return -1 if region is None else schedule.index(region)

    def add(region: Region, at: int | None = None) -> Region:
        schedule.insert(len(schedule) if at is None else at, region)
        return region

    def join(region: Region, i: int, node: Node) -> None:
        region.nodes.append(i)
        for v in node.outputs:
            where[v] = region

    for i, node in enumerate(graph.nodes):
        kind, note = classify(node, graph)
        out_type = graph.values[node.outputs[0]] if node.outputs else None
        sealed = _no_fuse(node)
        if kind in ("elementwise", "identity") and not sealed:
            target = _epilogue_target(node, where, schedule, shape_of, out_type)
            if target is not None:
                join(target, i, node)
                continue
        if kind == "rows" and not sealed:
            producer = where.get(node.inputs[0])
            if (producer is not None and producer.kind == "elementwise" and not producer.sealed
                    and _same_shape(shape_of[id(producer)], graph.values[node.inputs[0]])):
                producer.kind, producer.anchor = "rows", i
                join(producer, i, node)
                continue
        if kind == "identity":  # an alias that no kernel could take: `y = x`
            kind, note = "torch", "identity in eval mode (an alias, no kernel)"
        region = Region(index=0, kind=kind, nodes=[], sealed=sealed, note=note,
                        anchor=i if kind in ("gemm", "conv", "rows", "attention") else None)
        if kind == "torch":  # as early as its inputs allow
            at = max((position(where.get(v)) for v in node.inputs), default=-1) + 1
            add(region, at)
        else:
            add(region)
            if out_type is not None:
                shape_of[id(region)] = out_type
        join(region, i, node)
    for k, region in enumerate(schedule):
        region.index = k
    return Partition(graph=graph, regions=schedule, where=where)


def _epilogue_target(node: Node, where: dict[str, Region], schedule: list[Region],
                     shape_of: dict[int, TensorType], out_type: TensorType | None) -> Region | None:
    """The region an elementwise node can join: the latest-scheduled producer of one of its inputs
    whose shape is the node's, such that every other input is ready before that region runs; else
    the last region, when the node's shape is its shape and its inputs are ready (side by side)."""
    producers = [where[v] for v in node.inputs if v in where]
    candidates = sorted({id(r): r for r in producers}.values(), key=schedule.index, reverse=True)
    if schedule and schedule[-1] not in candidates:  # side by side: work over the same shape, ready inputs
        candidates.append(schedule[-1])
    for region in candidates:
        if region.kind not in FUSING_KINDS or region.sealed or out_type is None:
            continue
        if not _same_shape(shape_of[id(region)], out_type):
            continue
        pos = schedule.index(region)
        if all(v not in where or where[v] is region or schedule.index(where[v]) < pos for v in node.inputs):
            return region
    return None


__all__ = ["CONV_OPS", "Partition", "ROW_OPS", "Region", "classify", "elementwise_text", "partition"]
