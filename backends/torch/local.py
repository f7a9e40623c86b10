"""Rearranges that read the size of an axis from their input instead of writing it down.

Under tensor parallelism a rank holds `heads / tp` of attention's heads (archc/analysis/parallel.py
says which axes a rank holds only part of: `local_axes`). The same generated module then runs
whole and split if those axes' sizes come from the tensor at run time, as torchtitan sets
`n_heads` per rank:

    c_attn.reshape(c_attn.shape[0], c_attn.shape[1], 3, c_attn.shape[2] // 48, 16)   # h heads
    attention.permute(0, 2, 1, 3).reshape(attention.shape[0], attention.shape[2], attention.shape[1] * 16)

The op's own spelling does it (`Rearrange.torch_expr` reads every axis whose size is not a
constant from the input): the input type is given a symbolic size for each such axis.
"""

from __future__ import annotations

from archc.ir.graph import Graph, Node
from archc.ir.types import Dim, TensorType
from archc.ops import registry
from archc.ops.einpattern import expand_ellipsis, parse_arrow, parse_side
from archc.sizes import parse_size


def local_expression(node: Node, graph: Graph, inputs: list[str], params: dict[str, str],
                     local: frozenset[str]) -> str:
    """The rearrange `node` as a torch expression whose axes in `local` are read from its input."""
    op = registry.get(node.op)
    attrs = op.make_attrs(node.attrs)
    t = graph.values[node.inputs[0]]
    left = expand_ellipsis(parse_side(parse_arrow(attrs.pattern, node.op)[0], node.op), t.rank, node.op,
                           attrs.pattern)
    known = {k: v for k, v in attrs.sizes.items() if k not in local}
    dims = list(t.shape)
    for k, group in enumerate(left.groups):
        names = [n for n in group if n in local]
        if not names:
            continue
        others = [n for n in group if n not in local]
        for n in others:  # the other factors of a split group are given, so that only the local one is solved
            if n not in known:
                known[n] = _factor(graph, node, n)
        const = 1
        for n in others:
            const *= known[n]
        dims[k] = Dim(size=parse_size(f"{const}*_local{k}"), name=dims[k].name)
    typed = TensorType(dtype=t.dtype, shape=tuple(dims))
    return op.torch_expr(attrs.model_copy(update={"sizes": known}), inputs, params, [typed, *[
        graph.values[v] for v in node.inputs[1:]]])


def _factor(graph: Graph, node: Node, name: str) -> int:
    """The size of axis `name` of the rearrange, from its output type."""
    right_text = parse_arrow(node.attrs["pattern"], node.op)[1]
    out = graph.values[node.outputs[0]]
    right = parse_side(right_text, node.op)
    for group, dim in zip(right.groups, out.shape):
        if group == (name,):
            return int(dim.size.value)
    raise ValueError(f"axis '{name}' of '{node.attrs['pattern']}' is not an output axis of its own")
