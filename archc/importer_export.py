"""The importer's main path (issue #19): capture with ``torch.export`` (non-strict), rebuild the
module tree from each node's ``nn_module_stack``, map ATen ops to archc ops.

- A module that owns the weights of an op (``nn.Linear``, ``nn.Conv2d``, timm's
  ``BatchNormAct2d``, ...) and a parameterless PyTorch layer (``nn.ReLU``, ``nn.Dropout``) are
  *inlined* into the block that calls them: their op is a named instance there
  (``fc1 = linear(64)``, ``@scope("0") l0 = conv2d(...)``), so every parameter name is the
  module's ``state_dict`` key. Any other module becomes a ``block`` (one per distinct body).
- Calls of ``NAME.0``, ``NAME.1``, ... that feed each other (an ``nn.Sequential``, a
  ``ModuleList`` loop) fold into ``NAME = stack(n) { Block() }``.
- The batch axis is ``B`` (exported as a symbolic size); a block's signature names the other axes
  (``[B, C, H, W]``, ``[B, T, D]``) and its outputs reuse those names where the sizes agree.
- Anything that has no archc spelling raises `Unmapped` naming the module and the op.
"""

from __future__ import annotations

import keyword
import logging
import operator
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["Unmapped", "export_spec_text"]

RESERVED = {"axis", "block", "model", "return", "import", "true", "false", "stack", "choice", "interface", "fn",
            "if", "then", "else", "elif", "for", "in", "and", "or", "not", "int", "float", "bool", "str", "list",
            "connection", "let", "residual", "range", "len", "min", "max", "shape", "log", "B"}
_SEGMENT = re.compile(r"[A-Za-z0-9_]+")
PIPE, ADD, MUL, UNARY, ATOM = 0, 3, 4, 5, 9


class Unmapped(Exception):
    """Something of the module that archc cannot express (yet)."""


def spec_text(source: str, axes: Sequence[str], blocks: Sequence[str], model: str) -> str:
    """The imported file: a header naming where it came from (the user's class or file name: as it
    is when every character prints, else as an escaped string, since a new line in it would end the
    comment), the axes, the blocks and the model."""
    plain = all(ch.isprintable() and ord(ch) < 0x2028 for ch in source)
    header = f"# Imported from {source if plain else fmt(source)} by archc.import_module.\n"
    return header + "\naxis " + ", ".join(axes) + "\n\n" + "\n".join([*blocks, model])


def fmt(value: Any) -> str:
    """A Python attribute value as .arch text (strings escaped as the lexer reads them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise Unmapped(f"the number {value!r}")
        return repr(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ch.isprintable() and ord(ch) < 0x2028 or ch == " ":
                out.append(ch)
            else:
                out.append("\\u{%x}" % ord(ch))
        return '"' + "".join(out) + '"'
    if isinstance(value, (tuple, list)):
        if isinstance(value, tuple) and value and len(set(value)) == 1:  # a per-axis size: `3` for (3, 3)
            return fmt(value[0])
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    raise Unmapped(f"the attribute value {value!r}")


def call(op: str, *positional: Any, defaults: dict[str, Any] | None = None, **attrs: Any) -> str:
    """`op(positional..., key=value...)`, leaving out the attributes at the op's default."""
    defaults = defaults or {}
    parts = [fmt(v) for v in positional]
    parts += [f"{k}={fmt(v)}" for k, v in attrs.items() if k not in defaults or fmt(defaults[k]) != fmt(v)]
    return f"{op}(" + ", ".join(parts) + ")"


@dataclass
class Blocks:
    """The spec's blocks, one per distinct body, named after their module's class (`Name`, then
    `Name2`, ... for other bodies), never a name in `reserved`."""

    reserved: frozenset[str] = frozenset()
    texts: list[str] = field(default_factory=list)  # `block Name ...`, in order of definition
    names: dict[str, str] = field(default_factory=dict)  # body text -> block name

    def define(self, base: str, body: str) -> str:
        if body in self.names:
            return self.names[body]
        name, n = base, 2
        while name in self.names.values() or name in self.reserved:
            name, n = f"{base}{n}", n + 1
        self.names[body] = name
        self.texts.append(f"block {name} {body}")
        return name


def stack_text(texts: list[str]) -> str:
    """A stack of the layers written `texts`: `stack(n) { Layer() }` when they are alike, else one
    per index (`i => if i == 0 then ... else ...`)."""
    if len(set(texts)) == 1:
        return f"stack({len(texts)}) {{ {texts[0]} }}"
    body = texts[-1]
    for i in range(len(texts) - 2, -1, -1):
        body = f"if i == {i} then {texts[i]} else {body}"
    return f"stack({len(texts)}) {{ i => {body} }}"


# --- the captured graph -------------------------------------------------------------------------


