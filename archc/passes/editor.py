"""A mutable working copy of a graph that passes edit, then freeze back into an IR `Graph`.

Nodes stay immutable: an edit replaces a node by a new, re-validated one (`remake`). `finish`
drops values nothing defines and parameters no node uses, so every pass leaves a graph that the
verifier accepts without extra bookkeeping.
"""

from __future__ import annotations

from typing import Any, Iterable

from archc.ir.blocks import annotate
from archc.ir.graph import Graph, Node, ParamDecl, Port, ScopeInfo
from archc.ir.types import FLOAT_DTYPES, TensorType
from archc.ops import registry
from archc.ops.dtypes import follow_dtype


def remake(node: Node, **changes: Any) -> Node:
    """A copy of `node` with `changes`, validated again (attributes are checked by its op)."""
    data = {field: getattr(node, field) for field in Node.model_fields}
    data.update(changes)
    return Node(**data)


def has_annotation(node: Node, name: str) -> bool:
    return any(a.name == name for a in node.annotations)


class Editor:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes: list[Node | None] = list(graph.nodes)
        self.values: dict[str, TensorType] = dict(graph.values)
        self.params: dict[str, ParamDecl] = dict(graph.params)
        self.outputs: list[Port] = list(graph.outputs)
        self.scopes: dict[str, ScopeInfo] = dict(graph.scopes)
        ids = [int(v[1:]) for v in self.values if v[1:].isdigit()]
        self._next = max(ids, default=-1) + 1

    # -- queries -----------------------------------------------------------------------------
    def live(self) -> Iterable[tuple[int, Node]]:
        return ((i, n) for i, n in enumerate(self.nodes) if n is not None)

    def producer(self, value: str) -> tuple[int, Node] | None:
        for i, n in self.live():
            if value in n.outputs:
                return i, n
        return None

    def users(self, value: str) -> list[tuple[int, Node]]:
        return [(i, n) for i, n in self.live() if value in n.inputs]

    def is_output(self, value: str) -> bool:
        return any(p.value == value for p in self.outputs)

    def param_users(self, name: str) -> list[int]:
        return [i for i, n in self.live() if name in n.params.values()]

    def fresh_scope(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, ... : a scope no node or parameter uses yet."""
        taken_params = set(self.params)
        taken_scopes = {n.scope for _, n in self.live()} | set(self.scopes)
        candidate, k = base, 0
        while candidate in taken_scopes or any(p == candidate or p.startswith(candidate + ".")
                                               for p in taken_params):
            k += 1
            candidate = f"{base}_{k}"
        return candidate

    # -- edits -------------------------------------------------------------------------------
    def fresh(self, t: TensorType) -> str:
        vid = f"%{self._next}"
        self._next += 1
        self.values[vid] = t
        return vid

    def replace_uses(self, old: str, new: str) -> None:
        """Every use of value `old` (by nodes and as a model output) becomes a use of `new`."""
        for i, n in self.live():
            if old in n.inputs:
                self.nodes[i] = remake(n, inputs=tuple(new if v == old else v for v in n.inputs))
        self.outputs = [p.model_copy(update={"value": new}) if p.value == old else p for p in self.outputs]

    def forward(self, index: int, value: str) -> None:
        """Delete the one-output node at `index`; its users read `value` instead."""
        node = self.nodes[index]
        assert node is not None and len(node.outputs) == 1
        self.nodes[index] = None
        self.replace_uses(node.outputs[0], value)

    def delete(self, index: int) -> None:
        self.nodes[index] = None

    def declare(self, name: str, node: Node, role: str) -> None:
        """Declare parameter `name` as the op of `node` specifies its `role`."""
        op = registry.get(node.op)
        attrs, ins = op.make_attrs(node.attrs), [self.values[v] for v in node.inputs]
        floats = {self.params[p].dtype for p in node.params.values() if p in self.params} & set(FLOAT_DTYPES)
        specs, _ = follow_dtype(op.params(attrs, ins), [], ins, attrs, floats.pop() if len(floats) == 1 else "f32")
        spec = specs[role]  # a bias added to a bf16 convolution is bf16
        self.params[name] = ParamDecl(name=name, shape=spec.shape, dtype=spec.dtype, init=spec.init,
                                      trainable=spec.trainable)

    def add_scope(self, path: str, node: Node) -> None:
        """Record the instance `path` made by a pass, so backends show it as its op."""
        self.scopes[path] = ScopeInfo(path=path, kind=node.op, args=dict(node.attrs), span=node.span)

    def unchanged(self) -> bool:
        """Has no edit been made (the same node, value, parameter, output and scope objects)?"""
        g = self.graph
        return len(self.nodes) == len(g.nodes) and all(a is b for a, b in zip(self.nodes, g.nodes)) and \
            len(self.outputs) == len(g.outputs) and all(a is b for a, b in zip(self.outputs, g.outputs)) and \
            all(len(mine) == len(theirs) and all(mine.get(k) is v for k, v in theirs.items())
                for mine, theirs in ((self.values, g.values), (self.params, g.params), (self.scopes, g.scopes)))

    def finish(self) -> Graph:
        """The edited graph, its block structure recomputed (archc/ir/blocks.py): no pass keeps it by hand.
        A pass that changed nothing gets its input back (the same object: nothing to verify again)."""
        if self.unchanged():
            return self.graph
        nodes = tuple(n for n in self.nodes if n is not None)
        defined = {p.value for p in self.graph.inputs} | {v for n in nodes for v in n.outputs}
        used = {name for n in nodes for name in n.params.values()}
        held = {".".join(parts[:k]) for n in nodes for parts in [n.scope.split(".")] for k in range(1, len(parts) + 1)}
        scopes = {k: s for k, s in self.scopes.items() if k in held}  # a node's scope or one above it
        return annotate(Graph(schema_version=self.graph.schema_version, name=self.graph.name, axes=self.graph.axes,
                     model_args=self.graph.model_args, inputs=self.graph.inputs, outputs=tuple(self.outputs),
                     values={k: t for k, t in self.values.items() if k in defined}, nodes=nodes,
                     params={k: p for k, p in self.params.items() if k in used}, scopes=scopes,
                     guards=self.graph.guards))
