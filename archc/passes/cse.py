"""Common-subexpression elimination.

What it does: where two nodes apply the same op, with the same attributes, to the same inputs,
with the same parameters (the same names: tied weights) and the same annotations, the second is
removed and its users read the first one's outputs.
Assumes: ops are pure functions of inputs, attributes and parameters, except the stochastic ones
(dropout, drop-path and attention with dropout > 0 draw fresh randomness per call in training),
which are never merged.
Guarantees: the same outputs in train and eval mode; no weight changes (parameters are only
ever shared, never copied).
Reference: global value numbering (Alpern, Wegman & Zadeck, "Detecting equality of variables in
programs", POPL 1988), here on an SSA graph without control flow, so hashing suffices.
"""

from __future__ import annotations

import json

from archc.ir.graph import Graph, Node
from archc.passes.editor import Editor
from archc.passes.result import PassResult


def _stochastic(node: Node) -> bool:
    return node.op in ("dropout", "drop_path", "attention") and bool(node.attrs.get("p") or node.attrs.get("dropout"))


def _key(node: Node) -> str:
    return json.dumps([node.op, node.inputs, node.attrs, sorted(node.params.items()), len(node.outputs),
                       [a.model_dump(mode="json") for a in node.annotations]], sort_keys=True)


def cse(graph: Graph) -> PassResult:
    ed = Editor(graph)
    seen: dict[str, Node] = {}
    for index in range(len(ed.nodes)):
        node = ed.nodes[index]  # re-read: an earlier merge may have renamed its inputs
        assert node is not None
        if _stochastic(node):
            continue
        key = _key(node)
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        ed.delete(index)
        for old, new in zip(node.outputs, first.outputs):
            ed.replace_uses(old, new)
    return PassResult(ed.finish())
