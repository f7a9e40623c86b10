"""A `torch.fx.GraphModule` built from the IR, node by node: `build_graph_module(graph)`.

Each IR node's torch spelling (the same `torch_expr` the `.py` file prints) is evaluated with fx
proxies for its inputs and parameters, which appends that node's fx nodes to the graph; no
module is traced, and nothing about the mode is baked in: `self.training` is read when the
GraphModule runs, so `.train()` / `.eval()` switch dropout and BatchNorm as in the `.py` file.
The GraphModule keeps the torch backend's module tree, so `state_dict()` keys are the same.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import fx, nn

from archc.backends.torch.emit import TUPLE_OPS, expression
from archc.backends.torch.load import build_module
from archc.backends.torch.naming import RESERVED, Namer, value_names
from archc.ir.graph import Graph, Node


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
    try:
        result = eval(expression(node, graph, list(ins), params), space, local)
    except Exception as err:  # name the IR node that failed, as fx's interpreter does
        where = f" ({node.span.file}:{node.span.line})" if node.span else ""
        raise RuntimeError(f"fx backend: lowering {node.op} at scope '{node.scope}'{where} failed: {err}") from err
    outs = [result[i] for i in range(len(node.outputs))] \
        if len(node.outputs) > 1 or node.op in TUPLE_OPS else [result]
    for value, proxy in zip(node.outputs, outs):
        env[value] = proxy
        if isinstance(proxy, fx.Proxy) and proxy.node not in before:
            proxy.node._rename(names[value])


def build_graph_module(graph: Graph, module: nn.Module | None = None) -> fx.GraphModule:
    """The model as a GraphModule; `module` (default: a fresh torch-backend module) gives the weights."""
    module = module if module is not None else build_module(graph)
    fx_graph = fx.Graph()
    names = value_names(graph)
    tracer = _Tracer(fx_graph, set(names.values()))
    env: dict[str, Any] = {p.value: fx.Proxy(fx_graph.placeholder(names[p.value]), tracer) for p in graph.inputs}
    space = _namespace(module, tracer)
    space["self"] = _Self(tracer.create_proxy("get_attr", "training", (), {}))
    cache: dict[str, fx.Proxy] = {}

    def get_param(name: str) -> fx.Proxy:
        if name not in cache:
            cache[name] = tracer.create_proxy("get_attr", name, (), {})
        return cache[name]

    for node in graph.nodes:
        _lower_node(node, graph, env, get_param, space, names, fx_graph)
    outs = [env[p.value].node for p in graph.outputs]
    fx_graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    fx_graph.eliminate_dead_code()  # drops unused reads such as an unused `self.training`
    gm = fx.GraphModule(module, fx_graph, class_name=type(module).__name__)
    for name, child in module.named_children():  # the whole tree: unread buffers and repr too
        setattr(gm, name, child)
    for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if not hasattr(gm, name):
            (gm.register_parameter if isinstance(tensor, nn.Parameter) else gm.register_buffer)(name, tensor)
    gm.graph.lint()
    gm.recompile()
    return gm


__all__ = ["build_graph_module", "torch"]
