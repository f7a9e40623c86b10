"""The IR verifier: a graph is valid when every value is defined once before use, every node's
attributes, output types and parameters agree with its op's rules, and the outputs exist.
Runs after every pass in the tests."""

from __future__ import annotations

from archc.ir.blocks import block_calls
from archc.ir.graph import Graph
from archc.ops import registry
from archc.ops.registry import OpError
from archc.sizes import SizeError


class VerifyError(Exception):
    """The IR is malformed: a bug in a pass or a hand-edited IR file, not a spec mistake."""


def verify(graph: Graph) -> Graph:
    defined = {p.value for p in graph.inputs}
    for p in graph.inputs:
        if graph.values.get(p.value) != p.type:
            raise VerifyError(f"input '{p.name}' has type {p.type} but its value says {graph.values.get(p.value)}")
    used_params: set[str] = set()
    for i, node in enumerate(graph.nodes):
        where = f"node {i} ({node.op} at scope '{node.scope}')"
        for v in node.inputs:
            if v not in defined:
                raise VerifyError(f"{where}: input {v} is used before it is defined")
        op = registry.get(node.op)
        try:
            attrs = op.make_attrs(node.attrs)
            types = [graph.values[v] for v in node.inputs]
            outs = op.infer(attrs, types)
            specs = op.params(attrs, types)
        except (OpError, SizeError, KeyError) as e:
            raise VerifyError(f"{where}: {e}") from None
        if len(outs) != len(node.outputs):
            raise VerifyError(f"{where}: {len(node.outputs)} outputs, the op makes {len(outs)}")
        for v, t in zip(node.outputs, outs):
            if v in defined:
                raise VerifyError(f"{where}: value {v} is defined twice")
            if graph.values.get(v) != t:
                raise VerifyError(f"{where}: output {v} is typed {graph.values.get(v)}, the op infers {t}")
            defined.add(v)
        if set(specs) != set(node.params):
            raise VerifyError(f"{where}: uses parameters {sorted(node.params)}, the op owns {sorted(specs)}")
        for role, name in node.params.items():
            decl = graph.params.get(name)
            if decl is None or decl.shape != specs[role].shape:
                raise VerifyError(f"{where}: parameter '{name}' is {decl and list(decl.shape)}, "
                                  f"the op needs {list(specs[role].shape)}")
            used_params.add(name)
    for p in graph.outputs:
        if p.value not in defined:
            raise VerifyError(f"output '{p.name}' ({p.value}) is never defined")
    unused = set(graph.params) - used_params
    if unused:
        raise VerifyError(f"parameters no node uses: {sorted(unused)[:5]}")
    found = block_calls(graph)
    for path, info in graph.scopes.items():
        if (info.calls, info.key) != found.get(path, ((), "")):
            raise VerifyError(f"scope '{path}': its recorded block structure is not the graph's "
                              "(a pass that changes nodes must be followed by archc.ir.blocks.annotate, as Editor.finish does)")
    return graph
