"""How the torch backend spells the IR: an op node as an expression, a source line as a comment,
the model's signature, and which values die or may be overwritten where. Shared by the `.py`
emitter, the fx backend and the kernel packages.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

from archc.backends.quote import is_identifier, py_comment, py_str
from archc.ir.graph import Graph, Node, SpanModel
from archc.ir.sparsity import MASK
from archc.ops import registry

# Ops whose torch spelling returns a tuple even when the IR node has a single output.
TUPLE_OPS = frozenset({"split", "chunk", "unbind"})


def expression(node: Node, graph: Graph, inputs: list[str], params: dict[str, str]) -> str:
    """The node as one torch expression over the given input and parameter expressions."""
    op = registry.get(node.op)
    types = [graph.values[v] for v in node.inputs]
    if MASK in params:  # a sparse weight (@sparse): the op computes with `weight * weight_mask`
        params = {**params, "weight": f"({params['weight']} * {params[MASK]})"}
    return op.torch_expr(op.make_attrs(node.attrs), inputs, params, types)


def source_labels(graph: Graph) -> dict[str, str]:
    """Short, location-independent labels for the spec files: paths relative to their common folder."""
    files = sorted({n.span.file for n in graph.nodes if n.span} | {s.span.file for s in graph.scopes.values() if s.span})
    if not files:
        return {}
    common = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    return {f: os.path.relpath(os.path.abspath(f), common) for f in files}


def where(span: SpanModel | None, labels: dict[str, str]) -> str:
    return f"  # {py_comment(labels.get(span.file, span.file))}:{span.line}" if span else ""


def value_text(value: object, bare_names: bool = False) -> str:
    """An argument's value as the spec would show it, strings quoted by py_str (with `bare_names`,
    a dotted name such as `gelu` stands unquoted); the text goes into docstrings and reprs."""
    if isinstance(value, str):
        return value if bare_names and all(is_identifier(p) for p in value.split(".")) else py_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v, bare_names) for v in value) + "]"
    return repr(value)


def signature(graph: Graph) -> str:
    """The model's signature as the spec would write it; it goes into docstrings (py_docstring)."""
    args = ", ".join(f"{k}={value_text(v)}" for k, v in graph.model_args.items())
    ins = ", ".join(f"{p.name}: {p.type}" for p in graph.inputs)
    outs = ", ".join(str(p.type) for p in graph.outputs)
    return f"model {graph.name}({args}) ({ins}) -> {outs if len(graph.outputs) == 1 else f'({outs})'}"


def last_uses(steps: Sequence[tuple[Sequence[str], Sequence[str]]], keep: set[str]) -> list[list[str]]:
    """Per step (its reads, its writes), the values that are dead once it has run: read for the
    last time there, or made there and never read; `keep` (what the forward returns) never dies.
    Deleting them (as torch.fx's generated code does) frees each activation as soon as it can go;
    a long `forward` would otherwise hold every intermediate until it returns."""
    last: dict[str, int] = {}
    for k, (reads, writes) in enumerate(steps):
        for v in (*writes, *reads):
            last[v] = k
    dead: list[list[str]] = [[] for _ in steps]
    for v, k in last.items():
        if v not in keep:
            dead[k].append(v)
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
        if src is None or not registry.get(src.op).fresh or reads[v] != 1 or v in returned or \
                any(a.name == "constant" for a in src.annotations):  # a buffer (hoist_constants)
            continue
        t, o = graph.values[v], graph.values[node.outputs[0]]
        if t.dtype == o.dtype and t.sizes == o.sizes:
            out.add(i)
    return out
