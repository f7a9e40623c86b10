"""Structural re-parameterization by algebra: every subgraph that is linear between two
nonlinearities becomes one convolution or one linear layer.

What it does: finds maximal linear regions -- sets of affine nodes (conv, linear, BatchNorm in
eval, identity, dropout, average pooling with count_include_pad, sums and differences, scaling
by a scalar or by a per-channel parameter such as LayerScale, and the layout ops rearrange and
flatten) with one input and one output -- and replaces each by a single node with a new
parameter name (`<scope>.reparam_conv`, `<scope>.reparam_linear`). The equivalent kernel is
computed by pushing the weights through the kernel algebra of `archc.passes.affine`, which covers:

    RepVGG (Ding et al., CVPR 2021)               3x3 + 1x1 + identity, each with BatchNorm
    ACNet (Ding et al., ICCV 2019)                kxk + 1xk + kx1 (asymmetric kernels)
    Diverse Branch Block (Ding et al., CVPR 2021) 1x1 -> kxk sequences, avg-pool branches
    MobileOne (Vasu et al., CVPR 2023)            k over-parameterized branches, depthwise groups
    UniRepLKNet (Ding et al., CVPR 2024)          dilated depthwise branches -> one large kernel
    LayerScale (Touvron et al., ICCV 2021), consecutive linears, BatchNorm before a linear

A region that changes layout (RepMLP, Ding et al., CVPR 2022: a conv over fixed-size partitions
next to a fully-connected layer over the flattened partition) is read off as a dense matrix by
probing it with the identity (`archc.passes.probe`) and becomes one fully-connected layer,
grouped where the matrix is block-diagonal.

Assumes: eval mode (BatchNorm uses running statistics; dropout is the identity). A node marked
@no_fuse is never part of a region, nor is a sparse weight (@sparse: a sum of weights loses the pattern).
Guarantees: identical outputs in eval mode up to float rounding (kernels are computed in
float64, cast to float32); returns the weight transform. A region is merged only when the result
is exact -- a zero-padded conv after a biased or spatial one is not, so the region is cut there
(the bias-padding pitfall) -- and not more expensive in FLOPs than the convs and linears it
replaces (so a low-rank pair of linears stays factored); otherwise it is split at its convs and
each conv absorbs only the affine ops around it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from math import prod
from typing import TYPE_CHECKING, Mapping

from archc.ir.blocks import common_scope
from archc.ir.graph import Graph, Node
from archc.ir.types import TensorType
from archc.ops import registry
from archc.passes import affine
from archc.passes.editor import Editor, has_annotation, remake
from archc.passes.regions import (AFFINE_OPS, FLOP_OPS, MAX_DENSE, Consts, Cut, NeedsDense, NotAffine, Tier,
                                  batch_preserving, const_values, dense_groups, emit_attrs, eval_consts,
                                  implied_type, probe_matrix, random_weights, region_forms, tier_of)
from archc.passes.result import PassResult, StateDict
from archc.sizes import Size, SizeError

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class Plan:
    kind: str  # "conv", "linear" or "dense"
    region: tuple[Node, ...]
    input: str
    output: str
    tier: Tier | None
    new_nodes: tuple[Node, ...]
    weight: str
    bias: str | None
    groups: int = 1
    dense_in: int = 0
    dense_out: int = 0


@dataclass
class _Search:
    graph: Graph
    candidate: list[bool]
    heads: set[int] = field(default_factory=set)
    assigned: set[int] = field(default_factory=set)
    consts: set[str] = field(default_factory=set)  # values computed from parameters alone


# ---- search -----------------------------------------------------------------------------------------
def _flops(nodes: list[Node], types: Mapping[str, TensorType]) -> float:
    total = Size.of(0)
    for n in nodes:
        if n.op in FLOP_OPS:
            op = registry.get(n.op)
            total = total + op.flops(op.make_attrs(n.attrs), [types[v] for v in n.inputs],
                                     [types[v] for v in n.outputs])
    return _value(total)


def _value(size: Size) -> float:
    try:
        return float(size.subs({a: Size.of(64) for a in size.atoms()}).value)
    except SizeError:
        return float("inf")


def _grow(s: _Search, sink: int, users: dict[str, list[int]], producer: dict[str, int],
          outputs: set[str]) -> list[int]:
    nodes = s.graph.nodes
    region = {sink}
    heap = [-producer[v] for v in nodes[sink].inputs if v in producer]
    heapq.heapify(heap)
    while heap:
        p = -heapq.heappop(heap)
        if p in region or p in s.assigned or not s.candidate[p]:
            continue
        node = nodes[p]
        out = node.outputs[0]
        if out in outputs or not all(u in region for u in users[out]):
            continue
        if out not in s.consts and any(u in s.heads for u in users[out]):
            continue
        region.add(p)
        for v in node.inputs:
            if v in producer:
                heapq.heappush(heap, -producer[v])
    return sorted(region)


def _plan(s: _Search, ed: Editor, indices: list[int]) -> Plan | Cut | str:
    """A plan for the region, a cut to make, or why it stays as it is."""
    graph = s.graph
    nodes = [graph.nodes[i] for i in indices]
    produced = {v for n in nodes for v in n.outputs}
    inputs = {v for n in nodes for v in n.inputs if v not in produced and v not in s.consts}
    work = [n for n in nodes if n.outputs[0] not in s.consts]
    if len(inputs) != 1 or len(work) < 2:
        return "not a region"
    if not any(n.op in FLOP_OPS for n in work):
        return "no conv or linear to merge into"
    if sum(n.op in FLOP_OPS for n in work) == 1 and all(n.op in FLOP_OPS or n.op == "flatten" for n in work):
        return "one layer and a flatten: nothing to merge"
    (x,), y = tuple(inputs), nodes[-1].outputs[0]
    types = graph.values
    tier = tier_of(work, types[x])
    needs_dense: Cut | None = None
    if tier is not None:
        # stand-ins of the right shapes, on the CPU (a "meta" tensor's first use imports torch's
        # compiler, seconds, and each op on one costs milliseconds)
        meta = affine.stand_in((0,))

        def shape_only(name: str) -> "Tensor":
            return affine.stand_in(tuple(graph.params[name].shape))

        def const_shape(value: str) -> "Tensor":
            return affine.stand_in(tuple(d.value for d in types[value].sizes))

        try:
            f = region_forms(nodes, x, tier, shape_only, Consts(s.consts, const_shape), types, meta)
        except Cut as cut:
            if not isinstance(cut.reason, NeedsDense):
                return cut
            needs_dense = cut
        else:
            if implied_type(f, tier, types[x]) != types[y]:
                return Cut(len(nodes) - 1, affine.NotExact("output grid"))
            op_name, attrs = emit_attrs(f, tier)
            kind = "conv" if tier.layout == "cf" else "linear"
            new = _new_node(ed, work, op_name, attrs, x, y, kind)
            if _flops([new], {**types}) > _flops(work, types):
                return "merging would cost more FLOPs"
            return Plan(kind, tuple(nodes), x, y, tier, (new,), new.params["weight"], new.params.get("bias"),
                        f.groups)
    dense = _dense_plan(s, ed, nodes, work, x, y)
    if isinstance(dense, Plan):
        return dense
    return needs_dense if needs_dense is not None else dense


def _dense_plan(s: _Search, ed: Editor, nodes: list[Node], work: list[Node], x: str, y: str) -> Plan | str:
    graph, types = s.graph, s.graph.values
    xt, yt = types[x], types[y]
    if xt.rank < 2 or yt.rank < 2 or xt.sizes[0] != yt.sizes[0] or not batch_preserving(nodes, xt, types, s.consts):
        return "the region mixes the batch axis"
    try:
        nin, nout = prod(d.value for d in xt.sizes[1:]), prod(d.value for d in yt.sizes[1:])
    except SizeError:
        return "the region's sizes are not all known"
    if nin * nout > MAX_DENSE:
        return "the dense matrix would be too large"
    const_nodes = [n for n in graph.nodes if n.outputs and n.outputs[0] in s.consts]
    weights = random_weights(graph, nodes + const_nodes)
    consts = eval_consts(graph, s.consts, weights)
    M, b = probe_matrix(nodes, x, y, types, weights, Consts(s.consts, consts.__getitem__))
    groups = dense_groups(M)
    biased = bool((b != 0).any())
    scope = _common_scope(work)
    out_scope = f"{scope}.reparam_linear" if scope else "reparam_linear"  # made unique by _name
    new: list[Node] = []
    src_names = [f"a{i}" for i in range(xt.rank - 1)]
    dst_names = [f"c{i}" for i in range(yt.rank - 1)]
    unit = " 1 1" if groups > 1 else ""
    unit_axes: list[Size | int] = [1, 1] if groups > 1 else []
    flat_t = TensorType.of(xt.dtype, [xt.sizes[0], nin, *unit_axes])
    v = x
    if xt.rank != 2 or groups > 1:
        v = ed.fresh(flat_t)
        new.append(Node(op="rearrange", inputs=(x,), outputs=(v,), scope=scope, span=work[0].span,
                        attrs={"pattern": f"b {' '.join(src_names)} -> b ({' '.join(src_names)}){unit}"}))
    last = yt.rank == 2 and groups == 1
    mid = y if last else ed.fresh(TensorType.of(yt.dtype, [yt.sizes[0], nout, *unit_axes]))
    params = {r: f"{out_scope}.{r}" for r in ["weight"] + (["bias"] if biased else [])}
    if groups > 1:
        fc = Node(op="conv2d", inputs=(v,), outputs=(mid,), params=params, scope=out_scope, span=work[-1].span,
                  attrs={"channels": nout, "kernel": 1, "groups": groups, "bias": biased})
    else:
        fc = Node(op="linear", inputs=(v,), outputs=(mid,), attrs={"features": nout, "bias": biased},
                  params=params, scope=out_scope, span=work[-1].span)
    new.append(fc)
    if not last:
        sizes = {n: d.value for n, d in zip(dst_names, yt.sizes[1:])}
        new.append(Node(op="rearrange", inputs=(mid,), outputs=(y,), scope=scope, span=work[-1].span,
                        attrs={"pattern": f"b ({' '.join(dst_names)}){unit} -> b {' '.join(dst_names)}",
                               "sizes": sizes}))
    if _flops([fc], {**types, **ed.values}) > _flops(work, types):
        return "a dense layer would cost more FLOPs"
    return Plan("dense", tuple(nodes), x, y, None, tuple(new), fc.params["weight"], fc.params.get("bias"),
                groups, nin, nout)


def _common_scope(nodes: list[Node]) -> str:
    return common_scope([n.scope for n in nodes])


def _new_node(ed: Editor, work: list[Node], op: str, attrs: dict[str, object], x: str, y: str, kind: str) -> Node:
    scope = _common_scope(work)
    name = f"reparam_{'conv' if kind == 'conv' else 'linear'}"
    scope = f"{scope}.{name}" if scope else name  # made unique by _name
    roles = ["weight"] + (["bias"] if attrs["bias"] else [])
    return Node(op=op, inputs=(x,), outputs=(y,), attrs=attrs, scope=scope, span=work[-1].span,
                params={r: f"{scope}.{r}" for r in roles})


def _same_ops(old: list[Node], new: tuple[Node, ...]) -> bool:
    return len(old) == len(new) and all(a.op == b.op and a.attrs == b.attrs for a, b in zip(old, new))


def find_plans(graph: Graph, ed: Editor) -> list[Plan]:
    nodes = graph.nodes
    consts = const_values(graph)
    candidate = [(n.op in AFFINE_OPS or n.outputs[0] in consts) and len(n.outputs) == 1
                 and not has_annotation(n, "no_fuse") and not has_annotation(n, "sparse") for n in nodes]
    s = _Search(graph, candidate, consts=consts)
    users: dict[str, list[int]] = {v: [] for v in graph.values}
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for v in n.inputs:
            users[v].append(i)
        for v in n.outputs:
            producer[v] = i
    outputs = {p.value for p in graph.outputs}
    plans: list[Plan] = []
    for sink in range(len(nodes) - 1, -1, -1):
        if not candidate[sink] or sink in s.assigned or nodes[sink].outputs[0] in consts:
            continue
        split_at_convs = False
        for _ in range(len(nodes) + 2):
            region = _grow(s, sink, users, producer, outputs)
            result = _plan(s, ed, region)
            if isinstance(result, Plan) and _same_ops([nodes[i] for i in region if nodes[i].outputs[0] not in consts],
                                                       result.new_nodes):
                s.assigned.update(region)  # already in its merged form: a second run changes nothing
                break
            if isinstance(result, Plan):
                plans.append(result)
                s.assigned.update(region)
                break
            if isinstance(result, Cut):
                index = region[result.position]
                if isinstance(result.reason, NotAffine):  # not linear at all: never in a region
                    candidate[index] = False
                    if index == sink:
                        break
                    continue
                before = len(s.heads)
                if isinstance(result.reason, NeedsDense):  # leave the node out: the region starts after it
                    s.heads.update(u for u in users[nodes[index].outputs[0]] if u in region)
                else:  # the node cannot absorb what comes before it: the region starts at it
                    s.heads.add(index)
                if len(s.heads) == before:
                    break
                continue
            if result == "merging would cost more FLOPs" and not split_at_convs:
                split_at_convs = True
                s.heads.update(i for i in region if nodes[i].op in FLOP_OPS)
                continue
            break
    return _name(sorted(plans, key=lambda p: graph.nodes.index(p.region[-1])), ed)


def _name(plans: list[Plan], ed: Editor) -> list[Plan]:
    """Give each new layer a scope no one uses (in graph order) and declare its parameters."""
    out = []
    for plan in plans:
        nodes = list(plan.new_nodes)
        k, layer = next((i, n) for i, n in enumerate(nodes) if n.params)
        scope = ed.fresh_scope(layer.scope)
        layer = remake(layer, scope=scope, params={role: f"{scope}.{role}" for role in layer.params})
        nodes[k] = layer
        ed.add_scope(scope, layer)
        for role, name in layer.params.items():
            ed.declare(name, layer, role)
        out.append(replace(plan, new_nodes=tuple(nodes), weight=layer.params["weight"],
                           bias=layer.params.get("bias")))
    return out


# ---- the pass ---------------------------------------------------------------------------------------
def _apply(graph: Graph, ed: Editor, plans: list[Plan]) -> Graph:
    removed: dict[int, Plan | None] = {}
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    for plan in plans:
        for n in plan.region:
            removed[index[id(n)]] = None
        removed[index[id(plan.region[-1])]] = plan
    out: list[Node | None] = []
    for i, n in enumerate(graph.nodes):
        if i not in removed:
            out.append(n)
            continue
        sink = removed[i]
        if sink is not None:
            out.extend(sink.new_nodes)
    ed.nodes = out  # type: ignore[assignment]
    return ed.finish()


class _Float64(dict):  # type: ignore[type-arg]
    """A state_dict read as float64 on the CPU, converting each tensor once."""

    def __init__(self, sd: StateDict) -> None:
        super().__init__()
        self.sd = sd

    def __missing__(self, name: str) -> "Tensor":
        import torch

        t = self.sd[name].detach().to("cpu")
        self[name] = value = t.to(torch.float64) if t.is_floating_point() else t
        return value


def _transform(graph: Graph, plans: list[Plan]):  # type: ignore[no-untyped-def]
    consts = const_values(graph)

    def apply(sd: StateDict) -> "dict[str, Tensor]":
        import torch

        out = dict(sd)
        weights = _Float64(sd)
        evaluated: list[dict[str, Tensor]] = []

        def const(value: str) -> "Tensor":
            if not evaluated:
                evaluated.append(eval_consts(graph, consts, weights))
            return evaluated[0][value]

        env = Consts(consts, const)
        for plan in plans:
            dtype = next((sd[n].dtype for node in plan.region for n in node.params.values()
                          if sd[n].is_floating_point()), torch.float32)
            if plan.kind == "dense":
                M, b = probe_matrix(list(plan.region), plan.input, plan.output, graph.values, weights, env)
                if plan.groups > 1:
                    g = plan.groups
                    blocks = M.reshape(g, plan.dense_out // g, g, plan.dense_in // g)
                    M = torch.stack([blocks[j, :, j, :] for j in range(g)]).reshape(plan.dense_out, -1, 1, 1)
                kernel, bias = M, b
            else:
                assert plan.tier is not None
                f = region_forms(list(plan.region), plan.input, plan.tier, weights.__getitem__, env, graph.values,
                                 torch.empty(0, dtype=torch.float64))
                kernel, bias = f.K, f.b
            out[plan.weight] = kernel.to(dtype).contiguous()
            if plan.bias is not None:
                out[plan.bias] = bias.to(dtype).contiguous()
        merged = {id(m) for p in plans for m in p.region}
        still = {n for node in graph.nodes if id(node) not in merged for n in node.params.values()}
        for name in {n for p in plans for node in p.region for n in node.params.values()} - still:
            out.pop(name, None)
        return out
    return apply


def reparam(graph: Graph) -> PassResult:
    ed = Editor(graph)
    plans = find_plans(graph, ed)
    if not plans:
        return PassResult(graph)
    return PassResult(_apply(graph, ed, plans), _transform(graph, plans))
