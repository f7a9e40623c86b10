"""Mark linear + bias + activation epilogues (and a convolution's residual add) for the backends.

What it does: where a linear or convolution (its bias included) feeds exactly one elementwise
activation -- an op of the registry with an `elementwise` expression, one input, no parameters
and no `linear` flag (relu, gelu, silu, sigmoid, tanh, ...) -- both nodes get the annotation
`@fused("epilogue", group=N)`: a backend computes the activation in the matmul's epilogue
instead of writing the pre-activation to memory. A 2-d convolution's epilogue may also begin
with an `add` of a tensor of the output's own type (a residual: conv + add, conv + add + relu),
and a 2-d convolution or a linear with no epilogue is a group of its own (the CPU backend still
packs its weight: oneDNN channels-last for a convolution, MKL's packed GEMM for a linear). N
numbers the groups in graph order; the first node of a group is the matmul, the rest is its
epilogue, in order.
Assumes: nothing about the mode. Nodes marked @no_fuse, or already in a fused group, are skipped.
Guarantees: only annotations change: the same computation, the same weights.
Reference: epilogue fusion as in CUTLASS (Kerr et al. 2017, "epilogue" functors) and cuBLASLt's
`CUBLASLT_EPILOGUE_RELU_BIAS` / `GELU_BIAS`; convolution post-ops (sum, eltwise) as in oneDNN's
"Primitive Attributes: Post-ops", which torch.compile's freezing path emits on CPU.
"""

from __future__ import annotations

from archc.ir.graph import AnnotationIR, Graph, Node
from archc.ops import registry
from archc.passes.editor import Editor, has_annotation, remake
from archc.passes.result import PassResult

ANCHORS = ("linear", "conv1d", "conv2d")


def is_activation(node: Node) -> bool:
    op = registry.get(node.op)
    if op.elementwise is None or op.linear or op.inputs != ("x",):
        return False
    return not op.params(op.make_attrs(node.attrs), [])


def _group(node: Node) -> int | None:
    for a in node.annotations:
        if a.name == "fused" and "group" in a.kwargs:
            return int(a.kwargs["group"])
    return None


def _free(node: Node) -> bool:
    return not has_annotation(node, "no_fuse") and not has_annotation(node, "fused")


def _only_user(ed: Editor, value: str) -> tuple[int, Node] | None:
    """The one node that reads `value`, when exactly one does and the value is not an output."""
    users = ed.users(value)
    if len(users) != 1 or ed.is_output(value) or not _free(users[0][1]):
        return None
    return users[0]


def _residual(ed: Editor, at: int, anchor: Node, found: tuple[int, Node]) -> bool:
    """Is this user of a 2-d convolution an add of a tensor of the convolution's own type, made
    before it (of two convolutions that meet in an add, the later one takes the add)?"""
    _, add = found
    if anchor.op != "conv2d" or add.op != "add" or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
        return False
    other = add.inputs[1] if add.inputs[0] == anchor.outputs[0] else add.inputs[0]
    made = ed.producer(other)
    if made is not None and made[0] > at:
        return False
    types = [ed.values[v] for v in (other, anchor.outputs[0], add.outputs[0])]
    return all(t.dtype == types[0].dtype and t.sizes == types[0].sizes for t in types)


def epilogue(ed: Editor, at: int, anchor: Node) -> list[int]:
    """The nodes of `anchor`'s epilogue, in order: [add] [activation], possibly none."""
    members: list[int] = []
    value = anchor.outputs[0]
    found = _only_user(ed, value)
    if found is not None and _residual(ed, at, anchor, found):
        members.append(found[0])
        value = found[1].outputs[0]
        found = _only_user(ed, value)
    if found is not None and is_activation(found[1]):
        members.append(found[0])
    return members


def mark_epilogues(graph: Graph) -> PassResult:
    ed = Editor(graph)
    used = [g for _, n in ed.live() if (g := _group(n)) is not None]
    group = max(used, default=0)
    for i, node in ed.live():
        if node.op not in ANCHORS or not _free(node):
            continue
        members = epilogue(ed, i, node)
        if not members and node.op == "conv1d":
            continue
        group += 1
        mark = AnnotationIR(name="fused", args=("epilogue",), kwargs={"group": group})
        for j in [i, *members]:
            ed.nodes[j] = remake(ed.nodes[j], annotations=ed.nodes[j].annotations + (mark,))
    return PassResult(ed.finish())
