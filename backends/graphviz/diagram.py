"""The diagram of a graph as data: boxes, nested clusters and labelled wires, ready for a template.

Decisions live here, text lives in `diagram.dot.j2`:

- every wire is one value, labelled with its axes (`[B, T, D=768]`; the dtype only when not f32);
- a block instance is a cluster labelled with its name, its block and arguments, and its parameter
  count; an instance in a slot of its parent (`mixer = Attention`) says which slot;
- a stack's identical layers are drawn once, labelled `x12` (unless `expand`): values of the
  hidden layers are read as the matching values of the drawn one, so the wire out of the stack
  leaves the drawn layer;
- scopes deeper than `depth` are one box each, with the wires that enter and leave them;
- a mixture's experts (`moe(E, Block)`) are drawn once, `x8`, with one moe_select for all;
- `add` is a ⊕ node; when one operand is computed from the other (`x + f(x)`) that operand's
  wire is a skip wire, drawn as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from archc.analysis.structure import (ScopeTree, depth, parent, run_label, runs, scope_tree, signature,
                                      tied_uses, value_map)
from archc.analysis.summary import axes_text
from archc.backends.quote import dot_html
from archc.ir import sparsity
from archc.ir.graph import Graph, Node
from archc.ir.types import TensorType
from archc.ops import registry
from archc.ops.conditional import MOE_SCOPE

# op -> (fill colour, shape); ops not listed are plain boxes
STYLE: dict[str, tuple[str, str]] = {
    "linear": ("#cfe2f3", "box"), "conv1d": ("#cfe2f3", "box"), "conv2d": ("#cfe2f3", "box"),
    "einsum": ("#cfe2f3", "box"), "embedding": ("#d9d2e9", "box"), "positions": ("#d9d2e9", "box"),
    "parameter": ("#d9d2e9", "box"), "attention": ("#f9cb9c", "box"),
    "layernorm": ("#fff2cc", "box"), "rmsnorm": ("#fff2cc", "box"), "batchnorm": ("#fff2cc", "box"),
    "groupnorm": ("#fff2cc", "box"), "softmax": ("#fff2cc", "box"),
    "relu": ("#d9ead3", "box"), "gelu": ("#d9ead3", "box"), "silu": ("#d9ead3", "box"),
    "sigmoid": ("#d9ead3", "box"), "tanh": ("#d9ead3", "box"), "starrelu": ("#d9ead3", "box"),
    "maxpool2d": ("#ead1dc", "box"), "avgpool2d": ("#ead1dc", "box"), "adaptive_avgpool2d": ("#ead1dc", "box"),
    "global_avgpool": ("#ead1dc", "box"), "mean": ("#ead1dc", "box"),
}
SYMBOLS = {"add": "+", "sub": "−", "mul": "×", "div": "÷"}  # binary ops drawn as circles
CLUSTER_FILLS = ("#f7f7f7", "#ececec")
SKIP_COLOR = "#3c78d8"
SMALL = 3  # scopes of this many ops or fewer are drawn open even when drawn before


@dataclass
class Box:
    id: str  # any text: the template writes it with `dot_id`
    label: str  # graphviz HTML label (without the outer <>)
    shape: str = "box"
    fill: str = "white"
    style: str = "rounded,filled"
    extra: str = ""  # more attributes, already written as dot text


@dataclass
class Cluster:
    id: str
    label: str
    fill: str
    boxes: list[Box] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)


@dataclass
class Wire:
    src: str
    dst: str
    label: str
    skip: bool = False


@dataclass
class Diagram:
    name: str
    root: Cluster  # the model itself: its boxes and top-level clusters
    wires: list[Wire]

    def walk(self) -> list[Cluster]:
        out, todo = [], [self.root]
        while todo:
            c = todo.pop()
            out.append(c)
            todo.extend(c.clusters)
        return out


# -- labels -------------------------------------------------------------------------------------
def axes_label(t: TensorType) -> str:
    """`[B, T, D=768]`, with the dtype in front when it is not f32 (`i64[B, T]`)."""
    return axes_text(t, dtype="not f32")


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, list):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    return str(value)


def op_args(node: Node) -> str:
    """The attributes of an op that differ from their defaults: `features=2304`."""
    fields = registry.get(node.op).Attrs.model_fields
    parts = []
    for k, v in node.attrs.items():
        f = fields.get(k)
        if f is not None and not f.is_required() and f.default == v:
            continue
        if v in ({}, None, ()):
            continue
        if k in ("pattern", "equation") or isinstance(v, dict):  # speak for themselves
            parts.append(v if isinstance(v, str) else _short(v))
        else:
            parts.append(f"{k}={_short(v)}")
    return ", ".join(parts)


def block_args(args: dict[str, Any], limit: int = 60) -> str:
    text = ", ".join(f"{k}={_short(v)}" for k, v in args.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def count(n: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def esc(text: str) -> str:
    """Text for an HTML-like label: entities, and no character graphviz's XML parser refuses."""
    return dot_html(text)


