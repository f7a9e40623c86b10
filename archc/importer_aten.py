"""The importer's emitter: an exported graph (archc/importer_export.py) as blocks, instances and
expressions; the table from ATen ops to archc ops is `Emitter.aten`."""

from __future__ import annotations

import math
import operator
import re
from typing import Any

from archc.importer_export import (ADD, Blocks, ATOM, MUL, PIPE, UNARY, Graph, Scope, Unit, Unmapped, binary, call,
                                   dtype_of, fmt, func, getitem_outs, is_name, is_tensor, pipe_unit, size_text,
                                   sizes, stack_text, valid_path, spec_text)

WEIGHT_OPS = {"conv1d", "conv2d", "linear", "batch_norm", "layer_norm", "group_norm", "embedding"}
ALIASES = {"contiguous", "clone", "alias", "detach", "lift_fresh_copy", "dropout_", "feature_dropout"}
SKIP = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async"}
UNARY_OPS = {"relu": "relu", "relu_": "relu", "silu": "silu", "silu_": "silu", "sigmoid": "sigmoid",
             "sigmoid_": "sigmoid", "tanh": "tanh", "tanh_": "tanh", "exp": "exp", "sqrt": "sqrt", "rsqrt": "rsqrt",
             "sin": "sin", "cos": "cos", "hardswish": "hardswish", "hardswish_": "hardswish",
             "hardsigmoid": "hardsigmoid", "hardsigmoid_": "hardsigmoid", "relu6": "relu6"}
ARITH = {"add": ("+", ADD), "add_": ("+", ADD), "sub": ("-", ADD), "sub_": ("-", ADD), "mul": ("*", MUL),
         "mul_": ("*", MUL), "div": ("/", MUL), "div_": ("/", MUL)}
BROADCASTING = {"cat", "add", "add_", "sub", "mul", "mul_", "div", "div_"}
_DIM_NAMES = {1: ["D"], 2: ["T", "D"], 3: ["C", "H", "W"], 4: ["C", "D", "H", "W"]}


def _call(node: Any, *names: str) -> bool:
    """Whether `node` is a call of one of the ATen ops `names`."""
    return getattr(node, "op", None) == "call_function" and packet(node) in names


def packet(node: Any) -> str:
    """`aten.conv2d.default` -> `conv2d`; '' for what is no ATen op."""
    text = str(node.target)
    return text.split(".")[1] if text.startswith("aten.") else ""


