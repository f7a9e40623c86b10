"""How the torch backend spells the epilogue groups of archc/passes/mark_epilogues.py for CPU
inference: one call of onednn.py's functions per group, which runs oneDNN's fused convolution or
linear on packed weights where it applies and the plain layers elsewhere.

    conv2d                 conv_act(self.conv, x)
    conv2d, relu           conv_act(self.conv, x, 'relu')
    conv2d, add, relu      conv_add_act(self.conv, x, shortcut, 'relu', overwrite=True)
    linear, gelu           linear_act(self.fc1, x, 'gelu', 'none')
    linear                 linear_act(self.fc2, x)
    conv2d (no leaf), relu conv2d_act(x, self.conv.weight, self.conv.bias, [1, 1], [1, 1], [1, 1], 1, 'relu',
                                      training=self.training)

An activation takes part when its op names a oneDNN post-op (`Op.onednn_postop`); the group
stops before one that does not. The emitter spells a group this way only where the same `forward` runs the
whole group, the layer being a torch leaf (`nn.Conv2d`, `nn.Linear`) or a 2-d convolution spelled
in that forward (a deployed spec's, whose instances are holders).
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
    return Group(anchor, tuple(members), other, act)


def cpu_groups(graph: Graph) -> dict[int, Group]:
    """Every node of a group the CPU lowering spells -> its group."""
    out: dict[int, Group] = {}
    for nodes in _groups_by_number(graph).values():
        group = _group(graph, sorted(nodes))
        if group is not None:
            out.update({i: group for i in group.nodes})
    return out


def conv_arguments(graph: Graph, group: Group, params: dict[str, str]) -> list[str] | None:
    """A convolution that is no torch leaf, as conv2d_act's arguments after the input (weight, bias,
    stride, padding, dilation, groups), or None where oneDNN's call does not take it."""
    node = graph.nodes[group.anchor]
    if node.op != "conv2d" or set(params) - {"weight", "bias"}:  # a sparse weight's mask: its own spelling
        return None
    a = registry.get("conv2d").make_attrs(node.attrs)
    if a.padding == "same":
        return None
    pair = [list(v) if isinstance(v, tuple) else [v, v] for v in (a.stride, a.padding, a.dilation)]
    return [params["weight"], params.get("bias", "None"), *map(str, pair), str(a.groups)]


def call_text(group: Group, graph: Graph, layer: str | list[str], names: dict[str, str], overwrite: bool) -> str:
    """The group as one call: `conv_add_act(self.conv3, x, shortcut, 'relu', overwrite=True)`; a
    convolution that is no torch leaf (`layer` its arguments) as `conv2d_act(x, weight, ...)`."""
    node = graph.nodes[group.anchor]
    functional = isinstance(layer, list)
    args = [names[node.inputs[0]]] if functional else [layer, names[node.inputs[0]]]
    if group.other is not None:
        args.append(names[group.other])
    if functional:
        args += layer
    if group.act is not None:
        args.append(py_str(group.act[0]))
        if group.act[1]:
            args.append(py_str(group.act[1]))
    if group.other is not None and overwrite:
        args.append("overwrite=True")
    if functional:
        args.append("training=self.training")
    fn = "linear_act" if node.op == "linear" else "conv_add_act" if group.other is not None else "conv_act"
    return f"{fn.replace('conv', 'conv2d') if functional else fn}({', '.join(args)})"
