"""Dead-code elimination.

What it does: removes every node none of whose outputs reaches a model output, then drops the
parameters no remaining node uses (and the values and scopes nothing refers to any more).
Assumes: ops have no side effects (true of every op in the registry; dropout's randomness is
not an effect anyone can observe once its output is unused).
Guarantees: the model outputs are computed exactly as before; weights are untouched except that
the keys of dropped parameters disappear.
Reference: the classic liveness-based DCE (Aho, Lam, Sethi & Ullman, "Compilers", 2nd ed. §8.5).
"""

from __future__ import annotations

from archc.ir.graph import Graph
from archc.passes.editor import Editor
from archc.passes.result import PassResult


def dce(graph: Graph) -> PassResult:
    ed = Editor(graph)
    live = {p.value for p in graph.outputs}
    for index in range(len(ed.nodes) - 1, -1, -1):
        node = ed.nodes[index]
        assert node is not None
        if any(v in live for v in node.outputs):
            live.update(node.inputs)
        else:
            ed.delete(index)
    return PassResult(ed.finish())
