"""Print an IR graph (after any pass) back as `.arch` text that compiles to the same graph.

The printed model is flat: one statement per node, `@scope("h.0.attn.qkv")` naming the instance
each node belongs to (so parameter names and weight sharing survive), attributes that differ
from their defaults as keywords, and the node's source line in a comment.
"""

from __future__ import annotations

from typing import Any

from archc.ir.graph import AnnotationIR, Graph, Node
from archc.ir.names import is_identifier
from archc.ir.types import FLOAT_DTYPES, TensorType
from archc.ops import registry

_ARCH_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def arch_str(text: str) -> str:
    """An .arch string literal for `text`: the one quoting layer of the printed .arch text. Backslash,
    quote, newline, CR and tab get their escapes, other non-printable characters `\\u{hex}`."""
    return '"' + "".join(_ARCH_ESCAPES.get(c) or (c if c.isprintable() else f"\\u{{{ord(c):x}}}")
                         for c in text) + '"'


def arch_comment(text: str) -> str:
    """`text` made fit for a `#` comment: one line, control characters and line separators escaped."""
    return repr(text)[1:-1]


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        text = repr(v)
        if isinstance(v, float) and "e" not in text and "." not in text:
            text += ".0"  # inf/nan are rejected by attribute validation before this point
        return text
    if isinstance(v, str):
        return arch_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


def _type(t: TensorType) -> str:
    return f"{t.dtype}[{', '.join(str(s) for s in t.sizes)}]"


def _annotation(a: AnnotationIR) -> str:
    args = [_literal(x) for x in a.args] + [f"{k}={_literal(v)}" for k, v in a.kwargs.items()]
    return f"@{a.name}" + (f"({', '.join(args)})" if args else "")


class _Names:
    """Readable names for values: the model's input names, then v1, v2, ... in order."""

    def __init__(self, graph: Graph) -> None:
        self.names: dict[str, str] = {}
        taken = set(registry.names())
        for port in graph.inputs:
            self.names[port.value] = port.name
            taken.add(port.name)
        self.taken = taken

    def __getitem__(self, vid: str) -> str:
        if vid not in self.names:
            base = "v" + vid.lstrip("%")
            while base in self.taken:
                base += "_"
            self.names[vid] = base
            self.taken.add(base)
        return self.names[vid]


def _node(node: Node, names: _Names, graph: Graph | None = None) -> str:
    op = registry.get(node.op)
    defaults = op.make_attrs({k: v for k, v in node.attrs.items()
                              if op.Attrs.model_fields[k].is_required()}).model_dump(mode="json")
    extra = getattr(op, "kwargs_field", None)
    args = [names[i] for i in node.inputs]
    for key, value in node.attrs.items():
        if key == extra:
            args += [f"{k}={_literal(v)}" for k, v in value.items()]
        elif value is not None and (op.Attrs.model_fields[key].is_required() or value != defaults.get(key)):
            args.append(f"{key}={_literal(value)}")
    args += _inits(node, graph) if graph is not None else []
    owners = node.param_owners()
    if len(owners) == 1 and owners != {node.scope}:
        args.append(f"tied={arch_str(owners.pop())}")  # the parameters belong to another instance
    outs = ", ".join(names[o] for o in node.outputs)
    prefix = f"@scope({arch_str(node.scope)}) " + _dtype(node, graph) + \
        "".join(_annotation(a) + " " for a in node.annotations)
    where = f"  # {arch_comment(node.span.file)}:{node.span.line}" if node.span else ""
    return f"    {prefix}{outs} = {node.op}({', '.join(args)}){where}"


def _inits(node: Node, graph: Graph) -> list[str]:
    """`weight_init="normal(0.02)"`, ... for the parameters whose initializer is not the op's own."""
    op = registry.get(node.op)
    if not node.params or node.op == "parameter":  # a parameter's init is its attribute
        return []
    defaults = op.params(op.make_attrs(node.attrs), [graph.values[v] for v in node.inputs])
    out = []
    for role, name in node.params.items():
        decl = graph.params.get(name)
        if decl is not None and role in defaults and decl.init != defaults[role].init:
            out.append(f"{role}_init={arch_str(decl.init)}")
    return out


def _dtype(node: Node, graph: Graph | None) -> str:
    """`@dtype("bf16") ` where an op with no float input has float parameters of another dtype than
    f32 (archc/elaborate/dtypes.py), so the printed statement makes them again."""
    if graph is None or not node.params or node.attrs.get("dtype") is not None or \
            any(graph.values[v].is_float for v in node.inputs):
        return ""
    floats = {graph.params[p].dtype for p in node.params.values()
              if p in graph.params and graph.params[p].dtype in FLOAT_DTYPES}
    return f"@dtype({arch_str(floats.pop())}) " if len(floats) == 1 and floats != {"f32"} else ""


def print_graph(graph: Graph) -> str:
    names = _Names(graph)
    axes = sorted({a for p in graph.inputs for s in p.type.sizes for a in s.atoms()})
    lines = [f"# {graph.name}: archc IR (schema {graph.schema_version}) printed as .arch", ""]
    if axes:
        lines += [f"axis {', '.join(axes)}", ""]
    for g in graph.guards:  # the elaborator finds them again in the printed text
        where = f", {g.span.file}:{g.span.line}:{g.span.col}" if g.span else ""
        lines.append("# " + arch_comment(f"run-time guard: {g.condition} ({g.why}{where})"))
    lines += [""] if graph.guards else []
    ins = ", ".join(f"{p.name}: {_type(p.type)}" for p in graph.inputs)
    outs = [_type(p.type) for p in graph.outputs]
    out_text = outs[0] if len(outs) == 1 else "(" + ", ".join(outs) + ")"
    name = graph.name if is_identifier(graph.name) else "Model"
    lines.append(f"model {name} ({ins}) -> {out_text} {{")
    lines += [_node(n, names, graph) for n in graph.nodes]
    lines.append("    return " + ", ".join(names[p.value] for p in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def canonical(graph: Graph) -> dict[str, Any]:
    """The graph as data, values renumbered in order, without spans, labels or display metadata:
    two graphs are the same IR exactly when their canonical forms are equal."""
    order: dict[str, str] = {}
    for p in graph.inputs:
        order.setdefault(p.value, f"%{len(order)}")
    for n in graph.nodes:
        for o in n.outputs:
            order.setdefault(o, f"%{len(order)}")
    data = graph.structural_dict()
    data["values"] = {order[k]: {"dtype": t.dtype, "shape": [str(s) for s in t.sizes]}
                      for k, t in graph.values.items() if k in order}
    for node in data["nodes"]:
        node["inputs"] = [order[i] for i in node["inputs"]]
        node["outputs"] = [order[o] for o in node["outputs"]]
    for port in data["inputs"] + data["outputs"]:
        port["value"] = order[port["value"]]
        port["type"] = {"dtype": port["type"]["dtype"], "shape": [str(d["size"]) for d in port["type"]["shape"]]}
        port.pop("name", None) if port in data["outputs"] else None
    for key in ("scopes", "model_args", "name"):
        data.pop(key, None)
    return data
