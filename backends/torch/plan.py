"""Which instances of the spec become modules with their own `forward`, and where each is called.

The IR is a flat list of nodes; each node's scope path says which instance it belongs to
(`h.3.attn`). Over that list, an instance is *callable* (a module whose `forward` the parent
calls, as in timm or Hugging Face) when its nodes are one contiguous run, or several runs that
compute the same thing (a shared instance applied twice), and read only parameters inside it:

    leaf    an op instance with a torch module of the same parameter names   nn.Linear(768, 2304)
    block   a block instance: a generated class per distinct body             GPT2Block()
    model   the root

An instance that is not callable (a pass merged nodes across its boundary, a block reads
another block's weights, its nodes interleave with others) is a `Scope` that only holds its
tensors, and its nodes run in the nearest callable ancestor's `forward`: the outputs are the
same either way. A stack is an `nn.ModuleList` of its layers.

Each call's boundary is computed from the flat list: its inputs are the values its nodes read
and do not make (in order of first use), its outputs the values it makes that anything after it
reads (or that the model returns), in order of definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from archc.analysis.structure import homes, within
from archc.backends.torch.tree import ModuleEntry
from archc.ir.graph import Graph
from archc.ops import registry


@dataclass
class Call:
    """One application of a module: the nodes it runs and the values that cross its boundary."""

    nodes: range
    inputs: list[str]
    outputs: list[str]


@dataclass
class Unit:
    entry: ModuleEntry
    kind: str  # "model", "block" or "leaf"
    calls: list[Call] = field(default_factory=list)
    module: str = ""  # a leaf's torch constructor: "nn.Linear(768, 2304, bias=True)"


@dataclass
class Plan:
    graph: Graph
    root: ModuleEntry
    home: list[str]  # node index -> the scope it runs in (a tied use: where its users meet)
    units: dict[str, Unit]  # path -> unit, for every callable instance and the root

    def owner(self, unit: Unit, i: int) -> Unit | None:
        """The outermost callable instance strictly inside `unit` that runs node `i`, if any."""
        path, found = self.home[i], None
        top = unit.entry.path
        while path != top and within(path, top):
            if path in self.units:
                found = self.units[path]
            path = path.rpartition(".")[0]
        return found


def _runs(indices: list[int]) -> list[range]:
    out: list[range] = []
    for i in indices:
        if out and out[-1].stop == i:
            out[-1] = range(out[-1].start, i + 1)
        else:
            out.append(range(i, i + 1))
    return out


def _boundary(graph: Graph, run: range, readers: dict[str, list[int]], returned: set[str]) -> Call:
    made = {v for i in run for v in graph.nodes[i].outputs}
    inputs = list(dict.fromkeys(v for i in run for v in graph.nodes[i].inputs if v not in made))
    outputs = [v for i in run for v in graph.nodes[i].outputs
               if v in returned or any(j not in run for j in readers.get(v, []))]
    return Call(run, inputs, outputs)


def _shape_of(graph: Graph, call: Call, path: str) -> str:
    """The call's computation up to names: equal for two runs of one shared instance."""
    local = {v: f"in{k}" for k, v in enumerate(call.inputs)}
    items = []
    for n, i in enumerate(call.nodes):
        node = graph.nodes[i]
        for k, v in enumerate(node.outputs):
            local[v] = f"n{n}.{k}"
        items.append([node.op, node.attrs, node.scope[len(path):], node.params, [local.get(v) for v in node.inputs]])
    items.append([local[v] for v in call.outputs])
    return json.dumps(items, sort_keys=True, default=str)


def _leaf(graph: Graph, entry: ModuleEntry, nodes: list[int], home: list[str]) -> str | None:
    """The torch module for an op instance, when every node of it is that op on one input with
    exactly the instance's tensors, of the dtypes and kinds the module makes."""
    if entry.children or not entry.tensors or not nodes or not registry.has(entry.kind):
        return None
    roles = {t.attr: t.decl.name for t in entry.tensors}
    first = graph.nodes[nodes[0]]
    for i in nodes:
        node = graph.nodes[i]
        if home[i] != entry.path or node.op != entry.kind or node.params != roles or node.attrs != first.attrs \
                or len(node.inputs) != 1 or len(node.outputs) != 1:
            return None
    for t in entry.tensors:
        buffer = t.attr in ("running_mean", "running_var", "num_batches_tracked")
        if t.decl.dtype != ("i64" if t.attr == "num_batches_tracked" else "f32") or t.decl.trainable == buffer:
            return None
    op = registry.get(entry.kind)
    return op.torch_module(op.make_attrs(first.attrs), frozenset(roles), [graph.values[first.inputs[0]]])


def plan(graph: Graph, root: ModuleEntry) -> Plan:
    home = homes(graph)
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            readers.setdefault(v, []).append(i)
    returned = {p.value for p in graph.outputs}
    under: dict[str, list[int]] = {}
    for i, h in enumerate(home):
        path = h
        while True:
            under.setdefault(path, []).append(i)
            if not path:
                break
            path = path.rpartition(".")[0]
    units: dict[str, Unit] = {}
    for entry in reversed(root.walk()):  # children before parents
        if entry is root or entry.is_list:
            continue
        nodes = under.get(entry.path, [])
        module = _leaf(graph, entry, nodes, home)
        if module:
            calls = [Call(range(i, i + 1), list(graph.nodes[i].inputs), list(graph.nodes[i].outputs)) for i in nodes]
            units[entry.path] = Unit(entry, "leaf", calls, module)
            continue
        if registry.has(entry.kind):
            continue  # an op with no torch module of its own (positions, parameter): its parent runs it
        if not nodes or any(not within(p, entry.path) or p == entry.path
                            for i in nodes for p in graph.nodes[i].params.values()):
            continue  # nothing to call, or it reads tensors it does not own: a holder
        calls = [_boundary(graph, run, readers, returned) for run in _runs(nodes)]
        if any(not c.outputs for c in calls) or \
                len({_shape_of(graph, c, entry.path) for c in calls}) != 1:
            continue
        units[entry.path] = Unit(entry, "block", calls)
    model = Call(range(len(graph.nodes)), [p.value for p in graph.inputs], [p.value for p in graph.outputs])
    units[""] = Unit(root, "model", [model])
    return Plan(graph, root, home, units)
