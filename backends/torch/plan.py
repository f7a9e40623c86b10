"""Which instances of the spec become modules with their own `forward`, and where each is called.

The IR is a flat list of nodes; each node's scope path says which instance it belongs to
(`h.3.attn`). Over that list, an instance is *callable* (a module whose `forward` the parent
calls, as in timm or Hugging Face) when its nodes are one contiguous run, or several runs that
compute the same thing (a shared instance applied twice), and read only parameters inside it:

    leaf    an op instance with a torch module of the same parameter names   nn.Linear(768, 2304)
    block   a block instance, or an op instance torch has no module for: a generated class per
            distinct body                                                     GPT2Block(), Layernorm()
    sequential  a stack whose layers feed each other in order                 nn.Sequential(Block(), ...)
    model   the root

An instance that is not callable (a pass merged nodes across its boundary, a block reads
another block's weights, its nodes interleave with others) is a `Scope` that only holds its
tensors, and its nodes run in the nearest callable ancestor's `forward`: the outputs are the
same either way. A stack is an `nn.Sequential` of its layers when each feeds the next (callable,
as timm's stages), else an `nn.ModuleList` (or, with a connection policy, a block of its own).

Which block instances can be called, and their calls (the values that cross each boundary),
is part of the IR (`ScopeInfo.calls`, computed by archc/ir/blocks.py); this module adds what is
torch's own: which op instances are torch modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from archc.backends.torch.inits import DTYPES
from archc.backends.torch.tree import ModuleEntry
from archc.ir.blocks import homes, within
from archc.ir.graph import BlockCall, Graph
from archc.ir.sparsity import MASK
from archc.ops import registry


# torch's layers and their twins that compute with `weight * weight_mask` (backends/torch/masks.py)
MASKED = {"nn.Linear": "MaskedLinear", "nn.Conv1d": "MaskedConv1d", "nn.Conv2d": "MaskedConv2d"}


@dataclass
class Unit:
    entry: ModuleEntry
    kind: str  # "model", "block", "leaf" or "sequential" (a stack of chained layers)
    calls: list[BlockCall] = field(default_factory=list)
    module: str = ""  # a leaf's torch constructor: "nn.Linear(768, 2304, bias=True)"
    torch_inits: frozenset[str] = frozenset()  # a leaf's tensors whose spec init is the module's own


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


def _op_instance(graph: Graph, entry: ModuleEntry, nodes: list[int], home: list[str]) -> bool:
    """Is every node of this instance its op, run here, with exactly the instance's tensors and the
    same attributes (one op instance, applied once or shared)?"""
    if entry.children or not entry.tensors or not nodes or not registry.has(entry.kind) or \
            registry.get(entry.kind).returns_param:
        return False
    roles = {t.attr: t.decl.name for t in entry.tensors}
    first = graph.nodes[nodes[0]]
    return all(home[i] == entry.path and graph.nodes[i].op == entry.kind and graph.nodes[i].params == roles
               and graph.nodes[i].attrs == first.attrs for i in nodes)


def _leaf(graph: Graph, entry: ModuleEntry, nodes: list[int], home: list[str]) -> str | None:
    """The torch module for an op instance, when every node of it is that op on one input with
    exactly the instance's tensors, of the dtypes and kinds the module makes."""
    if not _op_instance(graph, entry, nodes, home):
        return None
    roles = {t.attr: t.decl.name for t in entry.tensors}
    first = graph.nodes[nodes[0]]
    if any(len(graph.nodes[i].inputs) != 1 or len(graph.nodes[i].outputs) != 1 for i in nodes):
        return None
    floats = {t.decl.dtype for t in entry.tensors if t.attr not in (MASK, "num_batches_tracked")}
    dtype = floats.pop() if len(floats) == 1 else None  # the module's parameters have one dtype
    if dtype not in ("f32", "bf16", "f16", "f64") or (dtype != "f32" and MASK in roles):
        return None
    for t in entry.tensors:
        if t.attr == MASK:  # a sparse weight's mask: a bool buffer that a Masked* twin holds
            continue
        buffer = t.attr in ("running_mean", "running_var", "num_batches_tracked")
        if t.decl.dtype != ("i64" if t.attr == "num_batches_tracked" else dtype) or t.decl.trainable == buffer:
            return None
    op = registry.get(entry.kind)
    module = op.torch_module(op.make_attrs(first.attrs), frozenset(roles) - {MASK}, [graph.values[first.inputs[0]]])
    if module is not None and dtype != "f32":  # nn.Linear(64, 64, bias=True, dtype=torch.bfloat16)
        return f"{module[:-1]}, dtype={DTYPES[dtype]})"
    if module is None or MASK not in roles:
        return module
    torch_name, _, args = module.partition("(")
    masked = MASKED.get(torch_name)  # nn.Linear(...) -> MaskedLinear(...): the same, times the mask
    return f"{masked}({args}" if masked else None


