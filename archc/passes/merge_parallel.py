"""Merge parallel linear layers (and 1x1-style convolutions) that read the same input.

What it does: linear nodes that read the same value, have the same `bias` setting and own their
parameters become one linear with the features of all of them, followed by a `split` along the
feature axis -- separate Q, K and V projections become one QKV matmul. Convolutions with the
same input, geometry and bias setting and groups = 1 are merged the same way along channels.
The merged layer's scope is the members' common parent plus their names joined
(`attn.q_k_v`); its weight is the members' weights concatenated in order. Convolutions are left
apart where the split would cost more than the merge saves: each part is a strided view along
channels, which a convolution reading it first copies to dense memory, and a member's own
epilogue (an activation, a residual add: mark_epilogues) would no longer be a post-op of the
merged convolution (ResNet's downsample beside its first 1x1: a copy and a separate ReLU).
Assumes: nothing about the mode; the members carry no @no_fuse and share no parameters.
Guarantees: identical outputs (concatenation is exact); returns the weight transform.
Reference: the fused QKV projection of Megatron-LM (Shoeybi et al. 2019, §3) and of
torch.nn.MultiheadAttention's `in_proj_weight`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from archc.ir.graph import Graph, Node
from archc.ir.types import TensorType
from archc.passes.editor import Editor, has_annotation
from archc.passes.result import PassResult, StateDict
from archc.sizes import Size

if TYPE_CHECKING:
    from torch import Tensor

MERGEABLE = ("linear", "conv1d", "conv2d")


def _split_costs_copies(ed: Editor, at: int, node: Node) -> bool:
    """Would a convolution's part of a merged output be copied, or lose its epilogue?"""
    from archc.passes.mark_epilogues import epilogue

    if node.op == "linear":
        return False
    return bool(epilogue(ed, at, node)) or any(u.op in ("conv1d", "conv2d") for _, u in ed.users(node.outputs[0]))


def _key(at: int, node: Node, ed: Editor) -> tuple[object, ...] | None:
    if node.op not in MERGEABLE or has_annotation(node, "no_fuse") or has_annotation(node, "sparse") or \
            len(node.inputs) != 1:  # a sparse weight keeps its own mask
        return None
    if any(len(ed.param_users(p)) != 1 for p in node.params.values()):
        return None
    attrs = {k: v for k, v in node.attrs.items() if k not in ("features", "channels")}
    if node.op != "linear" and (attrs.get("groups") != 1 or _split_costs_copies(ed, at, node)):
        return None
    return (node.op, node.inputs[0], tuple(sorted((k, str(v)) for k, v in attrs.items())))


def _merged_scope(members: list[Node], ed: Editor) -> str:
    parts = [m.scope.rsplit(".", 1) if "." in m.scope else ["", m.scope] for m in members]
    parent = parts[0][0] if len({p[0] for p in parts}) == 1 else ""
    name = "_".join(p[1] or m.op for p, m in zip(parts, members))
    return ed.fresh_scope(f"{parent}.{name}" if parent else name)


def _merge(ed: Editor, indices: list[int], record: list[tuple[list[str], list[str | None], str, str | None]]) -> None:
    members = [ed.nodes[i] for i in indices]
    assert all(m is not None for m in members)
    first: Node = members[0]  # type: ignore[assignment]
    nodes: list[Node] = members  # type: ignore[assignment]
    size_attr = "features" if first.op == "linear" else "channels"
    axis = -1 if first.op == "linear" else 1
    sizes = [m.attrs[size_attr] for m in nodes]
    out_t: TensorType = ed.values[first.outputs[0]]
    rank = out_t.rank
    dim = axis % rank
    total = ed.fresh(out_t.with_shape([Size.of(sum(sizes)) if i == dim else s for i, s in enumerate(out_t.sizes)]))
    scope = _merged_scope(nodes, ed)
    params = {role: f"{scope}.{role}" for role in first.params}
    merged = Node(op=first.op, inputs=first.inputs, outputs=(total,), attrs={**first.attrs, size_attr: sum(sizes)},
                  params=params, scope=scope, span=first.span, annotations=first.annotations)
    split = Node(op="split", inputs=(total,), outputs=tuple(m.outputs[0] for m in nodes),
                 attrs={"sizes": sizes, "dim": axis}, scope=scope, span=first.span)
    for i in indices:
        ed.delete(i)
    ed.nodes[indices[0]] = merged
    ed.nodes.insert(indices[0] + 1, split)
    for role, name in params.items():
        ed.declare(name, merged, role)
    ed.add_scope(scope, merged)
    record.append(([m.params["weight"] for m in nodes], [m.params.get("bias") for m in nodes],
                   params["weight"], params.get("bias")))


def _transform(record: list[tuple[list[str], list[str | None], str, str | None]]):  # type: ignore[no-untyped-def]
    def apply(sd: StateDict) -> "dict[str, Tensor]":
        import torch

        out = dict(sd)
        for weights, biases, weight, bias in record:
            out[weight] = torch.cat([out[w] for w in weights])
            if bias is not None:
                out[bias] = torch.cat([out[b] for b in biases if b is not None])
            for name in weights + biases:
                if name is not None:
                    out.pop(name, None)
        return out
    return apply


def merge_parallel(graph: Graph) -> PassResult:
    ed = Editor(graph)
    record: list[tuple[list[str], list[str | None], str, str | None]] = []
    while True:
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, node in ed.live():
            key = _key(i, node, ed)
            if key is not None:
                groups.setdefault(key, []).append(i)
        batch = next((g for g in groups.values() if len(g) > 1), None)
        if batch is None:
            break
        _merge(ed, batch, record)
    return PassResult(ed.finish(), _transform(record) if record else None)
