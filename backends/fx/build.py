"""A `torch.fx.GraphModule` built from the IR, node by node: `build_graph_module(graph)`.

Each IR node's torch spelling (the same `torch_expr` the `.py` file prints) is evaluated with fx
proxies for its inputs and parameters, which appends that node's fx nodes to the graph; no
module is traced, and nothing about the mode is baked in: `self.training` is read when the
GraphModule runs, so `.train()` / `.eval()` switch dropout and BatchNorm as in the `.py` file.
The GraphModule keeps the torch backend's module tree, so `state_dict()` keys are the same.

A parameter name is spec text. fx writes a `get_attr` target into the generated code as
`self.a.b` (or `getattr(self, "a")`, unescaped), so only targets whose every segment is a plain
ASCII identifier that no `nn.Module` / `GraphModule` attribute shadows become `get_attr` nodes;
any other tensor is read the way the torch backend reads it, through the owners' `_modules`,
`_parameters` and `_buffers` dicts, with each key a string constant (which fx writes with repr).
The generated code is checked with `quote.verify_python` before the GraphModule is returned.

The model's run-time guards (archc.guards: `T must be divisible by 2`) are the graph's first
nodes, `torch._assert` calls on the input sizes, as the torch backend checks them in its forward.
"""

from __future__ import annotations

import operator
import types
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from archc.backends.quote import PY_GLOBALS, GeneratedCodeError, is_identifier, py_docstring, verify_python
from archc.backends.torch.emit import TUPLE_OPS, expression, source_labels
from archc.backends.torch.load import build_module
from archc.backends.torch.naming import RESERVED, Namer, value_names
from archc import guards
from archc.errors import ArchError
from archc.ir.graph import Graph, Node
from archc.sizes import parse_size


class _Tracer(fx.proxy.GraphAppendingTracer):
    """Names the fx nodes an expression makes so they never take a name reserved for an IR value."""

    def __init__(self, graph: fx.Graph, reserved: set[str]) -> None:
        super().__init__(graph)
        self.namer = Namer(RESERVED | reserved)

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                    type_expr: Any = None) -> fx.Node:
        base = name or (target if isinstance(target, str) else getattr(target, "__name__", kind))
        return super().create_node(kind, target, args, kwargs, self.namer.take(base), type_expr)


class _Self:
    """Stands for `self` in an op's spelling, which only ever reads `self.training`."""

    def __init__(self, training: fx.Proxy) -> None:
        self.training = training


def _namespace(module: nn.Module, tracer: fx.proxy.GraphAppendingTracer) -> dict[str, Any]:
    """The generated file's globals, with its own helpers (drop_path) recorded as calls, not run."""
    globs = type(module).forward.__globals__
    space: dict[str, Any] = {}
    for name, value in globs.items():
        if isinstance(value, types.FunctionType) and value.__module__ == globs["__name__"]:
            space[name] = _recorded(value, tracer)
        elif not name.startswith("__"):
            space[name] = value
    return space


def _recorded(fn: Any, tracer: fx.proxy.GraphAppendingTracer) -> Any:
    """A stand-in for `fn` that appends a call to it to the graph."""
    return lambda *args, **kwargs: tracer.create_proxy("call_function", fn, args, kwargs)


def _lower_node(node: Node, graph: Graph, env: dict[str, Any], get_param: Any, space: dict[str, Any],
                names: dict[str, str], fx_graph: fx.Graph) -> None:
    ins = {f"_in{i}": env[v] for i, v in enumerate(node.inputs)}
    params = {role: f"_p{i}" for i, role in enumerate(node.params)}
    local = {**ins, **{params[role]: get_param(p) for role, p in node.params.items()}}
    before = set(fx_graph.nodes)
    text = expression(node, graph, list(ins), params)
    # the torch spelling is evaluated here: check it reads only what the generated file could
    verify_python(text, "<fx lowering>", allowed=PY_GLOBALS | frozenset(space) | frozenset(local))
    try:
        result = eval(text, space, local)
    except Exception as err:  # name the IR node that failed, as fx's interpreter does
        where = f" ({node.span.file}:{node.span.line})" if node.span else ""
        raise RuntimeError(f"fx backend: lowering {node.op} at scope '{node.scope}'{where} failed: {err}") from err
    outs = [result[i] for i in range(len(node.outputs))] \
        if len(node.outputs) > 1 or node.op in TUPLE_OPS else [result]
    for value, proxy in zip(node.outputs, outs):
        env[value] = proxy
        if isinstance(proxy, fx.Proxy) and proxy.node not in before:
            proxy.node._rename(names[value])


