"""Fuse PoolFormer's token mixer with its norm, LayerScale and residual into one op.

What it does: the chain

    n = groupnorm(x); p = avgpool2d(n, k, 1, (k-1)/2, count_include_pad=false)
    y = x + (p - n) * s            (s one value per channel: LayerScale's [C, 1, 1])

becomes one `pool_mixer_residual(x, s)` node holding the groupnorm's weight and bias under their
own names (the state_dict keeps its keys). The torch backend runs it as the normalization's
statistics, one pooling of x and one lerp (backends/torch/fused.py), where the chain makes five
passes over the tensor: a pooling that leaves the padding out of the average maps the
per-channel affine n = a x + b to a pool(x) + b, so p - n = a (pool(x) - x).
Assumes: nothing about the mode (groupnorm has none). Each intermediate (n, p, p - n, the
product) is read only by the chain and is no output; no node of it is @no_fuse or in a fused
group; `add` and `mul` may take their operands in either order, `sub` only as p - n.
Guarantees: the same function up to float rounding; no weight changes.
Reference: Yu et al., "MetaFormer is actually what you need for vision", CVPR 2022 (PoolFormer's
token mixer `pool(x) - x` and its block); the fusion is the elementwise fusion Inductor's
freezing path does for it on CPU (Ansel et al., "PyTorch 2", ASPLOS 2024).
"""

from __future__ import annotations

from archc.ir.graph import Graph, Node
from archc.ops import registry
from archc.ops.registry import OpError
from archc.passes.editor import Editor, has_annotation, remake
from archc.passes.result import PassResult
from archc.passes.rewrite import Rule, rewrite


def _chained(ed: Editor, value: str, op: str, readers: int = 1) -> tuple[int, Node] | None:
    """The node of op `op` that makes `value`, when `readers` nodes read it and it is no output."""
    found = ed.producer(value)
    if found is None or found[1].op != op or ed.is_output(value) or len(ed.users(value)) != readers:
        return None
    node = found[1]
    if has_annotation(node, "no_fuse") or has_annotation(node, "fused") or node.attrs.get("other") is not None:
        return None
    return found


def _pooling(pool: Node) -> tuple[object, object] | None:
    """(kernel, padding) of a stride-1 average pooling that keeps the size and leaves out the padding."""
    a = registry.get("avgpool2d").make_attrs(pool.attrs)
    stride = a.stride if a.stride is not None else a.kernel
    if a.count_include_pad or a.ceil_mode or stride not in (1, (1, 1)):
        return None
    return a.kernel, a.padding


def _match(ed: Editor, add: Node, x: str, branch: str) -> tuple[list[int], Node] | None:
    """The chain y = x + (avgpool(n) - n) * s, n = groupnorm(x), as (its nodes, the fused node)."""
    mul = _chained(ed, branch, "mul")
    if mul is None or len(mul[1].inputs) != 2:
        return None
    for d, s in (mul[1].inputs, mul[1].inputs[::-1]):
        sub = _chained(ed, d, "sub")
        if sub is None or len(sub[1].inputs) != 2 or sub[1].attrs.get("swap"):
            continue
        p, n = sub[1].inputs
        pool, norm = _chained(ed, p, "avgpool2d"), _chained(ed, n, "groupnorm", readers=2)
        if pool is None or norm is None or pool[1].inputs[0] != n or norm[1].inputs[0] != x:
            continue
        geometry = _pooling(pool[1])
        if geometry is None:
            continue
        attrs = {**norm[1].attrs, "kernel": geometry[0], "padding": geometry[1]}
        try:
            fused = remake(add, op="pool_mixer_residual", inputs=(x, s), attrs=attrs, params=dict(norm[1].params),
                           scope=norm[1].scope)  # the norm's instance, which owns the weights
            out = registry.get(fused.op).infer(registry.get(fused.op).make_attrs(fused.attrs),
                                               [ed.values[x], ed.values[s]])
        except (OpError, ValueError):
            continue  # a scale that is not one value per channel, a pooling that changes the size
        if out != [ed.values[add.outputs[0]]]:
            continue
        return [norm[0], pool[0], sub[0], mul[0]], fused
    return None


def _fuse(index: int, add: Node, ed: Editor) -> bool:
    if len(add.inputs) != 2 or add.attrs.get("other") is not None or has_annotation(add, "fused"):
        return False
    for x, branch in (add.inputs, add.inputs[::-1]):
        found = _match(ed, add, x, branch)
        if found is not None:
            for i in found[0]:
                ed.delete(i)
            ed.nodes[index] = found[1]
            if found[1].scope in ed.scopes:
                ed.add_scope(found[1].scope, found[1])  # the instance is now this op's
            return True
    return False


RULES = (
    Rule("add", "x + (avgpool(groupnorm(x)) - groupnorm(x)) * s -> pool_mixer_residual(x, s)", _fuse),
)


def fuse_pool_mixer(graph: Graph) -> PassResult:
    return PassResult(rewrite(graph, RULES))
