"""Emit a model as a standalone, readable PyTorch file: `emit_python(graph) -> str`.

Python decides here (names, the module tree, one statement per IR node); `module.py.j2` holds
the text. Each op is spelled by its own `torch_expr` in the op registry, and the fx backend
evaluates the same spelling, so there is one spelling per op. Same IR in, same bytes out.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import jinja2

from archc.backends.torch.inits import InitError, empty_call, init_call
from archc.backends.torch.naming import FILE_GLOBALS, RESERVED, sanitize, value_names
from archc.backends.torch.tree import ModuleEntry, module_tree
from archc.errors import ArchError
from archc.ir.graph import Graph, Node, SpanModel
from archc.ops import registry

# Ops whose torch spelling returns a tuple even when the IR node has a single output.
TUPLE_OPS = frozenset({"split", "chunk", "unbind"})


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    return env.get_template("module.py.j2")


def class_name(graph: Graph) -> str:
    name = sanitize(graph.name)
    return name if name not in RESERVED else f"{name}Model"


def expression(node: Node, graph: Graph, inputs: list[str], params: dict[str, str]) -> str:
    """The node as one torch expression over the given input and parameter expressions."""
    op = registry.get(node.op)
    types = [graph.values[v] for v in node.inputs]
    return op.torch_expr(op.make_attrs(node.attrs), inputs, params, types)


def source_labels(graph: Graph) -> dict[str, str]:
    """Short, location-independent labels for the spec files: paths relative to their common folder."""
    files = sorted({n.span.file for n in graph.nodes if n.span} | {s.span.file for s in graph.scopes.values() if s.span})
    if not files:
        return {}
    common = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    return {f: os.path.relpath(os.path.abspath(f), common) for f in files}


def _where(span: SpanModel | None, labels: dict[str, str]) -> str:
    return f"  # {labels.get(span.file, span.file)}:{span.line}" if span else ""


def _signature(graph: Graph) -> str:
    args = ", ".join(f"{k}={v}" for k, v in graph.model_args.items())
    ins = ", ".join(f"{p.name}: {p.type}" for p in graph.inputs)
    outs = ", ".join(str(p.type) for p in graph.outputs)
    return f"model {graph.name}({args}) ({ins}) -> {outs if len(graph.outputs) == 1 else f'({outs})'}"


def _tree_lines(root: ModuleEntry, graph: Graph, labels: dict[str, str]) -> tuple[list[str], list[str]]:
    """`__init__` lines (each module, then its tensors) and `reset_parameters` lines."""
    init, reset = [], []
    for m in root.walk():
        if m is not root:
            made = "nn.ModuleList()" if m.is_list else f"Scope({m.kind!r}, {m.args!r})" if m.args else f"Scope({m.kind!r})"
            made = f"{m.parent_expr}.append({made})" if m.is_layer else f"{m.expr} = {made}"
            init.append(made + _where(m.span, labels))
        for t in m.tensors:
            empty = empty_call(t.decl.shape, t.decl.dtype)
            if t.decl.trainable:
                init.append(f"{t.expr} = nn.Parameter({empty})")
            elif t.expr.endswith("]"):  # a name torch.nn.Module uses for a method: set the entry itself
                init.append(f"{t.expr} = {empty}")
            else:
                init.append(f"{m.expr}.register_buffer({t.attr!r}, {empty})")
            try:
                reset.append(init_call(t.decl.init, t.expr))
            except InitError as err:
                owner = next((n for n in graph.nodes if t.decl.name in n.params.values()), None)
                raise ArchError(f"parameter '{t.decl.name}': {err}",
                                owner.span.to_span() if owner and owner.span else None) from None
    return init, reset


def _forward_lines(root: ModuleEntry, graph: Graph, names: dict[str, str], labels: dict[str, str]) -> list[str]:
    tensors = {t.decl.name: t.expr for m in root.walk() for t in m.tensors}
    lines = []
    for node in graph.nodes:
        expr = expression(node, graph, [names[v] for v in node.inputs],
                          {role: tensors[p] for role, p in node.params.items()})
        outs = [names[v] for v in node.outputs]
        lhs = ", ".join(outs) if len(outs) > 1 else f"({outs[0]},)" if node.op in TUPLE_OPS else outs[0]
        lines.append(f"{lhs} = {expr}{_where(node.span, labels)}")
    return lines


def emit_python(graph: Graph) -> str:
    """The model as the text of a standalone `.py` file that needs only torch."""
    labels = source_labels(graph)
    root = module_tree(graph)
    name = class_name(graph)
    names = value_names(graph, RESERVED | {name})
    init, reset = _tree_lines(root, graph, labels)
    outs = [names[p.value] for p in graph.outputs]
    return _template().render(
        name=name,
        source=", ".join(sorted(set(labels.values()))) or "an IR graph",
        signature=_signature(graph),
        n_params=sum(p.numel for p in graph.params.values() if p.trainable),
        n_buffers=sum(p.numel for p in graph.params.values() if not p.trainable),
        init_lines=init,
        reset_lines=reset,
        inputs=", ".join(f"{names[p.value]}: torch.Tensor" for p in graph.inputs),
        return_type="torch.Tensor" if len(outs) == 1 else "tuple[torch.Tensor, ...]",
        forward_lines=_forward_lines(root, graph, names, labels),
        returns=", ".join(outs),
    )


__all__ = ["FILE_GLOBALS", "TUPLE_OPS", "class_name", "emit_python", "expression", "source_labels"]