@cache
def _shadowed() -> frozenset[str]:
    """Names that `self.<name>` does not read as a child of a GraphModule (or of a scope module):
    attributes of the classes and the instance attributes torch and fx keep."""
    gm = fx.GraphModule(nn.Module(), fx.Graph())
    return frozenset(dir(fx.GraphModule)) | frozenset(dir(nn.ModuleList)) | frozenset(vars(gm))


@cache
def _graph_module_keeps() -> frozenset[str]:
    """Attributes a GraphModule sets on itself (`graph`, `meta`, `_code`, ...): a child of the root
    of one of these names would break it (`gm.graph = ...` refuses to replace a child module)."""
    gm = fx.GraphModule(nn.Module(), fx.Graph())
    props = {k for k, v in vars(fx.GraphModule).items() if isinstance(v, property)}
    return frozenset(set(vars(gm)) - set(vars(nn.Module()))) | props


def _check_root_names(graph: Graph, module: nn.Module) -> None:
    for name in [*module._modules, *module._parameters, *module._buffers]:
        if name in _graph_module_keeps():
            info = graph.scopes.get(name)
            node = next((n for n in graph.nodes if n.scope == name or n.scope.startswith(name + ".")), None)
            span = info.span if info is not None and info.span else node.span if node is not None else None
            raise ArchError(f"the instance name '{name}' cannot be used in the fx target: torch.fx.GraphModule "
                            "keeps an attribute of that name", span.to_span() if span else None,
                            "rename the instance (the torch target takes it)")


def _plain(segment: str) -> bool:
    """May a `get_attr` target hold this segment? fx writes `.segment`, or `getattr(x, "segment")`
    (unescaped) for a layer index; anything else is read through the dicts."""
    if segment.isascii() and segment.isdigit():
        return True
    return is_identifier(segment) and not segment.startswith("__") and segment not in _shadowed()


class _Reader:
    """Appends the fx nodes that read a tensor of the module tree, by its parameter name.

    `self.a.b.weight` (one `get_attr`) when every segment is `_plain`; otherwise as the torch
    backend reads it: `self._modules['a"b']._parameters['weight']`, each key a constant."""

    def __init__(self, tracer: fx.proxy.GraphAppendingTracer, graph: Graph) -> None:
        self.tracer, self.graph = tracer, graph
        self.cache: dict[tuple[str, str], fx.Proxy] = {}

    def _once(self, key: tuple[str, str], make: Any) -> fx.Proxy:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def _get_attr(self, path: str) -> fx.Proxy:
        assert all(_plain(s) for s in path.split(".")) or path in ("_modules", "_parameters", "_buffers")
        return self._once(("attr", path), lambda: self.tracer.create_proxy("get_attr", path, (), {}))

    def _item(self, container: fx.Proxy, key: str) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.getitem, (container, key), {})

    def _dict(self, path: str, which: str) -> fx.Proxy:
        """The `_modules` / `_parameters` / `_buffers` dict of the module at `path`."""
        if path == "":
            return self._get_attr(which)
        return self._once((which, path), lambda: self.tracer.create_proxy(
            "call_function", getattr, (self.module(path), which), {}))

    def module(self, path: str) -> fx.Proxy:
        if all(_plain(s) for s in path.split(".")):
            return self._get_attr(path)
        owner, _, leaf = path.rpartition(".")
        return self._once(("module", path), lambda: self._item(self._dict(owner, "_modules"), leaf))

    def tensor(self, name: str) -> fx.Proxy:
        if all(_plain(s) for s in name.split(".")):
            return self._get_attr(name)
        owner, _, leaf = name.rpartition(".")
        which = "_parameters" if self.graph.params[name].trainable else "_buffers"
        return self._once(("tensor", name), lambda: self._item(self._dict(owner, which), leaf))


def _ascii_names(names: dict[str, str]) -> dict[str, str]:
    """Value names that are ASCII identifiers: fx writes a placeholder's name as written."""
    if all(is_identifier(n) for n in names.values()):
        return names
    namer = Namer(RESERVED | {n for n in names.values() if is_identifier(n)})
    return {v: n if is_identifier(n) else namer.take(n.encode("ascii", "replace").decode().replace("?", "_"))
            for v, n in names.items()}