@dataclass
class Scope:
    """One call of a module: its direct nodes and its child calls, in graph order."""

    key: str
    path: str
    module: Any
    parent: "Scope | None" = None
    items: list[Any] = field(default_factory=list)  # fx nodes and child Scopes
    children: dict[str, "Scope"] = field(default_factory=dict)
    nodes: set[Any] = field(default_factory=set)  # every node under this call

    @property
    def type_name(self) -> str:
        from archc.ops import registry

        name = type(self.module).__name__  # a class name is input too: only a plain ASCII name is kept
        ok = name.isidentifier() and name.isascii() and name not in RESERVED and not registry.has(name)
        return name if ok and not keyword.iskeyword(name) else "Block"


class Graph:
    """The exported program with what the emitters ask of it."""

    def __init__(self, ep: Any, module: Any) -> None:
        from torch.export.graph_signature import InputKind

        self.ep, self.module = ep, module
        self.params: dict[str, str] = {}  # placeholder name -> state_dict key
        self.nonpersistent: set[str] = set()
        self.constants: set[str] = set()
        self.user_inputs: list[Any] = []
        nodes = {n.name: n for n in ep.graph.nodes}
        for spec in ep.graph_signature.input_specs:
            name = spec.arg.name
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                self.params[name] = spec.target
                if spec.kind == InputKind.BUFFER and spec.persistent is False:
                    self.nonpersistent.add(name)
            elif spec.kind == InputKind.USER_INPUT:
                self.user_inputs.append(nodes[name])
            else:
                self.constants.add(name)
        self.output = next(n for n in ep.graph.nodes if n.op == "output")
        self.computed: dict[Any, Any] = {}  # node -> a constant the spec computes (archc/importer_constants.py)
        self.symbols: dict[Any, str] = {}
        for node in self.user_inputs:
            val = node.meta.get("val")
            if val is not None and len(val.shape) and _symbol(val.shape[0]) is not None:
                self.symbols[_symbol(val.shape[0])] = "B"

    def is_param(self, node: Any) -> bool:
        return getattr(node, "op", None) == "placeholder" and node.name in self.params

    def tree(self) -> Scope:
        root = Scope("", "", self.module)
        for node in self.ep.graph.nodes:
            if node.op != "call_function":
                continue
            scope = root
            owner = node.args[0] if node.target is operator.getitem and hasattr(node.args[0], "meta") else node
            for key, value in (owner.meta.get("nn_module_stack") or {}).items():  # an output goes with its op
                path = value[0]
                if not path:
                    continue
                if key not in scope.children:
                    try:
                        sub = self.module.get_submodule(path)
                    except AttributeError:  # export's placeholder entries (`_empty_nn_module_stack...`)
                        continue
                    child = Scope(key, path, sub, scope)
                    scope.children[key] = child
                    scope.items.append(child)
                scope = scope.children[key]
            scope.items.append(node)
            s: Scope | None = scope
            while s is not None:
                s.nodes.add(node)
                s = s.parent
        return root


def _symbol(dim: Any) -> Any:
    node = getattr(dim, "node", None)
    expr = getattr(node, "expr", None)
    return expr if expr is not None and getattr(expr, "is_Symbol", False) else None


def sizes(node: Any) -> list[Any]:
    """The node's shape: ints and sympy expressions of the symbolic batch."""
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if val is None or not hasattr(val, "shape"):
        raise Unmapped(f"'{getattr(node, 'name', node)}' is not one tensor")
    return [int(d) if isinstance(d, int) else d.node.expr for d in val.shape]


def is_tensor(node: Any) -> bool:
    import torch

    return hasattr(node, "meta") and isinstance(node.meta.get("val"), torch.Tensor)


def size_text(d: Any, symbols: dict[Any, str]) -> str:
    if isinstance(d, int):
        return str(d)
    if getattr(d, "is_Integer", False):
        return str(int(d))
    text = str(d.subs({s: __import__("sympy").Symbol(n) for s, n in symbols.items()}))
    if not re.fullmatch(r"[A-Za-z0-9_ *+-]+", text) or any(str(s) in text for s in d.free_symbols if s not in symbols):
        raise Unmapped(f"the size {d} (only a symbolic batch axis is named)")
    return text


DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "int64": "i64",
          "int32": "i32", "bool": "bool", "uint8": "u8", "int8": "i8"}


def dtype_of(node: Any) -> str:
    return DTYPES.get(str(node.meta["val"].dtype).removeprefix("torch."), "?")


# --- units: one thing applied in a block body ---------------------------------------------------


