"""The module tree of a graph: scopes, their nodes, and runs of identical stack layers.

A scope path (`h.3.attn.qkv`) names an instance; its parent is the path without the last part,
and the root is `""`. A node belongs to its scope and to every ancestor of it. Layers of a stack
that are identical (same ops, attributes, types, parameter shapes and wiring, relative to the
layer) form a run, which the summary prints as one row (`h.0-11 (x12)`) and the diagram draws
once.

    >>> parent("h.3.attn"), depth("h.3.attn"), depth("")
    ('h.3', 3, 0)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from archc.ir.blocks import common_scope, homes, tied_uses, within  # noqa: F401  (re-exported)
from archc.ir.graph import Graph


def parent(path: str) -> str:
    return path.rpartition(".")[0]


def depth(path: str) -> int:
    return 0 if not path else path.count(".") + 1


def ancestors(path: str) -> list[str]:
    """The path itself and every ancestor, innermost first, ending with the root `""`."""
    out = []
    while path:
        out.append(path)
        path = parent(path)
    out.append("")
    return out




@dataclass
class ScopeTree:
    """Scopes as a tree, each with the indices of the nodes directly in it and in its subtree."""

    graph: Graph
    home: list[str] = field(default_factory=list)  # node index -> the scope it is drawn and counted in
    children: dict[str, list[str]] = field(default_factory=dict)
    direct: dict[str, list[int]] = field(default_factory=dict)  # nodes whose scope is the path
    subtree: dict[str, list[int]] = field(default_factory=dict)  # nodes in the path or below

    def kind(self, path: str) -> str:
        if not path:
            return self.graph.name
        info = self.graph.scopes.get(path)
        return info.kind if info else ""

    def args(self, path: str) -> dict[str, Any]:
        info = self.graph.scopes.get(path)
        return dict(info.args) if info else {}

    def depth_of(self, path: str) -> int:
        """A stack's number of layers (as elaborated), not counting the scopes its connection
        policy adds beside them (`h.streams`, `h.dwa`)."""
        depth = self.args(path).get("depth")
        return int(depth) if isinstance(depth, int) else len(self.children.get(path, []))

    def is_op_scope(self, path: str) -> bool:
        """An instance of a single op (`qkv = linear(...)`), as opposed to a block or a stack."""
        nodes = self.subtree.get(path, [])
        if not path or self.children.get(path) or len(nodes) != 1:
            return False
        node = self.graph.nodes[nodes[0]]
        return node.op == self.kind(path) or (path not in self.graph.scopes and bool(node.params))


def scope_tree(graph: Graph) -> ScopeTree:
    tree = ScopeTree(graph, homes(graph))
    paths = {""} | set(graph.scopes) | set(tree.home)
    for p in list(paths):  # every prefix of a path is a scope, recorded or not
        while p:
            p = parent(p)
            paths.add(p)
    first: dict[str, int] = {}
    for p in paths:
        tree.children[p], tree.direct[p], tree.subtree[p] = [], [], []
    for i, home in enumerate(tree.home):
        tree.direct[home].append(i)
        for a in ancestors(home):
            tree.subtree[a].append(i)
            first.setdefault(a, i)
    big = len(graph.nodes)
    for p in sorted(paths - {""}, key=lambda p: (first.get(p, big), depth(p))):
        tree.children[parent(p)].append(p)
    return tree


def signature(tree: ScopeTree, path: str, sizes: bool = True) -> str:
    """A text that is equal for two scopes exactly when they are the same computation, up to
    their names: ops, attributes, dtypes and sizes, parameter shapes and the wiring inside.
    Axis names are labels, not part of a type, and are left out, and so are initializers
    (`hc_alpha(3)` in layer 3): they set the starting values, not the computation. With `sizes=False` only the
    ops, the instance names and the wiring count: the same drawing at another width."""
    g = tree.graph
    local: dict[str, str] = {}
    external: dict[str, str] = {}
    items: list[Any] = []
    cut = len(path) + 1
    for i in tree.subtree[path]:
        node = g.nodes[i]
        ins = []
        for v in node.inputs:
            if v not in local:
                external.setdefault(v, f"x{len(external)}" + (f":{g.values[v].sizes_str()}" if sizes else ""))
            ins.append(local.get(v) or external[v])
        for k, v in enumerate(node.outputs):
            local[v] = f"n{len(items)}.{k}"
        info = g.scopes.get(node.scope)
        rel = node.scope[cut:] if within(node.scope, path) else node.scope  # a tied use names its owner
        item: list[Any] = [node.op, rel, info.kind if info else "", ins]
        if sizes:
            item += [_no_init(node.attrs), _no_init(info.args) if info else {},
                     [g.values[v].dtype + g.values[v].sizes_str() for v in node.outputs],
                     {role: g.params[name].shape for role, name in node.params.items()}]
        items.append(item)
    return json.dumps(items, sort_keys=True, default=str)


def _no_init(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes without initializers: layers that start from other values compute the same."""
    return {k: v for k, v in attrs.items() if k != "init"}


def runs(tree: ScopeTree, path: str) -> list[list[str]]:
    """The children of `path` grouped into runs of consecutive identical scopes. Only the layers
    of a stack and the experts of a mixture (`moe`) are grouped; any other scope's children are
    runs of one."""
    kids = tree.children.get(path, [])
    if tree.kind(path) not in ("stack", "moe"):
        return [[k] for k in kids]
    out: list[list[str]] = []
    last = None
    for k in kids:
        info = tree.graph.scopes.get(k)
        # the IR's structural key (archc/ir/blocks.py) where the layer has one, else its computation
        sig = f"key:{info.key}" if info is not None and info.key else signature(tree, k)
        if out and sig == last:
            out[-1].append(k)
        else:
            out.append([k])
            last = sig
    return out


def run_label(run: list[str]) -> str:
    """`h.0` for one layer, `h.0-11` for a run (with the last part of each path)."""
    if len(run) == 1:
        return run[0]
    return f"{run[0]}-{run[-1].rpartition('.')[2]}"


def value_map(tree: ScopeTree, rep: str, other: str) -> dict[str, str]:
    """Each value produced in `other` mapped to the matching value of `rep` (an identical scope)."""
    g = tree.graph
    out: dict[str, str] = {}
    for i, j in zip(tree.subtree[rep], tree.subtree[other]):
        for a, b in zip(g.nodes[i].outputs, g.nodes[j].outputs):
            out[b] = a
    return out
