"""Constant folding and algebraic simplification.

What is constant in this IR: the scalar operands of arithmetic (`mul(x, other=2.0)`) and the
structural attributes of ops; tensors are inputs or learned parameters, never literals. So
constant folding here means removing ops that compute the identity and combining scalar chains.

What it does: applies the table below until nothing matches, with the one shared rewrite
driver (`archc.passes.rewrite`).
Assumes: nothing about the mode: every rule holds in training as well as in eval (dropout with
p > 0 is removed only by `strip_dropout`, an eval-mode pass).
Guarantees: the same outputs up to float rounding (combining `(x + a) + b` into `x + (a + b)`
reassociates: at most one rounding step of difference); weights untouched; each rule keeps the
value's type, so a rule whose input and output types differ does not fire.
Reference: peephole optimization (McKeeman, "Peephole optimization", CACM 1965); the rule table
follows tinygrad's symbolic rewriter.
"""

from __future__ import annotations

from archc.ir.graph import Graph, Node
from archc.ops.einpattern import parse_arrow, parse_side
from archc.passes.editor import Editor, remake
from archc.passes.result import PassResult
from archc.passes.rewrite import Rule, rewrite


def _forward(index: int, node: Node, ed: Editor) -> bool:
    """Replace the node by its first input, when that keeps the type."""
    x = node.inputs[0]
    if len(node.outputs) != 1 or ed.values[x] != ed.values[node.outputs[0]] or not ed.values[x].is_float:
        return False
    ed.forward(index, x)
    return True


def _when(test):  # type: ignore[no-untyped-def]
    def apply(index: int, node: Node, ed: Editor) -> bool:
        return test(node, ed) and _forward(index, node, ed)
    return apply


def _scalar(node: Node, value: float) -> bool:
    return len(node.inputs) == 1 and node.attrs.get("other") == value


def _plain_scalar(node: Node, value: float) -> bool:
    return _scalar(node, value) and not node.attrs.get("swap")


def _same_pattern(node: Node, ed: Editor) -> bool:
    left, right = parse_arrow(node.attrs["pattern"], "rearrange")
    return parse_side(left, "rearrange") == parse_side(right, "rearrange")


def _one_axis(node: Node, ed: Editor) -> bool:
    rank = ed.values[node.inputs[0]].rank
    return rank > 0 and node.attrs["start"] % rank == node.attrs["end"] % rank


def _full_slice(node: Node, ed: Editor) -> bool:
    return node.attrs["start"] == 0 and node.attrs["end"] is None


def _one_part(index: int, node: Node, ed: Editor) -> bool:
    """split/chunk/concat with a single part: the part is the whole tensor."""
    if len(node.inputs) != 1 or len(node.outputs) != 1:
        return False
    return _forward(index, node, ed)


def _sub_to_add(index: int, node: Node, ed: Editor) -> bool:
    if len(node.inputs) != 1 or node.attrs.get("swap") or node.attrs.get("other") in (None, 0.0):
        return False
    ed.nodes[index] = remake(node, op="add", attrs={"other": -node.attrs["other"]})
    return True


def _combine(combine):  # type: ignore[no-untyped-def]
    """(x op a) op b -> x op (a combine b), when the inner result has no other use."""
    def apply(index: int, node: Node, ed: Editor) -> bool:
        if len(node.inputs) != 1 or node.attrs.get("other") is None or node.attrs.get("swap"):
            return False
        found = ed.producer(node.inputs[0])
        if found is None:
            return False
        inner_index, inner = found
        if (inner.op != node.op or len(inner.inputs) != 1 or inner.attrs.get("swap")
                or inner.attrs.get("other") is None or inner.annotations != node.annotations
                or len(ed.users(inner.outputs[0])) != 1 or ed.is_output(inner.outputs[0])):
            return False
        other = combine(inner.attrs["other"], node.attrs["other"])
        ed.nodes[index] = remake(node, inputs=inner.inputs, attrs={**node.attrs, "other": other})
        ed.delete(inner_index)
        return True
    return apply


RULES: tuple[Rule, ...] = (
    #    op           algebra                                   rewrite
    Rule("identity",  "identity(x) -> x",                       _when(lambda n, ed: True)),
    Rule("dropout",   "dropout(x, p=0) -> x",                   _when(lambda n, ed: n.attrs["p"] == 0.0)),
    Rule("drop_path", "drop_path(x, p=0) -> x",                 _when(lambda n, ed: n.attrs["p"] == 0.0)),
    Rule("mul",       "x * 1 -> x",                             _when(lambda n, ed: _scalar(n, 1.0))),
    Rule("div",       "x / 1 -> x",                             _when(lambda n, ed: _plain_scalar(n, 1.0))),
    Rule("add",       "x + 0 -> x",                             _when(lambda n, ed: _scalar(n, 0.0))),
    Rule("sub",       "x - 0 -> x",                             _when(lambda n, ed: _plain_scalar(n, 0.0))),
    Rule("sub",       "x - c -> x + (-c)",                      _sub_to_add),
    Rule("add",       "(x + a) + b -> x + (a + b)",             _combine(lambda a, b: a + b)),
    Rule("mul",       "(x * a) * b -> x * (a * b)",             _combine(lambda a, b: a * b)),
    Rule("rearrange", "rearrange(x, 'p -> p') -> x",            _when(_same_pattern)),
    Rule("flatten",   "flatten(x, i, i) -> x",                  _when(_one_axis)),
    Rule("slice",     "x[0:] -> x",                             _when(_full_slice)),
    Rule("split",     "split(x, [n]) -> x",                     _one_part),
    Rule("chunk",     "chunk(x, 1) -> x",                       _one_part),
    Rule("concat",    "concat(x) -> x",                         _one_part),
)


def fold_constants(graph: Graph) -> PassResult:
    return PassResult(rewrite(graph, RULES))