def _torch_inits(graph: Graph, entry: ModuleEntry, node: int) -> frozenset[str]:
    """The leaf's tensors whose initializer is the op's default, which is what the torch module's
    own `reset_parameters` draws from (tests/backends/test_torch_emit.py checks each op): those
    need no second initialization."""
    first = graph.nodes[node]
    op = registry.get(first.op)
    defaults = op.params(op.make_attrs(first.attrs), [graph.values[v] for v in first.inputs])
    return frozenset(t.attr for t in entry.tensors if t.attr in defaults and defaults[t.attr].init == t.decl.init)


def _chained(entry: ModuleEntry, call: BlockCall, units: dict[str, Unit]) -> bool:
    """Do the layers of a list run in order, each taking the one value the previous one made?"""
    if len(call.inputs) != 1 or len(call.outputs) != 1:
        return False
    value, at = call.inputs[0], call.start
    for layer in entry.children:
        unit = units.get(layer.path)
        if unit is None or unit.kind not in ("block", "leaf") or len(unit.calls) != 1:
            return False
        c = unit.calls[0]
        if c.start != at or c.inputs != (value,) or len(c.outputs) != 1:
            return False
        value, at = c.outputs[0], c.stop
    return at == call.stop and value == call.outputs[0]


def plan(graph: Graph, root: ModuleEntry) -> Plan:
    home = homes(graph)
    under: dict[str, list[int]] = {}
    for i, h in enumerate(home):
        under.setdefault(h, []).append(i)
    units: dict[str, Unit] = {}
    for entry in root.walk():
        if entry is root or entry.is_list:
            continue
        module = _leaf(graph, entry, under.get(entry.path, []), home)
        if module:
            calls = [BlockCall(start=i, stop=i + 1, inputs=graph.nodes[i].inputs, outputs=graph.nodes[i].outputs)
                     for i in under[entry.path]]
            units[entry.path] = Unit(entry, "leaf", calls, module, _torch_inits(graph, entry, calls[0].start))
        elif entry.path in graph.scopes and graph.scopes[entry.path].calls:  # see archc/ir/blocks.py
            units[entry.path] = Unit(entry, "block", list(graph.scopes[entry.path].calls))
        elif _op_instance(graph, entry, under.get(entry.path, []), home):  # an op torch has no module for
            units[entry.path] = Unit(entry, "block", [BlockCall(start=i, stop=i + 1, inputs=graph.nodes[i].inputs,
                                                                outputs=graph.nodes[i].outputs)
                                                      for i in under[entry.path]])
    for entry in root.walk():  # a stack whose layers feed each other, one after the other: nn.Sequential
        info = graph.scopes.get(entry.path)
        if entry.is_list and info is not None and len(info.calls) == 1 and _chained(entry, info.calls[0], units):
            units[entry.path] = Unit(entry, "sequential", list(info.calls))
    model = BlockCall(start=0, stop=len(graph.nodes), inputs=tuple(p.value for p in graph.inputs),
                      outputs=tuple(p.value for p in graph.outputs))
    units[""] = Unit(root, "model", [model])
    return Plan(graph, root, home, units)
