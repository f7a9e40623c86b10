"""How the torch backend spells the epilogue groups of archc/passes/mark_epilogues.py for CPU
inference: one call of onednn.py's functions per group, which runs oneDNN's fused convolution or
linear on packed weights where it applies and the plain layers elsewhere.

    conv2d                 conv_act(self.conv, x)
    conv2d, relu           conv_act(self.conv, x, 'relu')
    conv2d, add, relu      conv_add_act(self.conv, x, shortcut, 'relu', overwrite=True)
    linear, gelu           linear_act(self.fc1, x, 'gelu', 'none')

An activation takes part when its op names a oneDNN post-op (`Op.onednn_postop`); the group
stops before one that does not. The emitter spells a group this way only where the layer is a
torch leaf (`nn.Conv2d`, `nn.Linear`) called by the same `forward` that runs its epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass

from archc.backends.quote import py_str
from archc.ir.graph import Graph
from archc.ops import registry


@dataclass(frozen=True)
class Group:
    anchor: int  # the convolution or linear
    members: tuple[int, ...]  # its epilogue, in order: [add] [activation]
    other: str | None  # the value the add reads besides the layer's output
    act: tuple[str, str] | None  # the activation as a oneDNN post-op and its algorithm

    @property
    def nodes(self) -> tuple[int, ...]:
        return (self.anchor, *self.members)

    @property
    def last(self) -> int:
        return self.nodes[-1]


def _groups_by_number(graph: Graph) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for i, node in enumerate(graph.nodes):
        for a in node.annotations:
            if a.name == "fused" and a.args == ("epilogue",) and "group" in a.kwargs:
                found.setdefault(int(a.kwargs["group"]), []).append(i)
    return found


def _group(graph: Graph, nodes: list[int]) -> Group | None:
    anchor, rest = nodes[0], nodes[1:]
    layer = graph.nodes[anchor]
    if layer.op not in ("conv2d", "linear"):
        return None
    members: list[int] = []
    other = act = None
    if rest and graph.nodes[rest[0]].op == "add" and layer.op == "conv2d":
        add = graph.nodes[rest[0]]
        other = add.inputs[1] if add.inputs[0] == layer.outputs[0] else add.inputs[0]
        members.append(rest.pop(0))
    if rest:
        node = graph.nodes[rest[0]]
        op = registry.get(node.op)
        act = op.onednn_postop(op.make_attrs(node.attrs))
        if act is not None:
            members.append(rest[0])
    if layer.op == "linear" and act is None:
        return None  # a linear alone stays torch's own
    return Group(anchor, tuple(members), other, act)


def cpu_groups(graph: Graph) -> dict[int, Group]:
    """Every node of a group the CPU lowering spells -> its group."""
    out: dict[int, Group] = {}
    for nodes in _groups_by_number(graph).values():
        group = _group(graph, sorted(nodes))
        if group is not None:
            out.update({i: group for i in group.nodes})
    return out


def call_text(group: Group, graph: Graph, layer: str, names: dict[str, str], overwrite: bool) -> str:
    """The group as one call: `conv_add_act(self.conv3, x, shortcut, 'relu', overwrite=True)`."""
    node = graph.nodes[group.anchor]
    args = [layer, names[node.inputs[0]]]
    if group.other is not None:
        args.append(names[group.other])
    if group.act is not None:
        args.append(py_str(group.act[0]))
        if group.act[1]:
            args.append(py_str(group.act[1]))
    if group.other is not None and overwrite:
        args.append("overwrite=True")
    fn = "linear_act" if node.op == "linear" else "conv_add_act" if group.other is not None else "conv_act"
    return f"{fn}({', '.join(args)})"
