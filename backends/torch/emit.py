"""Emit a model as a standalone, readable PyTorch file: `emit_python(graph) -> str`.

Python decides here (names, the module tree, one statement per IR node); `module.py.j2` holds
the text. Each op is spelled by its own `torch_expr` in the op registry, and the fx backend
evaluates the same spelling, so there is one spelling per op. Same IR in, same bytes out.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import cache
from pathlib import Path

import jinja2

from archc.backends.quote import py_comment, py_docstring, py_str, verify_python
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
    return f"  # {py_comment(labels.get(span.file, span.file))}:{span.line}" if span else ""


def _value_text(value: object) -> str:
    if isinstance(value, str):
        return py_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return str(value)


def _signature(graph: Graph) -> str:
    """The model's signature as the spec would write it; it goes into docstrings (py_docstring)."""
    args = ", ".join(f"{k}={_value_text(v)}" for k, v in graph.model_args.items())
    ins = ", ".join(f"{p.name}: {p.type}" for p in graph.inputs)
    outs = ", ".join(str(p.type) for p in graph.outputs)
    return f"model {graph.name}({args}) ({ins}) -> {outs if len(graph.outputs) == 1 else f'({outs})'}"


def _tree_lines(root: ModuleEntry, graph: Graph, labels: dict[str, str]) -> tuple[list[str], list[str]]:
    """`__init__` lines (each module, then its tensors) and `reset_parameters` lines."""
    init, reset = [], []
    for m in root.walk():
        if m is not root:
            made = "nn.ModuleList()" if m.is_list else \
                f"Scope({py_str(m.kind)}, {py_str(m.args)})" if m.args else f"Scope({py_str(m.kind)})"
            made = f"{m.parent_expr}.append({made})" if m.is_layer else f"{m.expr} = {made}"
            init.append(made + _where(m.span, labels))
        for t in m.tensors:
            empty = empty_call(t.decl.shape, t.decl.dtype)
            if t.decl.trainable:
                init.append(f"{t.expr} = nn.Parameter({empty})")
            elif t.expr.endswith("]"):  # a name torch.nn.Module uses for a method: set the entry itself
                init.append(f"{t.expr} = {empty}")
            else:
                init.append(f"{m.expr}.register_buffer({py_str(t.attr)}, {empty})")
            try:
                reset.append(init_call(t.decl.init, t.expr))
            except InitError as err:
                owner = next((n for n in graph.nodes if t.decl.name in n.params.values()), None)
                raise ArchError(f"parameter '{t.decl.name}': {err}",
                                owner.span.to_span() if owner and owner.span else None) from None
    return init, reset


def last_uses(graph: Graph) -> list[list[str]]:
    """Per node, the values that are dead once it has run: read for the last time there, or made
    there and never read. Graph outputs never die. Deleting them (as torch.fx's generated code
    does) frees each activation as soon as it can go; a flat `forward` would otherwise hold every
    intermediate until it returns (all of ResNet-50's activations at once)."""
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in (*node.outputs, *node.inputs):
            last[v] = i
    keep = {p.value for p in graph.outputs}
    dead: list[list[str]] = [[] for _ in graph.nodes]
    for v, i in last.items():
        if v not in keep:
            dead[i].append(v)
    return dead


def overwrites(graph: Graph) -> set[int]:
    """The nodes that may overwrite their first input, as timm's ResNet does (`relu(inplace=True)`,
    `x += shortcut`): that input is made by a `fresh` op (a new tensor its backward never reads),
    read by this node alone (so nothing saved it for backward and nothing views it), not returned,
    and of the output's dtype and shape (no broadcast, no promotion). Same values, one buffer less:
    ResNet-50 at batch 8 ran 6-10% slower without it."""
    made_by = {v: node for node in graph.nodes for v in node.outputs}
    reads = Counter(v for node in graph.nodes for v in node.inputs)
    returned = {p.value for p in graph.outputs}
    out = set()
    for i, node in enumerate(graph.nodes):
        if not node.inputs or len(node.outputs) != 1:
            continue
        v = node.inputs[0]
        src = made_by.get(v)
        if src is None or not registry.get(src.op).fresh or reads[v] != 1 or v in returned:
            continue
        t, o = graph.values[v], graph.values[node.outputs[0]]
        if t.dtype == o.dtype and t.sizes == o.sizes:
            out.add(i)
    return out


def _forward_lines(root: ModuleEntry, graph: Graph, names: dict[str, str], labels: dict[str, str]) -> list[str]:
    tensors = {t.decl.name: t.expr for m in root.walk() for t in m.tensors}
    inplace = overwrites(graph)
    lines = []
    for i, (node, dead) in enumerate(zip(graph.nodes, last_uses(graph))):
        ins, params = [names[v] for v in node.inputs], {role: tensors[p] for role, p in node.params.items()}
        op = registry.get(node.op)
        types = [graph.values[v] for v in node.inputs]
        expr = op.torch_inplace_expr(op.make_attrs(node.attrs), ins, params, types) if i in inplace else None
        expr = expr or expression(node, graph, ins, params)
        outs = [names[v] for v in node.outputs]
        lhs = ", ".join(outs) if len(outs) > 1 else f"({outs[0]},)" if node.op in TUPLE_OPS else outs[0]
        lines.append(f"{lhs} = {expr}{_where(node.span, labels)}")
        if dead:
            lines.append(f"del {', '.join(names[v] for v in dead)}")
    return lines


def emit_python(graph: Graph) -> str:
    """The model as the text of a standalone `.py` file that needs only torch."""
    labels = source_labels(graph)
    root = module_tree(graph)
    name = class_name(graph)
    names = value_names(graph, RESERVED | {name})
    init, reset = _tree_lines(root, graph, labels)
    outs = [names[p.value] for p in graph.outputs]
    n_params = sum(p.numel for p in graph.params.values() if p.trainable)
    n_buffers = sum(p.numel for p in graph.params.values() if not p.trainable)
    source = ", ".join(sorted(set(labels.values()))) or "an IR graph"
    counts = f"{n_params:,} parameters" + (f", {n_buffers:,} buffer elements" if n_buffers else "")
    module_doc = (f"{name}: generated by archc from {source}. Do not edit; regenerate with `archc build`.\n\n"
                  f"    {_signature(graph)}\n\n{counts}. Needs only torch.\n")
    text = _template().render(
        name=name,
        module_doc=py_docstring(module_doc),
        class_doc=py_docstring(_signature(graph), indent="    "),
        init_lines=init,
        reset_lines=reset,
        inputs=", ".join(f"{names[p.value]}: torch.Tensor" for p in graph.inputs),
        return_type="torch.Tensor" if len(outs) == 1 else "tuple[torch.Tensor, ...]",
        forward_lines=_forward_lines(root, graph, names, labels),
        returns=", ".join(outs),
    )
    verify_python(text, f"<archc: {name}>", strings=spec_strings(graph))
    return text


def spec_strings(graph: Graph) -> tuple[str, ...]:
    """The spec's own text that the file holds as string constants: scope paths and string arguments."""
    found = [s for s in graph.scopes] + [p.rpartition(".")[2] for p in graph.params]
    found += [v for path, info in graph.scopes.items() if path not in graph.params
              for v in info.args.values() if isinstance(v, str)]
    return tuple(dict.fromkeys(s for s in found if s))


__all__ = ["FILE_GLOBALS", "TUPLE_OPS", "class_name", "emit_python", "expression", "last_uses", "overwrites",
           "source_labels"]