class Emitter:
    """Builds the spec text of one exported graph."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.blocks = Blocks()
        self.axes: list[str] = ["B"]
        self.alias: dict[Any, Any] = {}
        self.holders = self._holders()
        self.where = ""  # the path of the block being emitted
        self.first_input: list[Any] = []  # the first input of each block being emitted (arange's device)
        self.causal: dict[Any, bool] = {}  # attention -> causal, where its mask was recognized
        self.live = self._live()

    # --- structure ---

    def _holders(self) -> set[str]:
        holders = set()
        for node in self.g.ep.graph.nodes:
            if node.op == "call_function" and packet(node) in WEIGHT_OPS:
                std = self._standardized(node) if packet(node) == "conv2d" else None
                for arg in list(node.args) + ([std[0]] if std else []):
                    if self.g.is_param(arg):
                        holders.add(self.g.params[arg.name].rpartition(".")[0])
        return holders

    def _live(self) -> set[Any]:
        """The nodes the outputs need: an attention mask built from sizes alone (a causal mask)
        becomes `causal=true` and is not computed."""
        live: set[Any] = {self.g.output}
        todo = list(_flat(self.g.output.args[0]))
        while todo:
            node = todo.pop()
            if not hasattr(node, "op") or node in live:
                continue
            live.add(node)
            if self._encoding(node):
                continue  # computed by the spec's own code: what made it is not needed
            args = _flat(node.args) + _flat(list(node.kwargs.values()))
            if packet(node) == "conv2d" and self._standardized(node):  # its weight is the op's, not computed
                args = [a for a in args if a is not node.args[1]]
            if packet(node) == "scaled_dot_product_attention":
                mask = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
                if mask is not None and self._shape_only(mask):
                    self.causal[node] = self._is_causal(mask)
                    args = [a for a in args if a is not mask]
            todo += args
        return live

    def _encoding(self, node: Any) -> bool:
        """Whether `node` is a position encoding computed from sizes alone that archc writes as
        code (XCiT's and EdgeNeXt's Fourier encodings), evaluated on the example to know which;
        recorded in `self.g.computed`."""
        from archc.importer_constants import fourier

        if node.op != "call_function" or not is_tensor(node) or len(sizes(node)) != 4 \
                or dtype_of(node) != "f32" or not self._shape_only(node):
            return False
        try:
            value = _evaluate(node, {n: t for n, t in zip(self.g.user_inputs, self.g.example)}, {})
        except Exception:  # noqa: BLE001  (an op that cannot run outside the graph: then it is no constant here)
            return False
        found = fourier(value)
        if found is not None:
            self.g.computed[node] = found
        return found is not None

    def _shape_only(self, node: Any) -> bool:
        """Whether a value depends on the inputs' sizes only (not their values, nor weights)."""
        if not hasattr(self, "sizes_only"):  # once, in graph order (no recursion down deep graphs)
            self.sizes_only: set[Any] = set()
            for n in self.g.ep.graph.nodes:
                if n.op != "placeholder" and (packet(n) == "sym_size" or all(
                        a in self.sizes_only for a in _flat(n.args) + _flat(list(n.kwargs.values())) if hasattr(a, "op"))):
                    self.sizes_only.add(n)
        return node in self.sizes_only

    def _is_causal(self, mask: Any) -> bool:
        """Evaluate a size-only mask on the example inputs: the lower triangle (True, or 0 with
        -inf above) is causal, all True is none; anything else is not a mask archc has."""
        import torch

        value = _evaluate(mask, {n: t for n, t in zip(self.g.user_inputs, self.g.example)}, {})
        if value.dtype != torch.bool:
            value = value == 0
        t, s = value.shape[-2:]
        tril = torch.ones(t, s, dtype=torch.bool).tril(s - t)
        if bool((value == tril).all()):
            return True
        if bool(value.all()):
            return False
        raise Unmapped("an attention mask that is neither causal nor empty")

    def inlined(self, s: Scope) -> bool:
        import torch

        if s.path in self.holders:
            return True
        containers = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
        return type(s.module).__module__.startswith("torch.nn.") and not isinstance(s.module, containers)

    def resolve(self, node: Any) -> Any:
        while node in self.alias:
            node = self.alias[node]
        return node

    def boundary(self, s: Scope) -> tuple[list[Any], list[Any]]:
        """The tensors a call reads from outside and those it gives back, in graph order."""
        ins: list[Any] = []
        outs: list[Any] = []
        for node in self.g.ep.graph.nodes:
            if node not in s.nodes:
                continue
            if node not in self.live:
                continue
            for arg in _flat(node.args) + _flat(list(node.kwargs.values())):
                if not hasattr(arg, "op") or arg in s.nodes or not is_tensor(arg) or arg not in self.live:
                    continue
                if self.g.is_param(arg):
                    continue
                src = self.resolve(arg)
                if src not in ins and src not in s.nodes:
                    ins.append(src)
            if is_tensor(node) and any(u not in s.nodes and u in self.live for u in node.users):
                src = self.resolve(node)
                if src not in outs:
                    outs.append(src)
        return ins, outs

    def units(self, s: Scope) -> list[Unit]:
        """The units of a block's body: its own nodes, inlined modules' nodes, child blocks."""
        result: list[Unit] = []
        self._collect(s, None, result)
        return self.fold(self.channels_first_norms(self.merge_rearranges(result)))

    def _collect(self, s: Scope, owner: Scope | None, result: list[Unit]) -> None:
        for item in s.items:
            if isinstance(item, Scope):
                if not item.nodes & self.live:
                    continue
                if self.inlined(item) or not self.boundary(item)[0]:  # no tensor input: no block of its own
                    start = len(result)
                    self._collect(item, item, result)
                    self._name_leaf(item, result, start)
                else:
                    result.append(self.child(item))
            elif item in self.live:
                unit = self.aten(item)
                if isinstance(unit, list):  # steps of one op (a roll along two axes)
                    result += unit
                elif unit is not None:
                    result.append(unit)

    def _name_leaf(self, s: Scope, result: list[Unit], start: int) -> None:
        """A parameterless PyTorch layer that is one op is an instance named as the module."""
        made = result[start:]
        if len(made) == 1 and not made[0].declare and len(made[0].ins) == 1 and len(made[0].outs) == 1 \
                and made[0].callable_text and s.path not in self.holders:
            made[0].path = self.relative(s.path)
            made[0].declare = is_name(made[0].path)

    def relative(self, path: str) -> str:
        if not self.where:
            return path
        if path.startswith(self.where + "."):
            return path[len(self.where) + 1:]
        raise Unmapped(f"'{path}' belongs to a module outside '{self.where}' (shared across modules)")

    def child(self, s: Scope) -> Unit:
        """A call of a child module: a block instance, or a stack for an nn.Sequential chain."""
        rel = self.relative(s.path)
        if not valid_path(rel):
            raise Unmapped(f"the module name '{rel}' is not a name a spec can give (ASCII letters, digits, '_')")
        ins, outs = self.boundary(s)
        outer, self.where = self.where, s.path
        self.first_input.append(ins[0] if ins else None)
        try:
            units = self.units(s)
            ins, outs = self.boundary(s)  # again: the units made aliases (a reshape that changes nothing)
            if len(ins) == 1 and len(outs) == 1 and self._is_chain(units, "", ins[0], outs[0]):
                return Unit(ins, outs, None, rel, self.stack_text(units), True)  # type: ignore[arg-type]
            name = self.block(s, ins, outs, units)
        finally:
            self.where = outer
            self.first_input.pop()
        return Unit(ins, outs, None, rel, f"{name}()", True)  # type: ignore[arg-type]

    def _is_chain(self, units: list[Unit], prefix: str, first: Any, last: Any) -> bool:
        if not units:
            return False
        prev = first
        for k, u in enumerate(units):
            if u.path != (f"{prefix}.{k}" if prefix else str(k)) or len(u.ins) != 1 or len(u.outs) != 1 \
                    or u.ins[0] is not prev or not u.callable_text:
                return False
            prev = u.outs[0]
        return prev is last

    def stack_text(self, layers: list[Unit]) -> str:
        return stack_text([u.callable_text for u in layers])

    def merge_rearranges(self, units: list[Unit]) -> list[Unit]:
        """A rearrange of a rearrange used once is one rearrange (a reshape into heads and its
        transpose: `b t (h d) -> b h t d`) where the first gives and the second takes plain axes."""
        uses = _uses(units)
        made = {u.outs[0]: u for u in units if u.pattern is not None}
        out: list[Unit] = []
        dropped: set[int] = set()
        for u in units:
            first = made.get(u.ins[0]) if u.pattern is not None else None
            if first is not None and uses.get(u.ins[0]) == 1 and _atoms(first.pattern[1]) \
                    and _atoms(u.pattern[0]) and len(first.pattern[1]) == len(u.pattern[0]):
                rename = dict(zip(u.pattern[0], first.pattern[1]))
                fresh = iter(n for n in (f"a{i}" for i in range(100, 200)) if n not in first.pattern[0])
                for el in u.pattern[1]:
                    for name in re.findall(r"\w+", el):
                        if name not in rename and not name.isdigit():  # `1`: a size-1 axis
                            rename[name] = next(fresh)
                right = [re.sub(r"\w+", lambda m: rename.get(m.group(0), m.group(0)), el) for el in u.pattern[1]]
                keys = {**first.pattern[2], **{rename[k]: v for k, v in u.pattern[2].items()}}
                merged = rearrange_unit(first.ins[0], u.outs[0], first.pattern[0], right, keys)
                dropped.add(id(first))
                made[u.outs[0]] = merged
                out.append(merged)
            else:
                out.append(u)
        return [u for u in out if id(u) not in dropped]

    def channels_first_norms(self, units: list[Unit]) -> list[Unit]:
        """`b c h w -> b h w c`, a layernorm, and back: `layernorm(dim=1)` (timm's LayerNorm2d)."""
        uses = _uses(units)
        made = {o: u for u in units for o in u.outs}
        drop: set[int] = set()
        for u in units:
            norm = made.get(u.ins[0]) if u.pattern is not None and len(u.ins) == 1 else None
            first = made.get(norm.ins[0]) if norm is not None and len(norm.ins) == 1 else None
            if first is None or first.pattern is None or not norm.callable_text.startswith("layernorm(") \
                    or "dim=" in norm.callable_text or uses.get(u.ins[0]) != 1 or uses.get(norm.ins[0]) != 1:
                continue
            left, right = first.pattern[:2]
            n = len(left)
            if not (_atoms(left) and n >= 3 and right == [left[0], *left[2:], left[1]]
                    and u.pattern[1] == [u.pattern[0][0], u.pattern[0][-1], *u.pattern[0][1:-1]]):
                continue
            inner = norm.callable_text[len("layernorm("):-1]
            norm.callable_text = "layernorm(" + ", ".join([p for p in (inner, "dim=1") if p]) + ")"
            if not norm.declare:
                text = norm.callable_text
                norm.render = lambda a, text=text: (f"{a[0][0]} >> {text}", PIPE)
            norm.ins, norm.outs = first.ins, u.outs
            drop |= {id(first), id(u)}
        return [u for u in units if id(u) not in drop]

    def fold(self, units: list[Unit]) -> list[Unit]:
        """Calls NAME.0, NAME.1, ... that feed each other (a ModuleList loop) as one stack."""
        uses = _uses(units)
        out: list[Unit] = []
        i = 0
        while i < len(units):
            u = units[i]
            m = re.fullmatch(r"(.+)\.0", u.path)
            run = [u]
            if m and len(u.ins) == 1 and len(u.outs) == 1 and u.callable_text:
                prefix = m.group(1)
                while i + len(run) < len(units):
                    nxt, prev = units[i + len(run)], run[-1]
                    if nxt.path != f"{prefix}.{len(run)}" or len(nxt.ins) != 1 or len(nxt.outs) != 1 \
                            or nxt.ins[0] is not prev.outs[0] or uses.get(prev.outs[0], 0) != 1 or not nxt.callable_text:
                        break
                    run.append(nxt)
                if len(run) > 1 or u.callable_text.endswith("()") and u.callable_text[0].isupper():
                    out.append(Unit(run[0].ins, run[-1].outs, None, prefix,  # type: ignore[arg-type]
                                    self.stack_text(run), True))
                    i += len(run)
                    continue
            out.append(u)
            i += 1
        return out

    # --- blocks ---

    def signature(self, ins: list[Any], outs: list[Any], model: bool) -> tuple[list[str], str]:
        """The input types (named `x`, `x1`, ...) and the output type text of a body."""
        names: dict[Any, str] = {}  # ((rank, position), size) -> axis name
        params = []
        for i, node in enumerate(ins):
            dims = sizes(node)
            if model:
                text = self._type(dims)
                dt = dtype_of(node)
                text = text if dt == "f32" else dt + text
            else:
                text = self._named(dims, names, "")
            params.append(f"{'x' if i == 0 else f'x{i}'}: {text}")
        types = [self._type(sizes(n)) if model else self._named(sizes(n), names, "o") for n in outs]
        out = types[0] if len(types) == 1 else "(" + ", ".join(types) + ")"
        self.channels = {size: name for ((rank, pos, output), size), name in names.items()
                         if not output and pos == (1 if rank == 4 else rank - 1)}
        return params, out

    def _type(self, dims: list[Any]) -> str:
        if not dims:
            raise Unmapped("a scalar (0-d) tensor crosses a module boundary")
        return "[" + ", ".join(size_text(d, self.g.symbols) for d in dims) + "]"

    def _named(self, dims: list[Any], names: dict[tuple[int, int], str], suffix: str) -> str:
        """A block's type with its axes named (`[B, C, H, W]`): an input's axes get the names of
        their position; an output's axis reuses the name of an input axis of its size (the same
        position first), else gets a new one (`Co`, `Ho`, ...)."""
        if not dims:
            raise Unmapped("a scalar (0-d) tensor crosses a module boundary")
        base = _DIM_NAMES.get(len(dims) - 1, [f"N{j}" for j in range(len(dims) - 1)])
        parts = []
        for j, d in enumerate(dims):
            if j == 0 or not isinstance(d, int):
                parts.append(size_text(d, self.g.symbols))
                continue
            inputs = [(key, name) for key, name in names.items() if not key[0][2]]
            same = [name for (rank, size), name in inputs if size == d and rank[:2] == (len(dims), j)]
            other = [name for (rank, size), name in inputs if size == d]
            if suffix and (same or other):
                parts.append((same or other)[0])
                continue
            if not suffix and same:
                parts.append(same[0])
                continue
            name, n = base[j - 1] + suffix, 2
            while name in names.values():
                name, n = f"{base[j - 1]}{suffix}{n}", n + 1
            names[((len(dims), j, bool(suffix)), d)] = name
            if name not in self.axes:
                self.axes.append(name)
            parts.append(name)
        return "[" + ", ".join(parts) + "]"

    def by_axis(self, line: str) -> str:
        """Widths written as the input's channel axis where they are its size (`conv2d(C, 3)`,
        `groups=C`), so one block serves every width it is called at."""
        def sub(m: re.Match[str]) -> str:
            size = int(m.group(2))
            return m.group(1) + self.channels[size] if size in self.channels else m.group(0)

        line = re.sub(r"\b((?:linear|conv1d|conv2d)\()(\d+)\b", sub, line)
        return re.sub(r"\b(groups=)(\d+)\b", sub, line)

    def block(self, s: Scope, ins: list[Any], outs: list[Any], units: list[Unit]) -> str:
        params, out = self.signature(ins, outs, model=False)
        lines = [self.by_axis(line) for line in self.body(units, ins, outs)]
        body = f"({', '.join(params)}) -> {out} {{\n" + "".join(f"    {line}\n" for line in lines) + "}\n"
        return self.blocks.define(s.type_name, body)

    def spec(self, source: str) -> str:
        root = self.g.tree()
        ins = [self.resolve(n) for n in self.g.user_inputs]
        outs = [self.resolve(n) for n in _flat(self.g.output.args[0])]
        if not outs or not all(is_tensor(n) for n in outs):
            raise Unmapped("the model returns something other than tensors")
        self.first_input.append(ins[0])
        units = self.units(root)
        outs = [self.resolve(n) for n in _flat(self.g.output.args[0])]
        params, out = self.signature(ins, outs, model=True)
        lines = self.body(units, ins, outs)
        name = root.type_name if root.type_name != "Block" else "Imported"
        model = f"model {name} ({', '.join(params)}) -> {out} {{\n" + "".join(f"    {ln}\n" for ln in lines) + "}\n"
        return spec_text(source, self.axes, self.blocks.texts, model)

    def body(self, units: list[Unit], ins: list[Any], outs: list[Any]) -> list[str]:
        flow = Flow(self.g, self.where)
        for i, node in enumerate(ins):
            flow.values[node] = ("x" if i == 0 else f"x{i}", ATOM)
            flow.taken.add(flow.values[node][0])
        flow.device = "x" if ins else None
        uses = _uses(units)
        for node in outs:
            uses[node] = uses.get(node, 0) + 1
        for unit in units:
            flow.apply(unit, uses)
        flow.lines.append("return " + ", ".join(flow.value(n)[0] for n in outs))
        return flow.decls + flow.lines

    # --- ATen ops ---

    def aten(self, node: Any) -> Unit | None:
        """The unit of one graph node; None for what computes nothing (an alias, an assert)."""
        if node in self.g.computed:
            return None  # the spec computes it where it is used (Flow.value)
        if node.target is operator.getitem:
            if is_tensor(node.args[0]):
                raise Unmapped(f"indexing '{node.args[0].name}' with [{node.args[1]}]")
            return None  # an output of a multi-output op, defined by that op's unit
        name = packet(node)
        if not is_tensor(node) and name not in ("split", "split_with_sizes", "unbind", "chunk"):
            val = node.meta.get("val")
            if isinstance(val, (list, tuple)) and any(hasattr(v, "shape") for v in val):
                what = getattr(node.target, "__name__", str(node.target))
                raise Unmapped(f"{self._at(node)}: the op {what} (tensors) has no archc op (yet)")
            return None  # symbolic sizes and asserts: the types carry them
        handler = getattr(self, f"_op_{name}", None)
        if name in ALIASES or (name in ("to", "type_as") and dtype_of(node) == dtype_of(node.args[0])):
            self.alias[node] = node.args[0]
            return None
        if name in UNARY_OPS:
            return pipe_unit([self.resolve(node.args[0])], node, call(UNARY_OPS[name]))
        if name in ARITH:
            return self._arith(node, *ARITH[name])
        if handler is None:
            raise Unmapped(f"{self._at(node)}: the op {node.target} has no archc op (yet)")
        return handler(node)

    def _at(self, node: Any) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        path, kind = list(stack.values())[-1] if stack else ("", type(self.g.module))
        kind = kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"
        return f"in '{path}' ({kind.rpartition('.')[2]})" if path else "in the model's own forward"

    def weights(self, node: Any, op: str, named: dict[str, Any]) -> str:
        """The instance path (relative to the block) of an op's weights, checked to be one
        module's `weight`, `bias`, ... as archc names them."""
        paths = set()
        for attr, arg in named.items():
            if arg is None:
                continue
            if not self.g.is_param(arg):
                raise Unmapped(f"{self._at(node)}: the {attr} of {op} is computed, not a parameter (archc's {op} "
                               "owns its weights)")
            path, _, leaf = self.g.params[arg.name].rpartition(".")
            if leaf != attr:
                raise Unmapped(f"{self._at(node)}: {op} uses the tensor '{self.g.params[arg.name]}' as its {attr}")
            paths.add(path)
        if len(paths) != 1:
            raise Unmapped(f"{self._at(node)}: the weights of {op} come from several modules")
        path = paths.pop()
        if path == self.where:
            raise Unmapped(f"{self._at(node)}: the module applies {op} to its own weights in its forward "
                           "(archc names an op's weights after an instance of it)")
        rel = self.relative(path)
        if not valid_path(rel):
            raise Unmapped(f"the module name '{rel}' is not a name a spec can give (ASCII letters, digits, '_')")
        return rel

    def _weighted(self, node: Any, x: Any, op: str, named: dict[str, Any], text: str) -> Unit:
        path = self.weights(node, op, named)
        return pipe_unit([self.resolve(x)], node, text, path, True)

    def _op_linear(self, node: Any) -> Unit:
        x, w, b = (list(node.args) + [None])[:3]
        if b is not None and not self.g.is_param(b) and self.g.is_param(w):
            return self._biased_linear(node, x, w, b)
        return self._weighted(node, x, "linear", {"weight": w, "bias": b},
                              call("linear", sizes(w)[0], bias=b is not None, defaults={"bias": True}))

    def _biased_linear(self, node: Any, x: Any, w: Any, b: Any) -> Unit:
        """A linear whose bias is computed (EVA's `cat(q_bias, k_bias, v_bias)`): the linear of
        its weight without a bias, plus that bias."""
        path = self.weights(node, "linear", {"weight": w})
        text = call("linear", sizes(w)[0], bias=False)
        unit = Unit([self.resolve(x), self.resolve(b)], [node], None, path, text, True)  # type: ignore[arg-type]
        unit.plus = True
        return unit

    def _op_conv2d(self, node: Any, op: str = "conv2d") -> Unit:
        args = list(node.args) + [None] * 7
        x, w, b = args[:3]
        stride, padding, dilation, groups = [a if a is not None else d for a, d in zip(args[3:7], (1, 0, 1, 1))]
        if isinstance(padding, str) and padding == "valid":
            padding = 0
        kernel = sizes(w)[2:]
        if op == "conv2d" and w.name in self.g.nonpersistent and b is None:
            return self._blur(node, x, w, stride, padding, dilation, groups)
        std = self._standardized(node) if op == "conv2d" else None
        if std is not None:
            weight, gain, gamma, eps = std
            text = call("std_conv2d", sizes(weight)[0], tuple(kernel), stride=_tuple(stride), padding=_tuple(padding),
                        dilation=_tuple(dilation), groups=int(groups), bias=b is not None, gamma=gamma, eps=eps,
                        defaults={"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True,
                                  "gamma": 1.0, "eps": 1e-6})
            return self._weighted(node, x, "std_conv2d", {"weight": weight, "bias": b, "gain": gain}, text)
        text = call(op, sizes(w)[0], tuple(kernel), stride=_tuple(stride), padding=_tuple(padding),
                    dilation=_tuple(dilation), groups=int(groups), bias=b is not None,
                    defaults={"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True})
        return self._weighted(node, x, op, {"weight": w, "bias": b}, text)

    def _standardized(self, node: Any) -> tuple[Any, Any, float, float] | None:
        """A conv2d whose weight is Scaled Weight Standardization of a parameter (timm's
        ScaledStdConv2d: `batch_norm(W.reshape(1, C, -1), weight=(gain * scale).view(-1),
        training=True).reshape_as(W)`) as (W, gain, gamma, eps), gamma = scale * sqrt(fan_in);
        None for any other weight."""
        w = node.args[1]
        if not hasattr(w, "op") or packet(w) not in ("reshape_as", "reshape", "view") or self.g.is_param(w):
            return None
        bn = w.args[0]
        if not _call(bn, "batch_norm") or len(bn.args) < 8:
            return None
        flat, scaled, bias, mean, var, training, _, eps = bn.args[:8]
        if bias is not None or mean is not None or var is not None or not training:
            return None
        weight = flat.args[0] if _call(flat, "reshape", "view") else None
        if not self.g.is_param(weight) or sizes(w) != sizes(weight) or sizes(flat)[:2] != [1, sizes(weight)[0]]:
            return None
        mul = scaled.args[0] if _call(scaled, "view", "reshape") else None
        if not _call(mul, "mul") or not self.g.is_param(mul.args[0]) or not isinstance(mul.args[1], (int, float)):
            return None
        gain = mul.args[0]
        if sizes(gain) != [sizes(weight)[0], 1, 1, 1]:
            return None
        gamma = float(f"{float(mul.args[1]) * math.sqrt(math.prod(sizes(weight)[1:])):.12g}")  # 1.0, not 1.0000000000000002
        return weight, gain, gamma, float(eps)

    def _blur(self, node: Any, x: Any, w: Any, stride: Any, padding: Any, dilation: Any, groups: Any) -> Unit:
        """A depthwise conv2d with a fixed binomial filter (timm's BlurPool2d: [1, 2, 1] x [1, 2, 1] / 16
        in a non-persistent buffer) as what it is: k - 1 averages over 2 x 2 windows, then every
        `stride`-th row and column."""
        import torch

        target = self.g.params[w.name]
        filt = self.g.module.get_buffer(target)
        c, _, k, k2 = filt.shape
        taps = torch.tensor([math.comb(k - 1, i) for i in range(k)], dtype=torch.float64)
        want = (taps[:, None] * taps[None, :] / taps.sum() ** 2).to(filt.dtype).expand(c, 1, k, k)
        if k != k2 or k < 2 or groups != c or _tuple(padding) != 0 or _tuple(dilation) != 1 \
                or not torch.allclose(filt, want, rtol=0, atol=1e-7):
            raise Unmapped(f"{self._at(node)}: conv2d uses the tensor '{target}' as its weight")
        stride = _tuple(stride)
        text = " >> ".join([call("avgpool2d", 2, stride=1)] * (k - 1))
        if stride != 1:
            text += " >> " + " >> ".join(call("slice", d, step=stride) for d in (2, 3))
        return pipe_unit([self.resolve(x)], node, text)

    def _op_conv1d(self, node: Any) -> Unit:
        return self._op_conv2d(node, "conv1d")

    def _op_batch_norm(self, node: Any) -> Unit:
        x, w, b, mean, var, training, momentum, eps = node.args[:8]
        source = x
        while hasattr(source, "op") and packet(source) in ("view", "reshape", "_unsafe_view"):
            source = source.args[0]
        if training and self.g.is_param(source):
            raise Unmapped(f"{self._at(node)}: a weight standardized in the forward (batch_norm of the parameter "
                           f"'{self.g.params[source.name]}') that is not Scaled Weight Standardization with a gain "
                           "(std_conv2d, timm's ScaledStdConv2d); archc's other convolutions own plain weights")
        if training:
            raise Unmapped(f"{self._at(node)}: batch_norm in training mode (no running statistics)")
        text = call("batchnorm", eps=float(eps), momentum=float(momentum), affine=w is not None,
                    defaults={"eps": 1e-5, "momentum": 0.1, "affine": True})
        return self._weighted(node, x, "batchnorm", {"weight": w, "bias": b, "running_mean": mean,
                                                     "running_var": var}, text)

    def _op_layer_norm(self, node: Any) -> Unit:
        args = list(node.args) + [None, None, 1e-5]
        x, shape, w, b, eps = args[:5]
        if len(shape) != 1:
            raise Unmapped(f"{self._at(node)}: layer_norm over {len(shape)} axes (archc's layernorm normalizes one)")
        if w is None and b is not None:
            raise Unmapped(f"{self._at(node)}: layer_norm with a bias and no weight")
        text = call("layernorm", eps=float(eps), affine=w is not None, bias=b is not None or w is None,
                    defaults={"eps": 1e-5, "affine": True, "bias": True})
        if w is None:
            return pipe_unit([self.resolve(x)], node, text)
        return self._weighted(node, x, "layernorm", {"weight": w, "bias": b}, text)

    def _op_group_norm(self, node: Any) -> Unit:
        args = list(node.args) + [None, None, 1e-5]
        x, groups, w, b, eps = args[:5]
        if (w is None) != (b is None):
            raise Unmapped(f"{self._at(node)}: group_norm with only one of weight and bias")
        text = call("groupnorm", int(groups), eps=float(eps), affine=w is not None,
                    defaults={"eps": 1e-5, "affine": True})
        if w is None:
            return pipe_unit([self.resolve(x)], node, text)
        return self._weighted(node, x, "groupnorm", {"weight": w, "bias": b}, text)

    def _op_embedding(self, node: Any) -> Unit:
        w, idx = node.args[:2]
        if len(node.args) > 2 and node.args[2] not in (-1, None):
            pass  # padding_idx changes only the gradient
        return self._weighted(node, idx, "embedding", {"weight": w}, call("embedding", *sizes(w)))

    def _op_hardtanh(self, node: Any) -> Unit:
        low, high = (list(node.args[1:3]) + [-1.0, 1.0][len(node.args) - 1:])[:2]
        if (float(low), float(high)) != (0.0, 6.0):
            raise Unmapped(f"{self._at(node)}: hardtanh({low}, {high}) (archc has relu6)")
        return pipe_unit([self.resolve(node.args[0])], node, call("relu6"))

    _op_hardtanh_ = _op_hardtanh

    def _op_leaky_relu(self, node: Any) -> Unit:
        slope = float(node.args[1]) if len(node.args) > 1 else 0.01
        return pipe_unit([self.resolve(node.args[0])], node, call("leaky_relu", slope=slope, defaults={"slope": 0.01}))

    _op_leaky_relu_ = _op_leaky_relu

    def _op_gelu(self, node: Any) -> Unit:
        approx = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return pipe_unit([self.resolve(node.args[0])], node,
                         call("gelu", approximate=approx, defaults={"approximate": "none"}))

    _op_gelu_ = _op_gelu

    def _op_dropout(self, node: Any) -> Unit:
        return pipe_unit([self.resolve(node.args[0])], node, call("dropout", float(node.args[1])))

    def _op_softmax(self, node: Any) -> Unit:
        dim = _dim(node.args[1], len(sizes(node)))
        return pipe_unit([self.resolve(node.args[0])], node, call("softmax", dim=dim, defaults={"dim": len(sizes(node)) - 1}))

    _op__softmax = _op_softmax

    def _op_mean(self, node: Any) -> Unit:
        x = node.args[0]
        rank = len(sizes(x))
        dims = [_dim(d, rank) for d in (node.args[1] if len(node.args) > 1 else range(rank))]
        keep = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
        return pipe_unit([self.resolve(x)], node, call("mean", list(dims), keepdim=keep, defaults={"keepdim": False}))

    def _op_sum(self, node: Any) -> Unit:
        """`sum` as the mean times the count (archc has `mean`)."""
        x = node.args[0]
        shape = sizes(x)
        dims = [_dim(d, len(shape)) for d in (node.args[1] if len(node.args) > 1 and node.args[1] else range(len(shape)))]
        keep = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
        count = _product([shape[d] for d in dims])
        if not isinstance(count, int) or node.kwargs.get("dtype") is not None:
            raise Unmapped(f"{self._at(node)}: a sum over the batch axis")
        text = call("mean", list(dims), keepdim=keep, defaults={"keepdim": False})
        return Unit([self.resolve(x)], [node], lambda a: (f"({a[0][0]} >> {text}) * {count}", MUL))

    def _op_stack(self, node: Any) -> Unit:
        """`stack` as a concat of the tensors with a new axis of size 1."""
        tensors = [self.resolve(t) for t in node.args[0]]
        rank = len(sizes(node))
        dim = _dim(node.args[1] if len(node.args) > 1 else 0, rank)
        names = _axis_names(rank - 1)
        pattern = " ".join(names) + " -> " + " ".join(names[:dim] + ["1"] + names[dim:])
        return Unit(tensors, [node], lambda a: ("concat(" + ", ".join(f"{t} >> rearrange({fmt(pattern)})" for t, _ in a)
                                                + f", dim={dim})", ATOM))

    def _op_adaptive_avg_pool2d(self, node: Any) -> Unit:
        return pipe_unit([self.resolve(node.args[0])], node, call("adaptive_avgpool2d", _tuple(node.args[1])))

    def _op_avg_pool2d(self, node: Any) -> Unit:
        args = list(node.args) + [None] * 7
        x, k, stride, padding, ceil, include, divisor = args[:7]
        if divisor is not None:
            raise Unmapped(f"{self._at(node)}: avg_pool2d with divisor_override")
        stride = stride or k
        text = call("avgpool2d", _tuple(k), stride=_tuple(stride), padding=_tuple(padding or 0), ceil_mode=bool(ceil),
                    count_include_pad=include is not False,
                    defaults={"stride": _tuple(k), "padding": 0, "ceil_mode": False, "count_include_pad": True})
        return pipe_unit([self.resolve(x)], node, text)

    def _op_max_pool2d(self, node: Any) -> Unit:
        args = list(node.args) + [None] * 6
        x, k, stride, padding, dilation, ceil = args[:6]
        if dilation is not None and _tuple(dilation) != 1:
            raise Unmapped(f"{self._at(node)}: max_pool2d with dilation")
        stride = stride or k
        text = call("maxpool2d", _tuple(k), stride=_tuple(stride), padding=_tuple(padding or 0), ceil_mode=bool(ceil),
                    defaults={"stride": _tuple(k), "padding": 0, "ceil_mode": False})
        return pipe_unit([self.resolve(x)], node, text)

    def _op_flatten(self, node: Any) -> Unit:
        return self._view(node)

    def _view(self, node: Any) -> Unit:
        x = node.args[0]
        a, b = sizes(x), sizes(node)
        if a == b:
            self.alias[node] = x
            return None  # type: ignore[return-value]
        if len(a) >= 2 and b == a[:1] + [_product(a[1:])]:
            return pipe_unit([self.resolve(x)], node, "flatten()")
        try:
            left, _, right = _view_pattern(a, b, self._at(node)).partition(" -> ")
            keys = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", _split_sizes(a, b))}
        except Unmapped:
            left_els, right_els, keys = _regrouped(a, b, self._at(node))
            return rearrange_unit(self.resolve(x), node, left_els, right_els, keys)
        return rearrange_unit(self.resolve(x), node, _elements(left), _elements(right), keys)

    _op_view = _op_reshape = _op__unsafe_view = _op_unsqueeze = _op_squeeze = _op_reshape_as = _op_flatten

    def _op_permute(self, node: Any) -> Unit:
        x = node.args[0]
        rank = len(sizes(x))
        perm = [_dim(d, rank) for d in node.args[1]]
        return self._permute(node, x, perm)

    def _permute(self, node: Any, x: Any, perm: list[int]) -> Unit:
        names = _axis_names(len(perm))
        return rearrange_unit(self.resolve(x), node, names, [names[p] for p in perm], {})

    def _op_transpose(self, node: Any) -> Unit:
        x = node.args[0]
        rank = len(sizes(x))
        perm = list(range(rank))
        i, j = _dim(node.args[1], rank), _dim(node.args[2], rank)
        perm[i], perm[j] = perm[j], perm[i]
        return self._permute(node, x, perm)

    def _op_t(self, node: Any) -> Unit:
        return self._permute(node, node.args[0], [1, 0])

    def _op_cat(self, node: Any) -> Unit:
        tensors = [self.resolve(t) for t in node.args[0]]
        rank = len(sizes(node))
        dim = _dim(node.args[1] if len(node.args) > 1 else 0, rank)
        return Unit(tensors, [node], func("concat", f"dim={dim}"))

    def _op_split(self, node: Any) -> Unit:
        x = node.args[0]
        rank = len(sizes(x))
        dim = _dim(node.args[2] if len(node.args) > 2 else 0, rank)
        parts = [p.shape[dim] for p in node.meta["val"]]
        return self._multi(node, x, len(parts), call("split", [int(p) for p in parts], dim=dim) if len(parts) > 1
                           else None)

    _op_split_with_sizes = _op_split

    def _op_chunk(self, node: Any) -> Unit:
        return self._op_split(node)

    def _op_unbind(self, node: Any) -> Unit:
        x = node.args[0]
        dim = _dim(node.args[1] if len(node.args) > 1 else 0, len(sizes(x)))
        return self._multi(node, x, len(node.meta["val"]), call("unbind", dim=dim, defaults={"dim": 0}))

    def _multi(self, node: Any, x: Any, count: int, text: str | None) -> Unit:
        outs = getitem_outs(node, count)
        if text is None:
            self.alias[outs[0]] = x
            return None  # type: ignore[return-value]
        return Unit([self.resolve(x)], outs, lambda a: (f"{a[0][0]} >> {text}", PIPE))

    def _op_select(self, node: Any) -> Unit:
        x, dim, index = node.args[:3]
        rank = len(sizes(x))
        dim = _dim(dim, rank)
        if index < 0:
            index += sizes(x)[dim]
        return Unit([self.resolve(x)], [node], func("select", f"{dim}, {index}"))

    def _op_slice(self, node: Any) -> Unit:
        args = list(node.args) + [None] * 5
        x, dim, start, end, step = args[:5]
        rank = len(sizes(x))
        dim = _dim(dim or 0, rank)
        size = sizes(x)[dim]
        start = start or 0
        step = step or 1
        if step != 1 and not isinstance(size, int):
            raise Unmapped(f"{self._at(node)}: a slice of the batch axis with step {step}")
        if step == 1 and start == 0 and (end is None or end >= 2**62 or isinstance(size, int) and end >= size):
            self.alias[node] = x
            return None  # type: ignore[return-value]
        if not isinstance(size, int):
            raise Unmapped(f"{self._at(node)}: a slice of the batch axis")
        start = start + size if start < 0 else start
        end = size if end is None or end >= size else end + size if end < 0 else end
        bounds = [fmt(dim), fmt(start), fmt(end)] if (start, end) != (0, size) else [fmt(dim)]
        steps = [f"step={fmt(step)}"] if step != 1 else []
        return Unit([self.resolve(x)], [node], func("slice", ", ".join(bounds + steps)))

    def _op_index(self, node: Any) -> Unit:
        """`x[:, index]` (one integer index tensor, the other axes whole) as `take`."""
        x, indices = node.args[:2]
        at = [i for i, t in enumerate(indices) if t is not None]
        if len(at) != 1 or not is_tensor(indices[at[0]]) or dtype_of(indices[at[0]]) not in ("i64", "i32"):
            raise Unmapped(f"{self._at(node)}: indexing with {len(at)} tensors (archc's take indexes one axis "
                           "with one integer tensor)")
        return Unit([self.resolve(x), self.resolve(indices[at[0]])], [node], func("take", f"dim={fmt(at[0])}"))

    def _op_linalg_vector_norm(self, node: Any) -> Unit:
        """The 2-norm over some axes: `sqrt(mean(x * x) * count)`."""
        x = node.args[0]
        order = node.args[1] if len(node.args) > 1 else node.kwargs.get("ord", 2)
        shape = sizes(x)
        dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
        dims = [_dim(d, len(shape)) for d in (dims if dims is not None else range(len(shape)))]
        keep = bool(node.args[3]) if len(node.args) > 3 else bool(node.kwargs.get("keepdim", False))
        count = _product([shape[d] for d in dims])
        if order != 2 or not isinstance(count, int) or node.kwargs.get("dtype") is not None:
            raise Unmapped(f"{self._at(node)}: a vector norm other than the 2-norm over axes of known size")
        mean = call("mean", list(dims), keepdim=keep, defaults={"keepdim": False})
        return Unit([self.resolve(x), self.resolve(x)], [node],
                    lambda a: (f"sqrt(({a[0][0]} * {a[0][0]} >> {mean}) * {fmt(count)})", ATOM))

    def _op_clamp_min(self, node: Any) -> Unit:
        """max(x, low) as `relu(x - low) + low`."""
        x, low = node.args[:2]
        if hasattr(low, "op"):
            raise Unmapped(f"{self._at(node)}: clamp_min with a tensor bound")
        low_text = fmt(float(low))
        return Unit([self.resolve(x)], [node], lambda a: (f"relu({a[0][0]} - {low_text}) + {low_text}", ADD))

    def _op_roll(self, node: Any) -> list[Unit]:
        """`torch.roll` along axes of known size, one axis at a time: the last `k` entries, then
        the rest (Swin's shifted windows)."""
        x, shifts = node.args[:2]
        dims = node.args[2] if len(node.args) > 2 else []
        shape = sizes(x)
        if len(shifts) != len(dims) or not all(isinstance(shape[_dim(d, len(shape))], int) for d in dims):
            raise Unmapped(f"{self._at(node)}: roll of a flattened tensor or along an axis of unknown size")
        moves = [(_dim(d, len(shape)), k % shape[_dim(d, len(shape))]) for d, k in zip(dims, shifts)]
        moves = [(d, shape[d] - k) for d, k in moves if k]
        if not moves:
            self.alias[node] = x
            return []
        units, value = [], self.resolve(x)
        for n, (d, cut) in enumerate(moves):
            out = node if n == len(moves) - 1 else Step(f"{node.name}_{n}")
            units.append(Unit([value, value], [out], lambda a, d=d, cut=cut: (
                (f"concat(slice({a[0][0]}, {fmt(d)}, {fmt(cut)}), slice({a[0][0]}, {fmt(d)}, 0, {fmt(cut)}), "
                 f"dim={fmt(d)})"), ATOM)))
            value = out
        return units

    def _op_repeat(self, node: Any) -> Unit:
        """`x.repeat(B, 1, ...)` of a size-1 leading axis that only broadcasting ops read: nothing."""
        x, times = node.args[:2]
        if len(times) == len(sizes(x)) and all(t == 1 for t in times[1:]) and sizes(x)[0] == 1 \
                and _broadcast_later(node):
            self.alias[node] = x
            return None  # type: ignore[return-value]
        raise Unmapped(f"{self._at(node)}: repeat {list(times)} (tiling)")

    def _op_expand(self, node: Any) -> Unit:
        if sizes(node) == sizes(node.args[0]) or _broadcast_later(node):
            self.alias[node] = node.args[0]
            return None  # type: ignore[return-value]
        a, b = sizes(node.args[0]), sizes(node)
        a = [None] * (len(b) - len(a)) + a
        names = _axis_names(len(b))
        left, right, keys = [], [], []
        for name, i, o in zip(names, a, b):
            if i == o:
                left.append(name)
                right.append(name)
            elif isinstance(o, int) and i in (1, None):
                left += ["1"] if i == 1 else []
                right.append(name)
                keys.append(f", {name}={o}")
            else:
                raise Unmapped(f"{self._at(node)}: expand to {b} (a size-1 axis to the batch, not for a broadcasting op)")
        pattern = " ".join(left) + " -> " + " ".join(right)
        return pipe_unit([self.resolve(node.args[0])], node, f"repeat({fmt(pattern)}{''.join(keys)})")

    _op_expand_as = _op_expand

    def _op_scaled_dot_product_attention(self, node: Any) -> Unit:
        args = list(node.args) + [None, 0.0, False][len(node.args) - 3:]
        q, k, v, mask, p, causal = args[:6]
        mask = node.kwargs.get("attn_mask", mask)
        causal = node.kwargs.get("is_causal", causal)
        if mask is not None and node not in self.causal:
            return self._biased_attention(node, q, k, v, mask, p, causal)
        causal = causal or self.causal.get(node, False)
        attrs = [f"causal={fmt(bool(causal))}"] if causal else []
        if node.kwargs.get("scale") is not None:
            attrs.append(f"scale={fmt(float(node.kwargs['scale']))}")
        return Unit([self.resolve(q), self.resolve(k), self.resolve(v)], [node], func("attention", ", ".join(attrs)))

    def _biased_attention(self, node: Any, q: Any, k: Any, v: Any, bias: Any, p: Any, causal: Any) -> Unit:
        """Attention with an additive float mask (a learned relative-position bias) written out:
        `softmax(q k^T * scale + bias) v`, since archc's attention takes no mask."""
        rank = len(sizes(q))
        if dtype_of(bias) == "bool" or causal or p or rank < 2 or len(sizes(k)) != rank or len(sizes(v)) != rank:
            raise Unmapped(f"{self._at(node)}: scaled_dot_product_attention with an attention mask not built "
                           "from sizes alone (a learned bias, or the inputs' values)")
        scale = node.kwargs.get("scale")
        scale = float(scale) if scale is not None else 1 / float(sizes(q)[-1]) ** 0.5
        lead = " ".join(_axis_names(rank - 2))
        scores = fmt(f"{lead} t d, {lead} s d -> {lead} t s")
        mix = fmt(f"{lead} t s, {lead} s d -> {lead} t d")

        def render(a: list[tuple[str, int]]) -> tuple[str, int]:
            bias_text = a[3][0] if a[3][1] > ADD else f"({a[3][0]})"
            text = (f"einsum(softmax(einsum({a[0][0]}, {a[1][0]}, {scores}) * {fmt(scale)} + {bias_text}, "
                    f"dim={fmt(rank - 1)}), {a[2][0]}, {mix})")
            return text, ATOM
        return Unit([self.resolve(q), self.resolve(k), self.resolve(v), self.resolve(bias)], [node], render)

    def _op_matmul(self, node: Any) -> Unit:
        a, b = node.args[:2]
        ra, rb = len(sizes(a)), len(sizes(b))
        if ra < 2 or rb < 2 or (rb > 2 and ra != rb):
            raise Unmapped(f"{self._at(node)}: matmul of ranks {ra} and {rb}")
        lead = _axis_names(ra - 2)
        left = " ".join(lead + ["m", "k"])
        right = " ".join((lead if rb > 2 else []) + ["k", "n"])
        eq = f"{left}, {right} -> " + " ".join(lead + ["m", "n"])
        return Unit([self.resolve(a), self.resolve(b)], [node], func("einsum", fmt(eq)))

    _op_bmm = _op_mm = _op_matmul

    def _op_addmm(self, node: Any) -> Unit:
        bias, a, b = node.args[:3]
        if len(node.args) > 3 or node.kwargs:
            raise Unmapped(f"{self._at(node)}: addmm with beta or alpha")
        return Unit([self.resolve(a), self.resolve(b), self.resolve(bias)], [node],
                    lambda t: (f"einsum({t[0][0]}, {t[1][0]}, \"m k, k n -> m n\") + "
                               f"{t[2][0] if t[2][1] > ADD else '(' + t[2][0] + ')'}", ADD))

    def _arith(self, node: Any, op: str, prec: int) -> Unit:
        x, y = node.args[:2]
        if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2:
            raise Unmapped(f"{self._at(node)}: {packet(node)} with alpha")
        if not hasattr(x, "op"):
            raise Unmapped(f"{self._at(node)}: {packet(node)} of a number and a tensor")
        if hasattr(y, "op"):
            if not is_tensor(y):
                raise Unmapped(f"{self._at(node)}: {packet(node)} with a symbolic size")
            return Unit([self.resolve(x), self.resolve(y)], [node], binary(op, prec))
        if (op in "+-" and y == 0) or (op in "*/" and y == 1):
            self.alias[node] = x  # x + 0 (Hugging Face's positions): nothing to compute
            return None  # type: ignore[return-value]
        text = fmt(float(y) if isinstance(y, float) else y)
        return Unit([self.resolve(x)], [node], lambda a: binary(op, prec)([a[0], (text, ATOM)]))

    def _op_rsub(self, node: Any) -> Unit:
        x, y = node.args[:2]
        if hasattr(y, "op"):
            return Unit([self.resolve(y), self.resolve(x)], [node], binary("-", ADD))
        text = fmt(y)
        return Unit([self.resolve(x)], [node], lambda a: binary("-", ADD)([(text, ATOM), a[0]]))

    def _op_neg(self, node: Any) -> Unit:
        return Unit([self.resolve(node.args[0])], [node],
                    lambda a: (f"-{a[0][0]}" if a[0][1] >= UNARY else f"-({a[0][0]})", UNARY))

    def _op_pow(self, node: Any) -> Unit:
        x, e = node.args[:2]
        if hasattr(e, "op"):
            raise Unmapped(f"{self._at(node)}: pow with a tensor exponent")
        text = fmt(e)
        return Unit([self.resolve(x)], [node], lambda a: (f"{a[0][0] if a[0][1] >= ATOM else '(' + a[0][0] + ')'} ** {text}", 6))

    def _op_upsample_nearest2d(self, node: Any, mode: str = "nearest") -> Unit:
        a, b = sizes(node.args[0])[2:], sizes(node)[2:]
        if not all(isinstance(d, int) for d in a + b):
            raise Unmapped(f"{self._at(node)}: an upsampling of symbolic sizes")
        align = node.args[2] if mode == "bilinear" and len(node.args) > 2 else False
        scales = {o // i for i, o in zip(a, b) if o % i == 0}
        extra = {"mode": mode, "align_corners": bool(align)}
        defaults = {"mode": "nearest", "align_corners": False}
        if len(scales) == 1 and all(o % i == 0 for i, o in zip(a, b)):
            text = call("interpolate", scales.pop(), **extra, defaults=defaults)
        else:
            text = call("interpolate", size=list(b), **extra, defaults=defaults)
        return pipe_unit([self.resolve(node.args[0])], node, text)

    def _op_upsample_bilinear2d(self, node: Any) -> Unit:
        return self._op_upsample_nearest2d(node, "bilinear")

    def _op_arange(self, node: Any) -> Unit:
        """`arange` of known bounds, on the device of the block's first input."""
        bounds = [a for a in node.args]
        if not all(isinstance(b, int) for b in bounds) or not self.first_input or self.first_input[-1] is None:
            raise Unmapped(f"{self._at(node)}: arange of symbolic bounds")
        start, end, step = ([0] + bounds + [1])[:3] if len(bounds) == 1 else (bounds + [1])[:3]
        dt = dtype_of(node)
        text = call("arange", start=start, end=end, step=step, dtype=dt,
                    defaults={"start": 0, "step": 1, "dtype": "i64"})
        return Unit([self.first_input[-1]], [node], lambda a: (text[:7] + a[0][0] + ", " + text[7:], ATOM))

    def _op_constant_pad_nd(self, node: Any) -> Unit:
        x, pads = node.args[:2]
        if not any(pads):
            self.alias[node] = x  # Swin pads to a multiple of the window: nothing at this size
            return None  # type: ignore[return-value]
        value = float(node.args[2]) if len(node.args) > 2 else 0.0
        return pipe_unit([self.resolve(x)], node, call("pad", list(pads), value=value, defaults={"value": 0.0}))

    def _op_pad(self, node: Any) -> Unit:
        x, pads = node.args[:2]
        mode = node.args[2] if len(node.args) > 2 else "constant"
        value = node.args[3] if len(node.args) > 3 and node.args[3] is not None else 0.0
        return pipe_unit([self.resolve(x)], node, call("pad", list(pads), mode=mode, value=float(value),
                                                       defaults={"mode": "constant", "value": 0.0}))


class Flow:
    """The lines of a body: instance declarations first, then the dataflow, a value used once
    folded into the expression that uses it."""

    def __init__(self, graph: Graph, where: str) -> None:
        from archc.importer_export import RESERVED

        self.g, self.where = graph, where
        self.values: dict[Any, tuple[str, int]] = {}
        from archc.ops import registry

        self.taken: set[str] = set(RESERVED) | set(registry.names())  # a value named `relu` would hide the op
        self.decls: list[str] = []
        self.lines: list[str] = []
        self.instances: dict[str, str] = {}  # instance path -> the name it is declared as
        self.device: str | None = None  # a tensor input of the body, whose device arange takes

    def declare(self, path: str, text: str) -> str:
        if path in self.instances:
            return self.instances[path]
        if is_name(path) and path not in self.taken:
            self.decls.append(f"{path} = {text}")
            name = path
        else:
            base = re.sub(r"\W", "_", path)
            name = self.fresh(base if base[:1].isalpha() else f"layer_{base}")
            self.decls.append(f"@scope({fmt(path)})")
            self.decls.append(f"{name} = {text}")
        self.taken.add(name)
        self.instances[path] = name
        return name

    def value(self, node: Any) -> tuple[str, int]:
        if node in self.values:
            return self.values[node]
        if self.g.is_param(node):
            return self.parameter(node)
        if node in self.g.computed and self.device is not None:
            from archc.importer_constants import fourier_lines

            name = self.fresh("pos")
            self.lines += fourier_lines(self.g.computed[node], self.device, self.fresh, name)
            self.values[node] = (name, ATOM)
            return name, ATOM
        if getattr(node, "op", None) == "placeholder" and node.name in self.g.constants:
            raise Unmapped(f"the tensor constant '{node.name}' (a tensor the forward makes, not a parameter or buffer)")
        raise Unmapped(f"the value '{getattr(node, 'name', node)}' (made by an op that was not imported)")

    def parameter(self, node: Any) -> tuple[str, int]:
        """A parameter or buffer used as a tensor: a `parameter` (or `buffer`) instance."""
        target = self.g.params[node.name]
        if node.name in self.g.nonpersistent:
            return self.computed(node, target)
        rel = target if not self.where else target[len(self.where) + 1:] if target.startswith(self.where + ".") else None
        if rel is None:
            raise Unmapped(f"'{target}' is used inside '{self.where}' but belongs to another module")
        if not valid_path(rel):
            raise Unmapped(f"the parameter name '{rel}' is not a name a spec can give")
        import torch

        val = node.meta["val"]
        buffer = not isinstance(self.g.module.get_parameter(target) if _has_param(self.g.module, target) else None,
                                torch.nn.Parameter)
        shape = [int(d) for d in val.shape]
        name = self.declare(rel, "buffer" if buffer else "parameter")
        dtype = dtype_of(node)
        extra = f", dtype={fmt(dtype)}" if buffer and dtype != "f32" else ""
        return f"{name}({fmt(list(shape)) if len(shape) != 1 else '[' + str(shape[0]) + ']'}{extra})", ATOM

    def computed(self, node: Any, target: str) -> tuple[str, int]:
        """A non-persistent buffer (not in the state_dict, so no spec can load it) as the code that
        computes it, where its value is a construction archc/importer_constants.py knows."""
        from archc import importer_constants as known

        value = self.g.module.get_buffer(target)
        if self.device is not None and value.dim() and not value.any() and dtype_of(node) in ("f32", "i64"):
            dtype = f", dtype={fmt(dtype_of(node))}" if dtype_of(node) != "f32" else ""
            return f"full({self.device}, {fmt([int(d) for d in value.shape])}, 0.0{dtype})", ATOM
        leaf = target.rpartition(".")[2]
        name = self.fresh(leaf if is_name(leaf) else "table")
        lines = known.constant_lines(value, self.device, self.fresh, name) if self.device is not None else None
        if lines is None:
            raise Unmapped(f"the buffer '{target}' is not persistent (not in the state_dict, so no spec can load "
                           "it) and is no index archc knows how to compute")
        self.lines += lines
        self.values[node] = (name, ATOM)
        return name, ATOM

    def fresh(self, base: str) -> str:
        """A value name not taken yet: `base`, else `base_2`, ..."""
        name, n = base, 2
        while name in self.taken or not is_name(name):
            name, n = f"{base}_{n}", n + 1
        self.taken.add(name)
        return name

    def apply(self, unit: Unit, uses: dict[Any, int]) -> None:
        args = [self.value(n) for n in unit.ins]
        base = ""
        if unit.declare:
            name = base = self.declare(unit.path, unit.callable_text)
            if unit.plus:  # an op with weights, then a computed tensor added: `x >> qkv + bias`
                bias = args[1][0] if args[1][1] > ADD else f"({args[1][0]})"
                text, prec = f"({args[0][0]} >> {name}) + {bias}", ADD
            elif len(args) == 1:
                text, prec = f"{args[0][0]} >> {name}", PIPE
            else:
                text, prec = f"{name}(" + ", ".join(a for a, _ in args) + ")", ATOM
        else:
            text, prec = unit.render(args)
        if len(unit.outs) == 1 and uses.get(unit.outs[0], 0) == 1:
            self.values[unit.outs[0]] = (text, prec)
            return
        names = []
        for out in unit.outs:
            base = base or (re.sub(r"(_\d+)+$", "", re.sub(r"\W", "_", out.name)) if out is not None else "unused")
            name = self.fresh(base)
            names.append(name)
            if out is not None:
                self.values[out] = (name, ATOM)
        self.lines.append(f"{', '.join(names)} = {text}")


class Step:
    """A value between the units of one graph node (a roll along its first axis)."""

    def __init__(self, name: str) -> None:
        self.name = name


ROW_WISE = {"linear", "conv2d", "softmax", "_softmax", *UNARY_OPS}  # ops that treat the leading axis as a batch
VIEWS = {"view", "reshape", "_unsafe_view", "flatten"}


def _broadcast_later(node: Any) -> bool:
    """Whether an expanded value reaches only broadcasting ops, through ops that keep its leading
    axes where they are (ConViT's `rel_indices.expand(B, ...)` >> linear >> permute >> softmax,
    then `*` with the scores): the expand changes nothing and is dropped."""
    rank = len(sizes(node))
    for user in node.users:
        kind = packet(user)
        if kind in BROADCASTING:
            continue
        dims = user.args[1] if kind == "permute" else None
        if kind == "softmax" or kind == "_softmax":
            dims = None if _dim(user.args[1], rank) != 0 else [1]
        if kind in VIEWS and sizes(user)[:1] == sizes(node)[:1]:
            kind = "linear"  # a view that keeps the leading axis is row-wise
        if kind not in ROW_WISE | {"permute"} or (dims is not None and _dim(dims[0], rank) != 0) \
                or not _broadcast_later(user):
            return False
    return bool(node.users)


def _has_param(module: Any, target: str) -> bool:
    try:
        module.get_parameter(target)
        return True
    except AttributeError:
        return False


def _flat(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    return [value]


def _uses(units: list[Unit]) -> dict[Any, int]:
    uses: dict[Any, int] = {}
    for unit in units:
        for node in unit.ins:
            uses[node] = uses.get(node, 0) + 1
    return uses


def _tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        value = tuple(int(v) for v in value)
        return value[0] if len(set(value)) == 1 else value
    return value


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _axis_names(n: int) -> list[str]:
    return ["b", "c", "h", "w", "d", "e", "f", "g", "i", "j", "k", "l"][:n] if n <= 12 else [f"a{i}" for i in range(n)]


def _product(dims: list[Any]) -> Any:
    out: Any = 1
    for d in dims:
        out = out * d
    return out


ONE = "one"  # a size-1 axis in a reshape's groups


def _view_pattern(a: list[Any], b: list[Any], where: str) -> str:
    """The rearrange pattern of a reshape from shape `a` to `b`: axes merged or split where
    their products agree (size-1 axes written `1`)."""
    import sympy

    groups = _groups(a, b, where)
    names = iter(f"a{i}" for i in range(64))
    left, right = [], []
    for ga, gb in groups:
        if len(ga) > 1 and len(gb) > 1:
            raise Unmapped(f"{where}: a reshape from {a} to {b} that regroups axes")
        atoms = [next(names) for _ in range(max(len(ga), len(gb), 1))]
        for side, group, src in ((left, ga, a), (right, gb, b)):
            if not group:
                continue
            if group == [ONE]:
                side.append("1")
            elif len(group) == 1 and len(atoms) > 1:
                side.append("(" + " ".join(atoms) + ")")
            else:
                side.append(" ".join(atoms[: len(group)]))
    _ = sympy
    return " ".join(left) + " -> " + " ".join(right)


def _groups(a: list[Any], b: list[Any], where: str) -> list[tuple[list[str], list[str]]]:
    """Pairs of index groups (as lists of their positions, "1" for a size-1 axis) of equal product."""
    import sympy

    out: list[tuple[list[str], list[str]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1:
            out.append(([ONE], []))
            i += 1
            continue
        if j < len(b) and b[j] == 1:
            out.append(([], [ONE]))
            j += 1
            continue
        if i >= len(a) or j >= len(b):
            raise Unmapped(f"{where}: a reshape from {a} to {b}")
        ga, gb = [str(i)], [str(j)]
        pa, pb = a[i], b[j]
        i, j = i + 1, j + 1
        while sympy.simplify(pa - pb) != 0:
            ratio = sympy.cancel(sympy.sympify(pb) / pa)
            if sympy.fraction(ratio)[1] == 1 and i < len(a):  # pb is a multiple: take more of a
                ga.append(str(i))
                pa = pa * a[i]
                i += 1
            elif j < len(b):
                gb.append(str(j))
                pb = pb * b[j]
                j += 1
            else:
                raise Unmapped(f"{where}: a reshape from {a} to {b}")
        out.append((ga, gb))
    return out


def _regrouped(a: list[Any], b: list[Any], where: str) -> tuple[list[str], list[str], dict[str, int]]:
    """A reshape that splits axes and merges the parts across them (MobileViT's unfolding:
    [B, 64, 8, 8] -> [256 * B, 2, 4, 2]) as a rearrange over the common refinement of the two
    shapes: `a0 a1 (a2 a3) (a4 a5) -> (a0 a1 a2) a3 a4 a5`, with the sizes of the split parts
    but one per axis (size-1 axes written `1`)."""
    import sympy

    atoms: list[Any] = []
    sides: list[list[list[int]]] = [[[] for _ in a], [[] for _ in b]]
    i = j = 0
    rest_a, rest_b = (a[0] if a else 1), (b[0] if b else 1)
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1:
            i, rest_a = i + 1, (a[i + 1] if i + 1 < len(a) else 1)
            continue
        if j < len(b) and b[j] == 1:
            j, rest_b = j + 1, (b[j + 1] if j + 1 < len(b) else 1)
            continue
        if i >= len(a) or j >= len(b):
            raise Unmapped(f"{where}: a reshape from {a} to {b}")
        ratio = sympy.cancel(sympy.sympify(rest_a) / rest_b)
        num, den = sympy.fraction(ratio)
        if den == 1 and not (num.is_Integer and num == 1):  # rest_a is a multiple of rest_b: the atom is rest_b
            atom, rest_a, rest_b = rest_b, num, 1
        elif num == 1:  # rest_b is a multiple of rest_a (or they are equal)
            atom, rest_a, rest_b = rest_a, 1, den
        else:
            raise Unmapped(f"{where}: a reshape from {a} to {b} that regroups axes")
        sides[0][i].append(len(atoms))
        sides[1][j].append(len(atoms))
        atoms.append(atom)
        if rest_a == 1:
            i, rest_a = i + 1, (a[i + 1] if i + 1 < len(a) else 1)
        if rest_b == 1:
            j, rest_b = j + 1, (b[j + 1] if j + 1 < len(b) else 1)

    def text(groups: list[list[int]]) -> list[str]:
        return ["1" if not g else f"a{g[0]}" if len(g) == 1 else "(" + " ".join(f"a{k}" for k in g) + ")"
                for g in groups]

    keys: dict[str, int] = {}
    for group in sides[0]:
        known = [k for k in group if isinstance(atoms[k], int) or getattr(atoms[k], "is_Integer", False)]
        if len(group) > 1:
            keys.update({f"a{k}": int(atoms[k]) for k in known[: len(group) - 1]})
    return text(sides[0]), text(sides[1]), keys


def _split_sizes(a: list[Any], b: list[Any]) -> str:
    """The `name=size` keywords a split needs: every split axis but one symbolic."""
    groups = _groups(a, b, "")
    names = iter(f"a{i}" for i in range(64))
    parts = []
    for ga, gb in groups:
        atoms = [next(names) for _ in range(max(len(ga), len(gb), 1))]
        if len(ga) == 1 and len(gb) > 1 and ga != [ONE]:
            dims = [b[int(k)] for k in gb]
            unknown = [k for k, d in enumerate(dims) if not isinstance(d, int) and not getattr(d, "is_Integer", False)]
            skip = unknown[0] if len(unknown) == 1 else len(dims) - 1
            if len(unknown) > 1:
                raise Unmapped(f"a reshape that splits an axis into several symbolic ones ({a} to {b})")
            parts += [f", {atoms[k]}={int(d)}" for k, d in enumerate(dims) if k != skip]
    return "".join(parts)


def _evaluate(node: Any, inputs: dict[Any, Any], env: dict[Any, Any]) -> Any:
    """The concrete value of a size-only node on the example inputs."""
    if not hasattr(node, "op"):
        if isinstance(node, (list, tuple)):
            return type(node)(_evaluate(n, inputs, env) for n in node)
        return node
    if node not in env:
        if node.op == "placeholder":
            env[node] = inputs[node]
        else:
            args = [_evaluate(a, inputs, env) for a in node.args]
            kwargs = {k: _evaluate(v, inputs, env) for k, v in node.kwargs.items()}
            env[node] = node.target(*args, **kwargs)
    return env[node]


def rearrange_unit(x: Any, out: Any, left: list[str], right: list[str], keys: dict[str, int]) -> Unit:
    """`x >> rearrange("left -> right", name=size...)`, its sides kept for merging."""
    text = call("rearrange", " ".join(left) + " -> " + " ".join(right))[:-1]
    text += "".join(f", {k}={v}" for k, v in keys.items()) + ")"
    unit = pipe_unit([x], out, text)
    unit.pattern = (left, right, keys)
    return unit


def _elements(side: str) -> list[str]:
    return re.findall(r"\([^)]*\)|\S+", side)


def _atoms(elements: list[str]) -> bool:
    return all(re.fullmatch(r"[A-Za-z_]\w*", el) for el in elements)