def build_graph_module(graph: Graph, module: nn.Module | None = None) -> fx.GraphModule:
    """The model as a GraphModule; `module` (default: a fresh torch-backend module) gives the weights."""
    module = module if module is not None else build_module(graph)
    _check_root_names(graph, module)
    fx_graph = fx.Graph()
    names = _ascii_names(value_names(graph))
    tracer = _Tracer(fx_graph, set(names.values()))
    env: dict[str, Any] = {p.value: fx.Proxy(fx_graph.placeholder(names[p.value]), tracer) for p in graph.inputs}
    _guard(graph, [env[p.value] for p in graph.inputs], tracer)
    space = _namespace(module, tracer)
    space["self"] = _Self(tracer.create_proxy("get_attr", "training", (), {}))
    reader = _Reader(tracer, graph)
    for node in graph.nodes:
        _lower_node(node, graph, env, reader.tensor, space, names, fx_graph)
    outs = [env[p.value].node for p in graph.outputs]
    fx_graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    fx_graph.eliminate_dead_code()  # drops unused reads such as an unused `self.training`
    cls = type(module).__name__
    gm = fx.GraphModule(module, fx.Graph(), class_name=cls if is_identifier(cls) else "GraphModule")
    # the whole tree, unread buffers too, entered as the torch backend enters it: a spec name may be
    # one that a method of nn.Module or GraphModule shadows (`eval`, `forward`), so no setattr
    gm._modules.update(module._modules)
    gm._parameters.update(module._parameters)
    gm._buffers.update(module._buffers)
    gm._non_persistent_buffers_set.update(module._non_persistent_buffers_set)
    gm.graph = fx_graph  # recompiles
    gm.graph.lint()
    try:
        verify_python(gm.code, f"<fx: {graph.name!r}>", allowed=_allowed(gm))
    except GeneratedCodeError as err:  # a bug in archc: say so, with the code fx wrote
        raise GeneratedCodeError(f"{err}\n{gm.code}") from None
    return gm


def _guard(graph: Graph, inputs: list[fx.Proxy], tracer: fx.proxy.GraphAppendingTracer) -> None:
    """The model's run-time guards as `torch._assert(condition, message)` nodes on the inputs'
    sizes (fx keeps them: an assertion is a side effect). The message is a constant, so it names
    the condition and the op that needs it, not the size that broke it."""
    axes = guards.given_axes(p.type for p in graph.inputs)
    for g in graph.guards:
        value: Any = 0
        for mono, coef in sorted(parse_size(g.size).terms.items()):
            term: Any = coef
            for axis, power in mono:
                i, dim, multiple = axes[axis]
                read = inputs[i].size(dim) if multiple == 1 else inputs[i].size(dim) // multiple
                for _ in range(power):
                    term = read if term == 1 and not isinstance(term, fx.Proxy) else term * read
            value = term if isinstance(value, int) and value == 0 else value + term
        holds = {"divisible": lambda v, b: v % b == 0, "at_most": operator.le, "at_least": operator.ge}[g.kind]
        where = f"{Path(g.span.file).name}:{g.span.line}:{g.span.col}: " if g.span else ""
        tracer.create_proxy("call_function", torch._assert, (holds(value, g.bound), f"{g.condition} ({where}{g.why})"),
                            {})


def _allowed(gm: fx.GraphModule) -> frozenset[str]:
    # fx's own globals, and getattr: fx reads a layer `self.h[0]` as getattr(self.h, "0"), on digits only
    return PY_GLOBALS | frozenset(gm.forward.__globals__) | {"getattr"}


def fx_source(graph: Graph, gm: fx.GraphModule | None = None) -> str:
    """The file `archc build --target fx` writes: a docstring naming the model and its spec files
    (spec text: through py_docstring), then the forward that fx wrote; checked with verify_python."""
    gm = gm if gm is not None else build_graph_module(graph)
    source = ", ".join(sorted(set(source_labels(graph).values()))) or "an IR graph"
    doc = py_docstring(f"forward() of the torch.fx GraphModule for model {graph.name}, built by archc from {source}.")
    text = f"{doc}\n\nimport torch\n\n\n{gm.code.strip()}\n"
    verify_python(text, f"<fx: {graph.name!r}>", allowed=_allowed(gm))
    return text


__all__ = ["build_graph_module", "fx_source", "torch"]
