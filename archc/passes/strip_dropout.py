"""Remove dropout and drop-path for evaluation.

What it does: deletes every `dropout` and `drop_path` node, whatever its probability; users read
its input.
Assumes: the model runs in eval mode (these ops are the identity there). Only for -O2 and
deployment, like the other eval-mode passes.
Guarantees: identical outputs in eval mode; no weight changes.
References: dropout (Srivastava et al., JMLR 2014) and stochastic depth (Huang et al., ECCV 2016)
are both the identity at inference.
"""

from __future__ import annotations

from archc.ir.graph import Graph, Node
from archc.passes.editor import Editor
from archc.passes.result import PassResult
from archc.passes.rewrite import Rule, rewrite


def _drop(index: int, node: Node, ed: Editor) -> bool:
    ed.forward(index, node.inputs[0])
    return True


RULES = (
    Rule("dropout",   "dropout(x, p) -> x      (eval)", _drop, respects_no_fuse=False),
    Rule("drop_path", "drop_path(x, p) -> x    (eval)", _drop, respects_no_fuse=False),
)


def strip_dropout(graph: Graph) -> PassResult:
    return PassResult(rewrite(graph, RULES))
