"""The classes of the `.py` file: one per distinct callable instance of the plan, children first.

For each block instance (and the model) `_Emitter.write` makes `__init__` (its children and
tensors), `reset_parameters` (the spec's initializers where torch's own do not apply) and `forward`
(a statement per IR node or child call over value ids, then loops over layers, names, and `del`
after last uses); instances whose class text is the same share the class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from archc.backends.quote import py_str
from archc.analysis.parallel import local_axes
from archc.backends.torch.constants import Hoist, constant_methods, plan_hoist
from archc.backends.torch.cpu import Group, call_text, conv_arguments, cpu_groups
from archc.backends.torch.inits import InitError, empty_call, init_call
from archc.backends.torch.local import local_expression
from archc.backends.torch.naming import RESERVED, Namer, node_base, sanitize
from archc.backends.torch.plan import Unit, plan
from archc.backends.torch.spelling import TUPLE_OPS, expression, last_uses, overwrites, signature, where
from archc.backends.torch.tree import ModuleEntry, TensorEntry, module_tree
from archc.errors import ArchError
from archc.ir.graph import BlockCall, Graph, Node, SpanModel
from archc.ops import registry
from archc.ops.conditional import MOE_SCOPE
from archc.passes.hoist_constants import constant_nodes

# ops that never return a view of an input: a value read by one of them may be overwritten later
NEW_STORAGE = ("groupnorm", "layernorm", "batchnorm", "rmsnorm")


def _init_call(t: TensorEntry, expr: str, graph: Graph) -> str:
    try:
        return init_call(t.decl.init, expr)
    except InitError as err:
        owner = next((n for n in graph.nodes if t.decl.name in n.params.values()), None)
        raise ArchError(f"parameter '{t.decl.name}': {err}", owner.span.to_span() if owner and owner.span else None) \
            from None


def _tensor_lines(m: ModuleEntry, base: str) -> list[str]:
    """`__init__` lines that create the tensors of module `m`, read as `base` (`self.attn`)."""
    out = []
    for t in m.tensors:
        empty = empty_call(t.decl.shape, t.decl.dtype)
        if t.decl.trainable:
            out.append(f"{base}{t.step} = nn.Parameter({empty})")
        elif t.step.endswith("]"):  # a name torch.nn.Module uses for a method: set the entry itself
            out.append(f"{base}{t.step} = {empty}")
        else:
            out.append(f"{base}.register_buffer({py_str(t.attr)}, {empty})")
    return out


@dataclass
class _Stmt:
    """One statement of a forward, over value ids: `writes = text(reads)`."""

    reads: list[str]
    writes: list[str]
    render: Callable[[dict[str, str]], list[str]]  # value names -> the statement's lines
    child: ModuleEntry | None = None  # the module a call statement calls


@dataclass
class ClassText:
    name: str
    doc: str
    init: list[str]
    reset: list[str]
    args: str
    forward: list[str]
    returns: str
    constants: list[str]  # the body of reset_constants (backends/torch/constants.py), if any

    def key(self) -> str:
        """Two instances share a class exactly when everything but the name is the same."""
        return "\n".join([self.doc, *self.init, "|", *self.reset, "|", *self.constants, "|", self.args,
                          *self.forward, self.returns])


class Emitter:
    """Writes one class per distinct callable instance of a plan, children first."""

    def __init__(self, graph: Graph, labels: dict[str, str], model_name: str, whole: bool = False) -> None:
        self.graph, self.labels = graph, labels
        self.root = module_tree(graph)
        self.plan = plan(graph, self.root)
        self.classes: dict[str, ClassText] = {}  # key -> class
        self.class_of: dict[str, str] = {}  # path -> class name
        self.class_names = Namer(RESERVED | {model_name})
        self.inplace = overwrites(graph)
        # axes a tensor-parallel rank holds part of: sizes read at run time (none for a model that
        # is never split: `whole`)
        self.local = {} if whole else local_axes(graph)
        self.reads = Counter(v for node in graph.nodes for v in node.inputs)
        self.model_name = model_name
        self.node_scopes = {n.scope for n in graph.nodes}
        self.tensors = {t.decl.name: t for m in self.root.walk() for t in m.tensors}
        self.cpu = cpu_groups(graph)  # node -> its CPU epilogue group (-O2: backends/torch/cpu.py)
        for path, unit in list(self.plan.units.items()):  # a list of layers that hold a group: its parent
            if unit.kind == "sequential" and any(i in self.cpu for c in unit.calls for i in range(c.start, c.stop)):
                del self.plan.units[path]  # calls them, so the group is one call there
        self.made_by = {v: i for i, node in enumerate(graph.nodes) for v in node.outputs}
        self.readers: dict[str, list[int]] = {}  # value -> the nodes that read it
        for i, node in enumerate(graph.nodes):
            for v in dict.fromkeys(node.inputs):
                self.readers.setdefault(v, []).append(i)
        self.uses_onednn = False  # did a forward spell a group (the file then holds onednn.py's functions)
        self.constant = constant_nodes(graph)  # hoist_constants' @constant nodes are read from buffers
        self.hoist = Hoist()  # the forward being written: its constants

    # -- the tree: which class each callable instance gets ------------------------------------
    def emit(self) -> list[ClassText]:
        for entry in reversed(self.root.walk()):
            unit = self.plan.units.get(entry.path)
            if unit is None or unit.kind in ("leaf", "sequential"):
                continue
            cls = self.write(unit)
            if unit.kind == "model":
                cls.name = self.model_name
                self.classes["<model>"] = cls
            elif cls.key() in self.classes:
                self.class_of[entry.path] = self.classes[cls.key()].name
            else:
                cls.name = f"\x00{len(self.classes)}\x00"  # named below, in the order a reader meets them
                self.classes[cls.key()] = cls
                self.class_of[entry.path] = cls.name
        final: dict[str, str] = {}
        for entry in self.root.walk():
            temp = self.class_of.get(entry.path)
            if temp is not None and temp not in final:
                final[temp] = self.class_names.take(_class_base(entry.kind))
        order: dict[str, int] = {}  # each class after the classes it holds, in the order a reader meets them
        for entry in _post_order(self.root):
            order.setdefault(self.class_of.get(entry.path, "<model>" if entry is self.root else ""), len(order))
        classes = sorted(self.classes.values(), key=lambda c: order.get(c.name if c.name != self.model_name
                                                                        else "<model>", len(order)))
        for cls in classes:
            cls.name = final.get(cls.name, cls.name)
            cls.init = [_rename(line, final) for line in cls.init]
            cls.forward = [_rename(line, final) for line in cls.forward]
        return classes

    def write(self, unit: Unit) -> ClassText:
        entry = unit.entry
        init, reset = self.init_lines(entry, "self")
        call = unit.calls[0]
        taken = RESERVED | {c.attr for c in entry.children} | {t.attr for t in entry.tensors}
        self.hoist = plan_hoist(self.graph, self.constant, range(call.start, call.stop),
                                lambda i: self.plan.owner(unit, i) is None and self.group_here(unit, call, i) is None
                                and i not in self.local, {*call.outputs}, set(taken))
        constants: list[str] = []
        if self.hoist.roots:
            more, constants = constant_methods(self.graph, self.hoist, self.labels)
            init += more
        names, stmts, args = self.forward(unit, call)
        self.hoist = Hoist()
        lines = self.render(stmts, names, {*call.outputs})
        returns = ", ".join(names[v] for v in call.outputs)
        doc = self.doc(unit)
        return ClassText("", doc, init, reset, args, lines, returns, constants)

    def doc(self, unit: Unit) -> str:
        if unit.kind == "model":
            return signature(self.graph)
        e = unit.entry
        where = f" ({self.labels.get(e.span.file, e.span.file)}:{e.span.line})" if e.span else ""
        return f"{e.kind}({e.args}){where}" if e.args else f"{e.kind}{where}"

    def constructor(self, m: ModuleEntry) -> str | None:
        """How a child module is made: a class, a torch module, a list; None for a holder."""
        unit = self.plan.units.get(m.path)
        if unit is not None:
            if unit.kind == "sequential":
                return self.made(m)
            return unit.module if unit.kind == "leaf" else f"{self.class_of[m.path]}()"
        if m.is_list:
            return None
        if not m.tensors and not m.children and m.path not in self.node_scopes:
            return "nn.Identity()"  # an instance a pass emptied (a folded BatchNorm)
        return None

    def init_lines(self, m: ModuleEntry, base: str) -> tuple[list[str], list[str]]:
        """`__init__` and `reset_parameters` lines of module `m` (read as `base`) and of the
        children it holds, down to the callable ones, which make and initialize themselves."""
        init = _tensor_lines(m, base)
        reset = [_init_call(t, base + t.step, self.graph) for t in m.tensors]
        run: list[ModuleEntry] = []  # numbered layers of one class in a block (a policy's stack)
        for child in [*m.children, None]:
            if child is not None and not m.is_list and child.attr.isdigit() and child.path in self.class_of and \
                    (not run or (self.class_of[run[0].path] == self.class_of[child.path]
                                 and int(child.attr) == int(run[-1].attr) + 1)):
                run.append(child)
                continue
            if len(run) > 1:
                init += [f"for i in range({run[0].attr}, {int(run[-1].attr) + 1}):",
                         f"    {base}.add_module(str(i), {self.class_of[run[0].path]}())" + where(run[0].span, self.labels)]
            elif run:
                init.append(f"{base + run[0].step} = {self.made(run[0])}" + where(run[0].span, self.labels))
            run = [child] if child is not None and not m.is_list and child.attr.isdigit() and \
                child.path in self.class_of else []
            if child is None or run:
                continue
            expr = base + child.step
            made = self.made(child)
            init.append((f"{base}.append({made})" if m.is_list else f"{expr} = {made}") + where(child.span, self.labels))
            if child.is_list and made != "nn.ModuleList()":  # nn.ModuleList([Block() ...]), nn.Sequential(...)
                for layer in child.children:  # its torch leaves take the spec's initializers
                    reset += self.leaf_resets(layer, expr + layer.step)
                continue
            unit = self.plan.units.get(child.path)
            if unit is None:  # a holder or a list: filled here
                i2, r2 = self.init_lines(child, expr)
                init += i2
                reset += r2
            else:
                reset += self.leaf_resets(child, expr)
        return init, reset

    def leaf_resets(self, m: ModuleEntry, expr: str) -> list[str]:
        """A torch leaf's initialization where the spec's initializer is not the module's own."""
        unit = self.plan.units.get(m.path)
        if unit is None or unit.kind != "leaf":
            return []
        return [_init_call(t, expr + t.step, self.graph) for t in m.tensors if t.attr not in unit.torch_inits]

    def made(self, m: ModuleEntry) -> str:
        """The expression that makes a child module."""
        if m.is_list:
            kinds = [self.class_of.get(c.path) for c in m.children]
            unit = self.plan.units.get(m.path)
            if unit is not None and unit.kind == "sequential":
                items = [self.constructor(c) or "" for c in m.children]
                if len(set(kinds)) == 1 and None not in kinds:
                    return f"nn.Sequential(*[{items[0]} for _ in range({len(items)})])"
                return f"nn.Sequential({', '.join(items)})"
            if len(set(kinds)) == 1 and None not in kinds:
                return f"nn.ModuleList([{kinds[0]}() for _ in range({len(kinds)})])"
            return "nn.ModuleList()"
        return self.constructor(m) or _scope_call(m)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, unit: Unit, call: BlockCall) -> tuple[dict[str, str], list[_Stmt], str]:
        graph, entry = self.graph, unit.entry
        namer = Namer(RESERVED | {"layer", "i"})
        names: dict[str, str] = {}
        if unit.kind == "model":
            ports = {p.value: p.name for p in graph.inputs}
            for v in call.inputs:
                names[v] = namer.take(ports[v])
            args = ", ".join(f"{names[v]}: torch.Tensor" for v in call.inputs)
        else:
            for k, v in enumerate(call.inputs):
                names[v] = namer.take("x" if len(call.inputs) == 1 else f"x{k}")
            args = ", ".join(f"{names[v]}: torch.Tensor" for v in call.inputs)
        cut = len(entry.path) + 1 if entry.path else 0
        own: set[str] = set()  # values made by this forward's own op statements
        stmts: list[_Stmt] = []
        for i in range(call.start, call.stop):
            node = graph.nodes[i]
            if i in self.hoist.nodes:  # a build-time constant: the forward reads its buffer
                if i in self.hoist.roots:
                    names[node.outputs[0]] = namer.take(node_base(node, graph)[cut:] or node.op)
                    stmts.append(self.buffer_stmt(node.outputs[0], self.hoist.roots[i], node.span))
                continue
            group = self.group_here(unit, call, i)
            if group is not None:  # one call at the group's last node; its other nodes write nothing
                if i == group.last:
                    base = node_base(node, graph)
                    names[node.outputs[0]] = namer.take((base[cut:] if node.scope.startswith(entry.path) else base)
                                                        or node.op)
                    stmts.append(self.group_stmt(unit, call, group))
                    own.update(node.outputs)
                continue
            child = self.plan.owner(unit, i)
            if child is not None and child.kind in ("block", "sequential"):
                sub = next((c for c in child.calls if c.start == i), None)
                if sub is None:
                    continue
                for k, v in enumerate(sub.outputs):
                    names[v] = namer.take(child.entry.path[cut:] + ("" if len(sub.outputs) == 1 else f"_{k}"))
                stmts.append(self.call_stmt(child.entry.relative(entry), sub.inputs, sub.outputs, child.entry))
                continue
            base = (node_base(node, graph)[cut:] if node.scope.startswith(entry.path) else node_base(node, graph)) \
                or node.op  # the instance's own op: named after it
            for k, v in enumerate(node.outputs):
                names[v] = namer.take(base if len(node.outputs) == 1 else f"{base}_{k}")
            if child is not None:  # a leaf module: the node is its call
                stmts.append(self.call_stmt(child.entry.relative(entry), list(node.inputs), list(node.outputs),
                                            child.entry, node.span))
                own.update(node.outputs)
                continue
            stmts.append(self.op_stmt(i, entry, own, set(call.outputs)))
            own.update(node.outputs)
        stmts = self.mixtures(stmts, names, namer, entry)
        return names, self.loops(stmts, names, entry, set(call.outputs)), args

    def group_here(self, unit: Unit, call: BlockCall, i: int) -> Group | None:
        """Node i's CPU epilogue group, when this forward runs all of it and the layer is a torch leaf."""
        group = self.cpu.get(i)
        if group is None or not all(call.start <= j < call.stop for j in group.nodes):
            return None
        leaf = self.plan.owner(unit, group.anchor)
        if leaf is None:  # the convolution is this forward's own statement
            if group.anchor in self.local or conv_arguments(self.graph, group, self.graph.nodes[group.anchor].params) \
                    is None:
                return None
        elif leaf.kind != "leaf" or not leaf.module.startswith(("nn.Conv2d(", "nn.Linear(")):
            return None
        return None if any(self.plan.owner(unit, j) is not None for j in group.members) else group

    def read_before(self, value: str, group: Group) -> bool:
        """Does every other reader of `value` run before the group and return a tensor of its own
        (no view of `value` that could be read after the group overwrites it)?"""
        for j in self.readers.get(value, []):
            if j == group.members[0]:  # the add that takes it (a convolution of it is a reader like any)
                continue
            node = self.graph.nodes[j]
            if j >= group.anchor or not (registry.get(node.op).fresh or node.op in NEW_STORAGE or j in self.cpu):
                return False
        return True

    def group_stmt(self, unit: Unit, call: BlockCall, group: Group) -> _Stmt:
        """The group as one call of onednn.py's functions; the add overwrites its other input where
        a fresh op made it in this forward and nothing reads it after the group (PoolFormer's MLP
        residual: the norm before the MLP read it first), as freezing's sum post-op does."""
        graph, entry = self.graph, unit.entry
        leaf = self.plan.owner(unit, group.anchor)
        self.uses_onednn = True
        anchor, last = graph.nodes[group.anchor], graph.nodes[group.last]
        reads = [anchor.inputs[0]] + ([group.other] if group.other is not None else [])
        other, maker = group.other, self.made_by.get(group.other or "")
        overwrite = other is not None and maker is not None and self.read_before(other, group) and \
            other not in call.inputs and other not in call.outputs and maker not in self.constant and \
            (registry.get(graph.nodes[maker].op).fresh or self.cpu.get(maker) is not None)
        params = {role: _tensor_expr(self.tensors[p], entry) for role, p in anchor.params.items()}
        layer = leaf.entry.relative(entry) if leaf is not None else conv_arguments(graph, group, params)
        assert layer is not None
        comment = where(last.span, self.labels)

        def render(names: dict[str, str]) -> list[str]:
            return [f"{names[last.outputs[0]]} = {call_text(group, graph, layer, names, overwrite)}{comment}"]

        return _Stmt(reads, list(last.outputs), render)

    def buffer_stmt(self, value: str, attr: str, span: SpanModel | None) -> _Stmt:
        comment = where(span, self.labels) + " (computed once: reset_constants)"

        def render(names: dict[str, str]) -> list[str]:
            return [f"{names[value]} = self.{attr}{comment}"]

        return _Stmt([], [value], render)

    def call_stmt(self, expr: str, ins: list[str], outs: list[str], child: ModuleEntry,
                  span: SpanModel | None = None) -> _Stmt:
        comment = where(span or child.span, self.labels)

        def render(names: dict[str, str]) -> list[str]:
            lhs = ", ".join(names[v] for v in outs)
            return [f"{lhs} = {expr}({', '.join(names[v] for v in ins)}){comment}"]

        return _Stmt(list(ins), list(outs), render, child)

    def op_stmt(self, i: int, entry: ModuleEntry, own: set[str], outputs: set[str]) -> _Stmt:
        graph, node = self.graph, self.graph.nodes[i]
        params = {role: _tensor_expr(self.tensors[p], entry) for role, p in node.params.items()}
        op = registry.get(node.op)
        v0 = node.inputs[0] if node.inputs else None
        inplace = i in self.inplace and v0 in own and v0 not in outputs

        def render(names: dict[str, str]) -> list[str]:
            ins = [names[v] for v in node.inputs]
            types = [graph.values[v] for v in node.inputs]
            expr = op.torch_inplace_expr(op.make_attrs(node.attrs), ins, params, types) if inplace else None
            if not expr and i in self.local:
                expr = local_expression(node, graph, ins, params, self.local[i])
            expr = expr or expression(node, graph, ins, params)
            outs = [names[v] for v in node.outputs]
            lhs = ", ".join(outs) if len(outs) > 1 else f"({outs[0]},)" if node.op in TUPLE_OPS else outs[0]
            return [f"{lhs} = {expr}{where(node.span, self.labels)}"]

        return _Stmt(list(node.inputs), list(node.outputs), render)

    def mixtures(self, stmts: list[_Stmt], names: dict[str, str], namer: Namer, entry: ModuleEntry) -> list[_Stmt]:
        """A mixture of block experts (`moe(E, Block)`: moe_select and the expert's call for each of
        its E experts, then moe_combine) as one `for` loop over the experts, as Hugging Face writes it."""
        out: list[_Stmt] = []
        k = 0
        while k < len(stmts):
            end = self._mixture_end(stmts, k)
            if end is None:
                out.append(stmts[k])
                k += 1
                continue
            out.append(self.mixture_stmt(stmts[k:end + 1], names, namer, entry))
            k = end + 1
        return out

    def _op_of(self, stmt: _Stmt, op: str) -> Node | None:
        """The node of an op statement that writes exactly that node's outputs, if it is `op`."""
        if stmt.child is not None or not stmt.writes:
            return None
        node = self.graph.nodes[self.made_by[stmt.writes[0]]]
        return node if node.op == op and list(node.outputs) == stmt.writes else None

    def _mixture_end(self, stmts: list[_Stmt], k: int) -> int | None:
        """The index of the moe_combine that ends a mixture starting at stmts[k], or None."""
        first = self._op_of(stmts[k], "moe_select")
        info = self.graph.scopes.get(first.scope) if first is not None else None
        if first is None or info is None or info.kind != MOE_SCOPE or first.attrs["expert"] != 0:
            return None
        count = first.attrs["experts"]
        end = k + 2 * count
        combine = self._op_of(stmts[end], "moe_combine") if end < len(stmts) else None
        if combine is None:
            return None
        parts: list[str] = []
        for e in range(count):
            select, call = self._op_of(stmts[k + 2 * e], "moe_select"), stmts[k + 2 * e + 1]
            child = call.child
            if select is None or select.inputs != first.inputs or \
                    select.attrs != {**first.attrs, "expert": e} or child is None or child.parent is None or \
                    child.parent.path != first.scope or child.attr != str(e) or \
                    self.class_of.get(child.path) != self.class_of.get(stmts[k + 1].child.path) or \
                    call.reads != [select.outputs[0]] or len(call.writes) != 1:
                return None
            parts += [call.writes[0], select.outputs[1], select.outputs[2]]
            if self.reads[select.outputs[0]] != 1:
                return None
        if list(combine.inputs) != [first.inputs[0], *parts] or any(self.reads[v] != 1 for v in parts):
            return None
        return end

    def mixture_stmt(self, run: list[_Stmt], names: dict[str, str], namer: Namer, entry: ModuleEntry) -> _Stmt:
        select, combine = self._op_of(run[0], "moe_select"), self._op_of(run[-1], "moe_combine")
        assert select is not None and combine is not None and run[1].child is not None
        experts = run[1].child.parent
        assert experts is not None
        parts, e, expert, routed, positions, weights = (namer.take(n) for n in
                                                        ("parts", "e", "expert", "routed", "positions", "weights"))
        op = registry.get("moe_select")
        attrs = op.make_attrs(select.attrs).model_copy(update={"expert": e})  # the loop's index, as the op spells it
        comment = where(combine.span, self.labels)

        def render(nm: dict[str, str]) -> list[str]:
            gather = op.torch_expr(attrs, [nm[v] for v in select.inputs], {}, [])
            add = registry.get("moe_combine").torch_expr(None, [nm[combine.inputs[0]], f"*{parts}"], {}, [])
            return [f"{parts} = []{comment}",
                    f"for {e}, {expert} in enumerate({experts.relative(entry)}):",
                    f"    {routed}, {positions}, {weights} = {gather}",
                    f"    {parts} += [{expert}({routed}), {positions}, {weights}]",
                    f"{nm[combine.outputs[0]]} = {add}",
                    f"del {parts}, {e}, {expert}, {routed}, {positions}, {weights}"]

        return _Stmt(list(select.inputs), list(combine.outputs), render)

    def loops(self, stmts: list[_Stmt], names: dict[str, str], entry: ModuleEntry, keep: set[str]) -> list[_Stmt]:
        """Consecutive layers of one stack (`0`, `1`, ...), of one class, each feeding the next: one
        `for` loop, over the list or, in a stack with a connection policy, over its numbered children."""
        out: list[_Stmt] = []
        k = 0
        while k < len(stmts):
            run = [stmts[k]]
            first = stmts[k].child
            while first is not None and k + len(run) < len(stmts) and \
                    self._next_layer(run[-1], stmts[k + len(run)], first):
                run.append(stmts[k + len(run)])
            if len(run) < 2:
                out.append(stmts[k])
                k += 1
                continue
            x_in, x_out = run[0].reads[0], run[-1].writes[0]
            later = {v for st in stmts[k + len(run):] for v in st.reads}
            if x_in not in later and x_in not in keep:  # the loop variable takes the input's name
                names[x_out] = names[x_in]
            out.append(self.loop_stmt(run, first, entry))
            k += len(run)
        return out

    def _next_layer(self, prev: _Stmt, nxt: _Stmt, first: ModuleEntry) -> bool:
        """Does `nxt` call the layer after `prev`'s, of the same class as `first`, on `prev`'s one
        result, which nothing else reads?"""
        a, b = prev.child, nxt.child
        if a is None or b is None or b.parent is not first.parent or not (a.attr.isdigit() and b.attr.isdigit()):
            return False
        if int(b.attr) != int(a.attr) + 1 or first.path not in self.class_of or \
                self.class_of.get(b.path) != self.class_of[first.path]:
            return False
        if len(prev.reads) != 1 or len(prev.writes) != 1 or nxt.reads != prev.writes or len(nxt.writes) != 1:
            return False
        return self.reads[prev.writes[0]] == self._reads_in(nxt, prev.writes[0])

    def _reads_in(self, stmt: _Stmt, v: str) -> int:
        """How many graph nodes read `v` inside the call `stmt` makes."""
        assert stmt.child is not None
        unit = self.plan.units[stmt.child.path]
        return sum(1 for c in unit.calls for i in range(c.start, c.stop) for u in self.graph.nodes[i].inputs if u == v)

    def loop_stmt(self, run: list[_Stmt], first: ModuleEntry, entry: ModuleEntry) -> _Stmt:
        lst = first.parent
        assert lst is not None
        last = run[-1].child
        assert last is not None
        a, b, n = int(first.attr), int(last.attr) + 1, len(lst.children)
        x_in, x_out = run[0].reads[0], run[-1].writes[0]
        rel = first.relative(entry)
        owner = rel[: -len(first.step)]
        if first.is_layer:
            loop = [f"for layer in {owner}{'' if (a, b) == (0, n) else f'[{a}:{b}]'}:"]
        else:  # numbered children of a block: `self.get_submodule("3")`
            loop = [f"for i in range({a}, {b}):", f"    layer = {owner}.get_submodule(str(i))"]

        def render(nm: dict[str, str]) -> list[str]:
            head = [] if nm[x_out] == nm[x_in] else [f"{nm[x_out]} = {nm[x_in]}"]
            return head + loop + [f"    {nm[x_out]} = layer({nm[x_out]})"]

        return _Stmt([x_in], [x_out], render)

    def render(self, stmts: list[_Stmt], names: dict[str, str], keep: set[str]) -> list[str]:
        """The statements with a `del` after each value's last use (graph outputs and this
        forward's results stay), as torch.fx's generated code does: a flat `forward` would
        otherwise hold every intermediate until it returns."""
        dead = last_uses([(st.reads, st.writes) for st in stmts], keep)
        lines: list[str] = []
        for st, gone in zip(stmts, dead, strict=True):
            lines += st.render(names)
            live = {names[v] for v in st.writes if v not in gone}  # a loop may rebind its input's name
            gone = [n for n in dict.fromkeys(names[v] for v in gone) if n not in live]
            if gone:
                lines.append(f"del {', '.join(gone)}")
        return lines