def lines(title: str, *rest: str, small: int = 9) -> str:
    out = f"<b>{esc(title)}</b>"
    for r in rest:
        if r:
            out += f'<br/><font point-size="{small}">{esc(r)}</font>'
    return out


# -- building -----------------------------------------------------------------------------------
class _Builder:
    def __init__(self, graph: Graph, max_depth: int | None, expand: bool) -> None:
        self.g = graph
        self.tree: ScopeTree = scope_tree(graph)
        self.max_depth = max_depth
        self.expand = expand
        self.alias: dict[str, str] = {}  # value of a hidden layer -> value of the drawn layer
        self.hidden: set[int] = set()  # nodes of layers that are not drawn
        self.box_of: dict[int, str] = {}  # node index -> the id of the box that draws it
        self.producer = {v: i for i, n in enumerate(graph.nodes) for v in n.outputs}
        self.params = self._param_counts()
        self.tied = tied_uses(graph)
        self.n_clusters = 0
        self.drawn: dict[str, str] = {}  # structure (sizes left out) -> the scope drawn with it
        self.folded: dict[int, int] = {}  # a mixture's first moe_select -> the number it stands for

    def _param_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, p in self.g.params.items():
            if not p.trainable:
                continue
            path = name
            while path:
                path = parent(path)
                out[path] = out.get(path, 0) + p.numel
        return out

    # scopes ----------------------------------------------------------------------------------
    def scope_title(self, path: str, label_path: str, times: int) -> tuple[str, str]:
        """The first line (name) and second line (what it is) of a scope's label."""
        kind = self.tree.kind(path)
        args = self.tree.args(path)
        name = label_path + (f"  x{times}" if times > 1 else "")
        if kind == "stack":
            return name, f"stack x{self.tree.depth_of(path)}" + self._connect(path)
        what = f"{kind}({block_args(args)})" if args else kind
        slot = self._slot(path, kind)
        if slot:
            what = f"{slot} = {what}"
        return name, what

    def _slot(self, path: str, kind: str) -> str | None:
        """The parameter of the parent block that this instance fills (`mixer`), if any."""
        if registry.has(kind) or kind == "stack":
            return None
        for k, v in self.tree.args(parent(path)).items():
            if v == kind:
                return k
        return None

    def _connect(self, stack: str) -> str:
        """`, connect = hyper(n=4)`: the connection policy of a stack, when it has one."""
        policy = self.tree.args(stack).get("connect")
        return f", connect = {policy}" if policy else ""

    def scope_label(self, path: str, label_path: str, times: int, total: int = 0) -> str:
        name, what = self.scope_title(path, label_path, times)
        n = self.params.get(path, 0)
        params = f"{count(n)} params" if n else ""
        if n and times > 1:
            params = f"{count(n)} params each, {count(total or n * times)} in all"
        stack = parent(path)
        wiring = ""
        if times > 1 and self.tree.kind(stack) == "stack":  # a run of layers: say how they are wired
            wiring = self._connect(stack).lstrip(", ")
        return lines(name, what, params, wiring)

    def layer_runs(self, path: str) -> list[list[str]]:
        return [[k] for k in self.tree.children[path]] if self.expand else runs(self.tree, path)

    def build_scope(self, path: str, cluster: Cluster, level: int) -> None:
        """Fill `cluster` with the nodes written directly in `path` and one entry per child."""
        if self.tree.kind(path) == MOE_SCOPE and not self.expand:
            self.fold_selects(path)
        for i in self.tree.direct[path]:
            if i not in self.hidden:
                cluster.boxes.append(self.op_box(i))
        where = parent(path) if self.tree.kind(path) == "stack" else path  # `layer2.0`, not `0`
        for run in self.layer_runs(path):
            self.build_run(run, where, cluster, level)

    def fold_selects(self, path: str) -> None:
        """A mixture's experts are drawn as one (`experts.0-7  x8`): so are the moe_select ops that
        gather their inputs, the first one standing for all."""
        selects = [i for i in self.tree.direct[path] if self.g.nodes[i].op == "moe_select"]
        for i in selects[1:]:
            self.hidden.add(i)
            self.alias.update(zip(self.g.nodes[i].outputs, self.g.nodes[selects[0]].outputs))
        if len(selects) > 1:
            self.folded[selects[0]] = len(selects)

    def build_run(self, run: list[str], where: str, cluster: Cluster, level: int, total: int = 0) -> None:
        """Draw the first scope of a run of identical layers, and hide the others."""
        rep = run[0]
        for other in run[1:]:
            self.alias.update(value_map(self.tree, rep, other))
            self.hidden.update(self.tree.subtree[other])
        full = run_label(run)
        label = full[len(where) + 1 if where else 0:]
        if label[:1].isdigit() and where:  # `stages.0` rather than `0`
            label = full[len(parent(where)) + 1 if parent(where) else 0:]
        self.build_child(rep, full, label, len(run), cluster, level, total)

    def build_child(self, path: str, full: str, label_path: str, times: int, cluster: Cluster, level: int,
                    total: int = 0) -> None:
        """Draw one scope (or the first of a run of `times`): as its op, as a cluster, or as one box
        when it is deeper than `max_depth` or its structure was drawn before at other sizes."""
        nodes = [i for i in self.tree.subtree[path] if i not in self.hidden]
        if not nodes:
            return
        if self.tree.is_op_scope(path) and times == 1:
            cluster.boxes.append(self.op_box(nodes[0]))
            return
        collapsed = self.max_depth is not None and depth(path) > self.max_depth
        if self.tree.kind(path) == "stack" and not collapsed:
            layers = self.layer_runs(path)
            if len(layers) == 1:  # one run: draw the layer, labelled with the stack's count
                self.build_run(layers[0], parent(path), cluster, level, self.params.get(path, 0))
                return
        label = self.scope_label(path, label_path, times, total)
        seen = None
        if not collapsed and not self.expand and len(nodes) > SMALL:
            key = signature(self.tree, path, sizes=False)
            seen = self.drawn.get(key)
            self.drawn.setdefault(key, full)
        if seen is not None:  # drawn before at other sizes: one box that says where
            label += f'<br/><font point-size="8"><i>{esc("inside: as " + seen)}</i></font>'
        if collapsed or seen is not None:
            self.n_clusters += 1
            box_id = f"s{self.n_clusters}"
            for i in nodes:
                self.box_of[i] = box_id
            fill = STYLE.get(self.tree.kind(path), ("#e6e6e6", "box"))[0]
            cluster.boxes.append(Box(box_id, label, fill=fill, extra="penwidth=1.5"))
            return
        self.n_clusters += 1
        child = Cluster(f"cluster_{self.n_clusters}", label, CLUSTER_FILLS[level % 2])
        cluster.clusters.append(child)
        self.build_scope(path, child, level + 1)

    # ops --------------------------------------------------------------------------------------
    def op_box(self, i: int) -> Box:
        node = self.g.nodes[i]
        box_id = f"n{i}"
        self.box_of[i] = box_id
        if node.op in SYMBOLS and len(node.inputs) == 2:
            return Box(box_id, f"<b>{SYMBOLS[node.op]}</b>", shape="circle", fill="white", style="filled",
                       extra='width=0.3 height=0.3 fixedsize=true fontsize=14')
        fill, shape = STYLE.get(node.op, ("white", "box"))
        args = op_args(node)
        if i in self.tied:  # uses another op's parameters
            shared = ", ".join(f"{role} = {name}" for role, name in node.params.items())
            title = node.scope.rpartition(".")[2] if node.scope and self.g.scopes.get(node.scope) else ""
            title = f"{title}: {node.op}" if title and title != node.op else node.op
            return Box(box_id, lines(title, args, f"shares {shared}"), shape, fill, "rounded,filled,dashed")
        own = self.g.scopes.get(node.scope)
        if node.op == "parameter":  # a learned tensor: its name and shape, small
            name = node.scope.rpartition(".")[2] or "parameter"
            shape_text = "[" + ", ".join(str(v) for v in node.attrs["shape"]) + "]"
            return Box(box_id, f"<b>{esc(name)}</b> {esc(shape_text)}", shape, fill, "rounded,filled",
                       "fontsize=9 height=0.2")
        if node.params and node.scope and (own is None or own.kind == node.op):  # `qkv: linear`
            n = sum(self.g.params[p].numel for p in node.params.values() if self.g.params[p].trainable)
            title = node.scope.rpartition(".")[2]
            title = title if title == node.op else f"{title}: {node.op}"
            if node.op == "moe_experts":  # the experts as one box, xE, after the router's box
                a = node.attrs
                return Box(box_id, lines(f"{title} \u00d7{a['experts']}", f"{a['kind']} experts, hidden={a['hidden']}",
                                         f"{count(n)} params, top-k routed ({a['impl']})"), shape, fill,
                           "rounded,filled", "peripheries=2")
            pattern = sparsity.of(node)
            if pattern is not None:  # a sparse weight: its pattern, and a dotted border
                return Box(box_id, lines(title, args, f"{count(n)} params", f"sparse {pattern.text()}"),
                           shape, fill, "rounded,filled,dotted", "penwidth=1.6")
            return Box(box_id, lines(title, args, f"{count(n)} params" if n else ""), shape, fill)
        if i in self.folded:  # the gathers of all the experts' inputs
            return Box(box_id, lines(f"moe_select \u00d7{self.folded[i]}", "each expert's routed inputs"), shape, fill)
        if node.op in ("rearrange", "unbind", "split", "chunk", "flatten", "select", "slice", "concat"):
            return Box(box_id, lines(node.op, args, small=8), shape, "white", "rounded,dashed", "fontsize=10")
        return Box(box_id, lines(node.op, args), shape, fill)

    # wires -------------------------------------------------------------------------------------
    def resolve(self, v: str) -> str:
        seen = 0
        while v in self.alias and seen < 64:  # nested stacks alias in steps
            v = self.alias[v]
            seen += 1
        return v

    def source(self, v: str) -> str | None:
        v = self.resolve(v)
        if v in self.inputs:
            return self.inputs[v]
        i = self.producer.get(v)
        return None if i is None or i in self.hidden else self.box_of.get(i)

    def wires(self) -> list[Wire]:
        out: dict[tuple[str, str, str], Wire] = {}
        seen: set[tuple[str, str, str]] = set()
        times: dict[tuple[str, str, str], int] = {}

        def add(src: str | None, dst: str, v: str, skip: bool = False) -> None:
            if src is None or src == dst or (src, dst, v) in seen:
                return
            seen.add((src, dst, v))
            label = axes_label(self.g.values[v])
            key = (src, dst, label)  # parallel wires of one type (q, k, v) are drawn as one
            times[key] = times.get(key, 0) + 1
            if key not in out:
                out[key] = Wire(src, dst, label, skip)

        for i, node in enumerate(self.g.nodes):
            if i in self.hidden:
                continue
            dst = self.box_of[i]
            skips = self.skip_inputs(i)
            for v in node.inputs:
                add(self.source(v), dst, self.resolve(v), v in skips)
        for port in self.g.outputs:
            add(self.source(port.value), f"out_{port.name}", self.resolve(port.value))
        for key, n in times.items():
            if n > 1:
                out[key].label += f" x{n}"
        return list(out.values())

    def skip_inputs(self, i: int) -> set[str]:
        """For `add(a, b)` where b is computed from a (a residual), {a}: the skip operand."""
        node = self.g.nodes[i]
        if node.op != "add" or len(node.inputs) != 2:
            return set()
        a, b = node.inputs
        if self._depends(b, a):
            return {a}
        if self._depends(a, b):
            return {b}
        return set()

    def _depends(self, v: str, on: str) -> bool:
        """Whether value v is computed (transitively) from value `on`."""
        start = self.producer.get(v)
        floor = self.producer.get(on, -1)
        if start is None or start <= floor:
            return False
        todo, seen = [start], {start}
        while todo:
            n = self.g.nodes[todo.pop()]
            for u in n.inputs:
                if u == on:
                    return True
                j = self.producer.get(u)
                if j is not None and j > floor and j not in seen:
                    seen.add(j)
                    todo.append(j)
        return False

    # the whole picture -------------------------------------------------------------------------
    def build(self) -> Diagram:
        self.inputs = {p.value: f"in_{p.name}" for p in self.g.inputs}
        root = Cluster("root", "", "white")
        for p in self.g.inputs:
            root.boxes.append(Box(f"in_{p.name}", lines(p.name, axes_label(p.type)), "box", "white",
                                  "rounded,bold", "color=\"#444444\""))
        self.build_scope("", root, 0)
        for p in self.g.outputs:
            root.boxes.append(Box(f"out_{p.name}", lines(p.name, axes_label(p.type)), "box", "white",
                                  "rounded,bold", "color=\"#444444\""))
        return Diagram(self.g.name, root, self.wires())


def build_diagram(graph: Graph, depth: int | None = None, expand: bool = False) -> Diagram:
    """The diagram of `graph`, scopes opened down to `depth` levels (all when None)."""
    return _Builder(graph, depth, expand).build()
