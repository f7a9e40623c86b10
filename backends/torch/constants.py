"""Build-time constants (the `hoist_constants` pass's `@constant` nodes) as non-persistent buffers.

A class whose forward computes a `@constant` value gets, for each such value, a buffer registered
with `persistent=False` (not in the state_dict), a `reset_constants()` method that computes the
values from their ops' own spellings, and an `_apply` that runs it again after `.to()`, `.cuda()`
or `to_empty()`: the tables follow the module's device and keep the dtype the spec computes them
in. The forward reads the buffer. A constant is hoisted only where its whole computation runs in
this forward; elsewhere the forward computes it as written (the same values).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from archc.backends.quote import py_str
from archc.backends.torch.naming import RESERVED, Namer
from archc.backends.torch.spelling import expression, where
from archc.ir.graph import Graph
from archc.passes.editor import has_annotation
from archc.passes.hoist_constants import CONSTANT


@dataclass
class Hoist:
    """The constants one forward reads from buffers: `roots` (node -> buffer attribute), the nodes
    that compute them (`nodes`, graph order), which the forward leaves out."""

    roots: dict[int, str] = field(default_factory=dict)
    nodes: list[int] = field(default_factory=list)


def _closure(graph: Graph, root: int, constant: set[int], made_by: dict[str, int]) -> set[int]:
    """The root and the constant nodes it reads, transitively (a shape-only op's inputs are not read)."""
    out, todo = set(), [root]
    while todo:
        i = todo.pop()
        if i in out:
            continue
        out.add(i)
        todo += [made_by[v] for v in graph.nodes[i].inputs if made_by.get(v) in constant]
    return out


def plan_hoist(graph: Graph, constant: set[int], span: range, owned: Callable[[int], bool],
               keep: set[str], taken: set[str]) -> Hoist:
    """Which `@constant` nodes of `span` (a forward's nodes) this forward reads from buffers: those
    whose computation runs here entirely (`owned`), none of whose inner values anything else reads
    or the forward returns (`keep`). Buffer names avoid `taken`."""
    if not any(i in span and has_annotation(graph.nodes[i], CONSTANT) for i in constant):
        return Hoist()  # the usual case, found without a pass over the graph (this runs once per class)
    made_by = {v: i for i, n in enumerate(graph.nodes) for v in n.outputs}
    readers: dict[str, set[int]] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            readers.setdefault(v, set()).add(i)
    namer = Namer(taken)
    hoist = Hoist()
    chosen: set[int] = set()
    for i in span:
        node = graph.nodes[i]
        if i not in constant or not has_annotation(node, CONSTANT) or len(node.outputs) != 1:
            continue
        nodes = _closure(graph, i, constant, made_by)
        inner = [v for j in nodes - {i} for v in graph.nodes[j].outputs]
        if not all(j in span and owned(j) for j in nodes) or \
                any(v in keep or not readers.get(v, set()) <= nodes | constant for v in inner):
            continue
        hoist.roots[i] = namer.take("const_" + node.op)
        chosen |= nodes
    hoist.nodes = sorted(chosen)
    # an inner value that a node outside every hoisted computation reads cannot be left out
    outside = {v for j in span if j not in chosen for v in graph.nodes[j].inputs}
    if any(v in outside for j in chosen if j not in hoist.roots for v in graph.nodes[j].outputs):
        return Hoist()
    return hoist


def constant_methods(graph: Graph, hoist: Hoist, labels: dict[str, str]) -> tuple[list[str], list[str]]:
    """`__init__` lines (the buffers, then the call) and the lines of `reset_constants` and `_apply`
    (indented as the template's method bodies, after their `def` lines)."""
    first = next(iter(hoist.roots.values()))
    init = [f"self.register_buffer({py_str(a)}, torch.empty(0), persistent=False)" for a in hoist.roots.values()]
    init.append("self.reset_constants()")
    namer = Namer(RESERVED | {"device"})
    names: dict[str, str] = {}
    body = [f"device = self.{first}.device"]
    computed = {v for i in hoist.nodes for v in graph.nodes[i].outputs}
    for i in hoist.nodes:
        node = graph.nodes[i]
        for v in node.inputs:
            if v not in computed and v not in names:  # read for its device and sizes only
                sizes = ", ".join(str(s.value) if s.is_const else "1" for s in graph.values[v].sizes)
                names[v] = namer.take("like")
                body.append(f"{names[v]} = torch.empty((), device=device).expand({sizes})"
                            "  # stands for an input: only its device and fixed sizes are read")
        for v in node.outputs:
            names[v] = namer.take(node.op)
        ins = [names[v] for v in node.inputs]
        body.append(f"{names[node.outputs[0]]} = {expression(node, graph, ins, {})}{where(node.span, labels)}")
    body += [f"self.{a} = {names[graph.nodes[i].outputs[0]]}" for i, a in hoist.roots.items()]
    return init, body