@dataclass
class Unit:
    """One application in a body: an op or block (named `path` when it is an instance), its
    tensor inputs and the nodes it defines."""

    ins: list[Any]
    outs: list[Any]
    render: Callable[[list[tuple[str, int]]], tuple[str, int]]
    path: str = ""  # the instance path relative to the block ('' for an anonymous op)
    callable_text: str = ""  # what the instance is: `linear(64)`, `Mlp()`, `stack(2) { ... }`
    declare: bool = False  # declared as a named instance (ops with weights, blocks, stacks)
    pattern: tuple[list[str], list[str], dict[str, int]] | None = None  # a rearrange's sides and sizes
    plus: bool = False  # a declared op applied to ins[0], then ins[1] added (a computed bias)


def pipe_unit(ins: list[Any], out: Any, text: str, path: str = "", declare: bool = False) -> Unit:
    """`x >> text` (or `x >> name` once declared)."""
    return Unit(ins, [out], lambda a: (f"{a[0][0]} >> {text}", PIPE), path, text, declare)


def binary(op: str, prec: int) -> Callable[[list[tuple[str, int]]], tuple[str, int]]:
    def render(a: list[tuple[str, int]]) -> tuple[str, int]:
        left = a[0][0] if a[0][1] >= prec else f"({a[0][0]})"
        right = a[1][0] if a[1][1] > prec else f"({a[1][0]})"
        return f"{left} {op} {right}", prec
    return render


def func(name: str, attrs: str = "") -> Callable[[list[tuple[str, int]]], tuple[str, int]]:
    return lambda a: (f"{name}(" + ", ".join([t for t, _ in a] + ([attrs] if attrs else [])) + ")", ATOM)


def export_spec_text(module: Any, inputs: Sequence[Any], source: str) -> str:
    from archc.importer_aten import Emitter

    graph = Graph(inline_autocast(capture(module, inputs)), module)
    graph.example = list(inputs)
    return Emitter(graph).spec(source)


def capture(module: Any, inputs: Sequence[Any]) -> Any:
    """``torch.export`` (non-strict) with a symbolic batch axis, or Unmapped saying why not."""
    import torch

    dynamic = tuple({0: torch.export.Dim.AUTO} if t.dim() else {} for t in inputs)
    quiet = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # export logs the graphs it gives up on; the message below says why
    caches = _tensor_caches(module)
    for cache, _ in caches:
        cache.clear()  # so that the forward computes what it caches (timm's attention_bias_cache), and export sees it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(module, tuple(inputs), strict=False, dynamic_shapes=dynamic)
    except Exception as err:  # noqa: BLE001  (export raises many kinds for code it cannot capture)
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        raise Unmapped(f"torch.export cannot capture its forward: {type(err).__name__}: "
                       f"{lines[0] if lines else ''}") from None
    finally:
        logging.disable(quiet)
        for cache, saved in caches:
            cache.clear()
            cache.update(saved)


def inline_autocast(ep: Any) -> Any:
    """The exported program with each region that turns autocast off (`with torch.autocast(...,
    enabled=False)`: EfficientViT's attention in f32) inlined: in an f32 model it changes nothing.
    A region that turns it on is refused."""
    gm = ep.graph_module
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or getattr(node.target, "__name__", "") != "wrap_with_autocast":
            continue
        enabled, submodule, args = node.args[2], node.args[4], node.args[5:]
        if enabled:
            raise Unmapped("an autocast region that turns autocast on (archc's dtypes are the build's)")
        sub = getattr(gm, submodule.target)
        env = dict(zip([n for n in sub.graph.nodes if n.op == "placeholder"], args))
        with gm.graph.inserting_before(node):
            results = gm.graph.graph_copy(sub.graph, env)
        for user in list(node.users):
            if user.target is not operator.getitem:
                raise Unmapped("an autocast region whose results are used as a list")
            user.replace_all_uses_with(results[user.args[1]])
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        if not submodule.users:
            gm.graph.erase_node(submodule)
    gm.graph.lint()
    return ep


def _tensor_caches(module: Any) -> list[tuple[dict[Any, Any], dict[Any, Any]]]:
    """The modules' dict attributes of tensors (caches a forward fills, as timm's
    `attention_bias_cache` per device), each with a copy of what it holds now."""
    import torch

    found = []
    for sub in module.modules():
        for attr, value in vars(sub).items():
            if not attr.startswith("_") and isinstance(value, dict) and value \
                    and all(isinstance(v, torch.Tensor) for v in value.values()):
                found.append((value, dict(value)))
    return found


def valid_path(path: str) -> bool:
    return all(_SEGMENT.fullmatch(seg) for seg in path.split("."))


def is_name(text: str) -> bool:
    return text.isidentifier() and text.isascii() and text not in RESERVED and not keyword.iskeyword(text)


def getitem_outs(node: Any, count: int) -> list[Any]:
    """The getitem users of a multi-output node, by index (None where an output is unused)."""
    outs: list[Any] = [None] * count
    for user in node.users:
        if user.target is operator.getitem and isinstance(user.args[1], int):
            outs[user.args[1]] = user
        else:
            raise Unmapped(f"'{node.name}' is used whole (as a list)")
    return outs
