"""Mark linear + bias + activation epilogues for the kernel backends.

What it does: where a linear or convolution (its bias included) feeds exactly one elementwise
activation -- an op of the registry with an `elementwise` expression, one input, no parameters
and no `linear` flag (relu, gelu, silu, sigmoid, tanh, ...) -- both nodes get the annotation
`@fused("epilogue", group=N)`: a kernel backend computes the activation in the matmul's
epilogue instead of writing the pre-activation to memory. N numbers the groups in graph order;
the first node of a group is the matmul, the rest is its epilogue.
Assumes: nothing about the mode. Nodes marked @no_fuse, or already in a fused group, are skipped.
Guarantees: only annotations change: the same computation, the same weights.
Reference: epilogue fusion as in CUTLASS (Kerr et al. 2017, "epilogue" functors) and cuBLASLt's
`CUBLASLT_EPILOGUE_RELU_BIAS` / `GELU_BIAS`.
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


def mark_epilogues(graph: Graph) -> PassResult:
    ed = Editor(graph)
    used = [g for _, n in ed.live() if (g := _group(n)) is not None]
    group = max(used, default=0)
    for i, node in ed.live():
        if node.op not in ANCHORS or has_annotation(node, "no_fuse") or has_annotation(node, "fused"):
            continue
        users = ed.users(node.outputs[0])
        if len(users) != 1 or ed.is_output(node.outputs[0]):
            continue
        j, act = users[0]
        if not is_activation(act) or has_annotation(act, "no_fuse") or has_annotation(act, "fused"):
            continue
        group += 1
        mark = AnnotationIR(name="fused", args=("epilogue",), kwargs={"group": group})
        ed.nodes[i] = remake(node, annotations=node.annotations + (mark,))
        ed.nodes[j] = remake(act, annotations=act.annotations + (mark,))
    return PassResult(ed.finish())
