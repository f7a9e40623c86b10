"""The module tree: one `nn.Module` per scope of the spec, holding that scope's tensors.

A scope path `h.0.attn.qkv` is a submodule path and a parameter `h.0.attn.qkv.weight` is the
attribute `weight` of that submodule, so `state_dict()` keys are the IR's parameter names. A scope
whose children are exactly `0..n-1` (a stack) becomes an `nn.ModuleList`; every other scope is a
`Scope` module that prints as its block or op (`Attention(heads=4, causal=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from archc.backends.quote import is_identifier, py_str
from archc.backends.torch.spelling import value_text
from archc.errors import ArchError
from archc.ir.graph import Graph, ParamDecl, SpanModel


@dataclass
class TensorEntry:
    decl: ParamDecl
    attr: str
    expr: str  # how generated code reads it: `self.h[0].attn.qkv.weight`
    step: str = ""  # from its module: `.weight`, or `._parameters['weight']`
    owner: ModuleEntry | None = None


@dataclass
class ModuleEntry:
    path: str
    attr: str
    kind: str  # block or op name; "" where the spec recorded no scope
    args: str  # "heads=4, causal=True"
    span: SpanModel | None
    expr: str = "self"
    step: str = ""  # from its parent: `.attn`, `[3]`, or `._modules['forward']`
    parent: ModuleEntry | None = None
    parent_expr: str = ""
    is_list: bool = False
    is_layer: bool = False  # a child of a list: appended, in order
    tensors: list[TensorEntry] = field(default_factory=list)
    children: list[ModuleEntry] = field(default_factory=list)

    def relative(self, ancestor: ModuleEntry) -> str:
        """How code in `ancestor`'s methods reads this module: `self.attn.qkv`."""
        steps: list[str] = []
        entry: ModuleEntry | None = self
        while entry is not None and entry is not ancestor:
            steps.append(entry.step)
            entry = entry.parent
        return "self" + "".join(reversed(steps))

    def walk(self) -> list[ModuleEntry]:
        """This module and every descendant, parents first, in declaration order."""
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


@cache
def _module_names() -> tuple[frozenset[str], frozenset[str]]:
    """(attributes an instance keeps in its __dict__, attributes of the class): torch is imported
    here because the torch backend is in use."""
    from torch import nn

    instance = frozenset(vars(nn.Module())) | {"_spec_kind", "_spec_args"}
    # the class attributes: torch's, and the methods every generated module class defines
    return instance, frozenset(dir(nn.Module)) | frozenset(dir(nn.ModuleList)) | {"reset_parameters"}


def _safe(name: str) -> bool:
    """Can generated code write `parent.name`? Otherwise it writes `parent._modules['name']`."""
    return is_identifier(name) and name not in _module_names()[1]


def module_tree(graph: Graph) -> ModuleEntry:
    """The module tree of `graph`; raises ArchError where a spec name cannot be a torch attribute."""
    root = ModuleEntry(path="", attr="", kind=graph.name, args="", span=None)
    by_path = {"": root}

    def ensure(path: str) -> ModuleEntry:
        if path in by_path:
            return by_path[path]
        parent_path, _, attr = path.rpartition(".")
        parent = ensure(parent_path)
        info = graph.scopes.get(path)
        entry = ModuleEntry(path=path, attr=attr, kind=info.kind if info else "",
                            args=", ".join(f"{k}={value_text(v, bare_names=True)}" for k, v in (info.args if info else {}).items()),
                            span=info.span if info else None)
        parent.children.append(entry)
        by_path[path] = entry
        return entry

    for path in graph.scopes:
        if path not in graph.params:  # a `parameter` op's scope is the tensor itself
            ensure(path)
    for name, decl in graph.params.items():
        owner, _, attr = name.rpartition(".")
        module = ensure(owner)
        module.tensors.append(TensorEntry(decl=decl, attr=attr, expr="", owner=module))
    for entry in root.walk():
        _check_names(entry, graph)
        kids = [c.attr for c in entry.children]
        entry.is_list = bool(kids) and entry is not root and not entry.tensors and \
            sorted(kids, key=lambda k: int(k) if k.isdigit() else -1) == [str(i) for i in range(len(kids))]
        if entry.is_list:
            entry.children.sort(key=lambda c: int(c.attr))
        for child in entry.children:
            child.parent, child.parent_expr, child.is_layer = entry, entry.expr, entry.is_list
            child.step = (f"[{child.attr}]" if entry.is_list else f".{child.attr}" if _safe(child.attr) else
                          f"._modules[{py_str(child.attr)}]")
            child.expr = entry.expr + child.step
        for t in entry.tensors:
            store = "_parameters" if t.decl.trainable else "_buffers"
            t.step = f".{t.attr}" if _safe(t.attr) else f".{store}[{py_str(t.attr)}]"
            t.expr = entry.expr + t.step
    return root


def _check_names(entry: ModuleEntry, graph: Graph) -> None:
    seen: dict[str, str] = {}
    for name in [c.attr for c in entry.children] + [t.attr for t in entry.tensors]:
        full = f"{entry.path}.{name}" if entry.path else name
        span = graph.scopes[full].span if full in graph.scopes else entry.span
        if name in _module_names()[0] or name.startswith("__"):
            raise ArchError(f"the instance name '{name}' ({full}) cannot be used in the torch backend: "
                            "torch.nn.Module keeps an attribute of that name", span.to_span() if span else None,
                            "rename the instance")
        if name in seen:
            raise ArchError(f"'{full}' names both a submodule and a parameter", span.to_span() if span else None)
        seen[name] = full