def _post_order(entry: ModuleEntry) -> list[ModuleEntry]:
    out: list[ModuleEntry] = []
    for child in entry.children:
        out += _post_order(child)
    return out + [entry]


def _rename(line: str, names: dict[str, str]) -> str:
    """A line with the temporary class names replaced by the final ones."""
    if "\x00" not in line:
        return line
    for temp, name in names.items():
        line = line.replace(temp, name)
    return line


def _tensor_expr(t: TensorEntry, entry: ModuleEntry) -> str:
    """A tensor as code in `entry`'s methods reads it."""
    owner_path = t.decl.name.rpartition(".")[0]
    m: ModuleEntry | None = t.owner  # type: ignore[attr-defined]
    assert m is not None and m.path == owner_path
    return m.relative(entry) + t.step


def _scope_call(m: ModuleEntry) -> str:
    return f"Scope({py_str(m.kind)}, {py_str(m.args)})" if m.args else f"Scope({py_str(m.kind)})"


def _class_base(kind: str) -> str:
    """A class name from a block or op name: `GPT2Block` stays, `hyper` becomes `Hyper`."""
    base = sanitize(kind) if kind else "Block"
    return base if base[0].isupper() else "".join(p[:1].upper() + p[1:] for p in base.split("_") if p) or "Block"
