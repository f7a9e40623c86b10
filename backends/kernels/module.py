"""What the Triton and CUDA packages share: region headers, the forward method, the package files.

The generated model class subclasses the torch target's class (same module tree, same
`state_dict`, same `reset_parameters`) and replaces `forward`: each region is one call, either a
generated kernel's launcher (`K.r8_gemm(...)`) or, for a `torch` region, the torch target's own
statement. In training mode it runs the torch forward (autograd, dropout, batch statistics):
the kernels are forward-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from archc.backends.kernels.partition import Partition, Region
from archc.backends.quote import PY_GLOBALS, c_comment, is_identifier, py_comment, py_docstring, verify_python
from archc.backends.torch.emit import CONDITIONAL_OPS, FUSED_OPS, TUPLE_OPS, class_name, expression, signature, source_labels
from archc.backends.torch.naming import RESERVED, value_names
from archc.backends.torch.tree import module_tree
from archc.ir.graph import Graph

VIEW_OPS = frozenset({"rearrange", "flatten", "select", "slice", "split", "chunk", "unbind", "parameter",
                      "positions"})


@dataclass
class Call:
    """A generated region as the forward method calls it."""

    region: Region
    args: list[tuple[str, str]]  # (launcher parameter, forward expression): values and parameters
    outputs: list[str]  # the IR values it returns, in order
    impl: str  # "generated", or "library + generated epilogue", ...


@dataclass
class Context:
    graph: Graph
    part: Partition
    labels: dict[str, str]
    names: dict[str, str]  # value -> forward variable
    tensors: dict[str, str]  # parameter -> accessor (`self.h[0].attn.qkv.weight`)
    cls: str
    notes: list[str] = field(default_factory=list)


def context(graph: Graph, part: Partition) -> Context:
    cls = class_name(graph)
    root = module_tree(graph)
    names = value_names(graph, RESERVED | {cls, "K", "rt"})
    tensors = {t.decl.name: t.expr for m in root.walk() for t in m.tensors}
    return Context(graph=graph, part=part, labels=source_labels(graph), names=names, tensors=tensors, cls=cls)


def where(ctx: Context, index: int) -> str:
    """`file:line` of a node, as spec text: quote it (py_comment, c_comment) wherever it goes."""
    node = ctx.graph.nodes[index]
    return f"{ctx.labels.get(node.span.file, node.span.file)}:{node.span.line}" if node.span else ""


def header(ctx: Context, region: Region, impl: str, comment: str = "#") -> str:
    """The comment above a region's kernel: what it computes and the spec lines it came from.
    `comment` is "#" (Python: py_comment) or "//" (C: c_comment); spec text goes through it."""
    q = py_comment if comment == "#" else c_comment
    nodes = [ctx.graph.nodes[i] for i in region.nodes]
    rule = f"{comment} " + "-" * (96 - len(comment))
    lines = [rule, f"{comment} {q(region.name)}: {q(' -> '.join(n.op for n in nodes))}  [{q(impl)}]"]
    for i, n in zip(region.nodes, nodes):
        lines.append(f"{comment}   {q(where(ctx, i)):<40} {q(n.op):<12} {q(n.scope)}".rstrip())
    lines.append(rule)
    return "\n".join(lines)


def torch_lines(ctx: Context, region: Region) -> list[str]:
    """A torch region spelled as the torch target spells it (an identity becomes an alias)."""
    out = []
    for i in region.nodes:
        node = ctx.graph.nodes[i]
        ins = [ctx.names[v] for v in node.inputs]
        comment = f"  # {py_comment(where(ctx, i))}" if node.span else ""
        if "alias" in region.note:
            out.append(f"{ctx.names[node.outputs[0]]} = {ins[0]}  # {py_comment(node.op)}: the identity in eval mode"
                       f"{comment[3:]}")
            continue
        expr = expression(node, ctx.graph, ins, {role: ctx.tensors[p] for role, p in node.params.items()})
        outs = [ctx.names[v] for v in node.outputs]
        lhs = ", ".join(outs) if len(outs) > 1 else f"({outs[0]},)" if node.op in TUPLE_OPS else outs[0]
        out.append(f"{lhs} = {expr}{comment}")
    return out


def forward_lines(ctx: Context, calls: dict[int, Call]) -> list[str]:
    lines = []
    dead_after = region_last_uses(ctx)
    for region in ctx.part.regions:
        call = calls.get(region.index)
        if call is None:
            lines.extend(torch_lines(ctx, region))
        else:
            outs = ", ".join(ctx.names[v] for v in call.outputs)
            args = ", ".join(expr for _, expr in call.args)
            first = ctx.graph.nodes[region.nodes[0]]
            note = py_comment(f"{where(ctx, region.nodes[0])} {first.scope}".strip())
            lines.append(f"{outs}, = K.{region.name}({args})  # {note}".rstrip())
        dead = [ctx.names[v] for v in dead_after.get(region.index, [])]
        if dead:  # free each activation after the region that reads it last, as the torch target does
            lines.append(f"del {', '.join(dead)}")
    return lines


def region_last_uses(ctx: Context) -> dict[int, list[str]]:
    """Per region, the named values read (or made) for the last time there. Values a fused region
    keeps inside its kernel have no name in `forward` and are never listed; outputs never die."""
    owner = {i: region.index for region in ctx.part.regions for i in region.nodes}
    made_in = {v: owner[i] for i, node in enumerate(ctx.graph.nodes) for v in node.outputs}
    last: dict[str, int] = {p.value: -1 for p in ctx.graph.inputs}
    order = [region.index for region in ctx.part.regions]
    rank = {r: k for k, r in enumerate(order)}
    for i, node in enumerate(ctx.graph.nodes):
        r = owner[i]
        for v in node.inputs:
            if made_in.get(v) != r:  # read from outside this region: it has a name in forward
                last[v] = max(last.get(v, -1), rank[r])
    keep = {p.value for p in ctx.graph.outputs}
    dead: dict[int, list[str]] = {}
    for v, k in last.items():
        if v not in keep and k >= 0:
            dead.setdefault(order[k], []).append(v)
    return dead


def explain(ctx: Context, calls: dict[int, Call]) -> list[str]:
    """One line per region: what runs it (`archc build --explain`)."""
    out = []
    for region in ctx.part.regions:
        # printed to a terminal: spec text without control characters (py_comment escapes them)
        ops = py_comment(" -> ".join(ctx.graph.nodes[i].op for i in region.nodes))
        scope = py_comment(ctx.graph.nodes[region.nodes[0]].scope) or "(model)"
        call = calls.get(region.index)
        if call is not None:
            how = call.impl
        elif "alias" in region.note:
            how = "alias (identity in eval mode)"
        elif all(ctx.graph.nodes[i].op in VIEW_OPS for i in region.nodes):
            how = "torch (a view or a parameter: no kernel needed)"
        elif region.note.startswith("library"):
            how = region.note
        else:
            how = f"torch fallback: {region.note}" if region.note else "torch"
        out.append(f"{region.name:<18} {py_comment(where(ctx, region.nodes[0])):<28} {scope:<28} {ops:<36} "
                   f"{py_comment(how)}")
    return out


_ENVS: dict[str, jinja2.Environment] = {}


def template(folder: Path, name: str) -> jinja2.Template:
    key = str(folder)
    if key not in _ENVS:
        _ENVS[key] = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined,
                                        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                                        autoescape=False)
    return _ENVS[key].get_template(name)


def source_text(ctx: Context) -> str:
    """The spec files the package came from (spec text: it goes into docstrings, via py_docstring)."""
    return ", ".join(sorted(set(ctx.labels.values()))) or "an IR graph"


def model_py(ctx: Context, calls: dict[int, Call], target: str, title: str, kernel_ext: str) -> str:
    """OUT/model.py: the torch target's class with a `forward` that calls the kernels."""
    assert is_identifier(ctx.cls), ctx.cls
    source = source_text(ctx)
    module_doc = (f"{ctx.cls} with {title} kernels: generated by archc from {source}. Do not edit; regenerate\n"
                  f"with `archc build --target {target}`.\n\n"
                  "The module tree, parameters and `state_dict` are the torch target's (torch_model.py); only\n"
                  "`forward` differs: each region of the model is one generated kernel or one library call\n"
                  f"(kernels.{kernel_ext}). The kernels are forward-only: in training mode, or when autograd needs\n"
                  "the result, `forward` runs the torch target's forward.\n")
    inputs = [ctx.names[p.value] for p in ctx.graph.inputs]
    return template(Path(__file__).parent, "model.py.j2").render(
        module_doc=py_docstring(module_doc), class_doc=py_docstring(signature(ctx.graph), indent="    "),
        cls=ctx.cls, torch_module="torch_model", kernel_module="kernels",
        inputs=", ".join(f"{n}: torch.Tensor" for n in inputs), input_names=", ".join(inputs),
        forward_lines=forward_lines(ctx, calls), returns=", ".join(ctx.names[p.value] for p in ctx.graph.outputs),
        helpers=sorted({calls[n.op] for calls in (CONDITIONAL_OPS, FUSED_OPS) for n in ctx.graph.nodes if n.op in calls}))


def init_py(ctx: Context, target: str) -> str:
    """OUT/__init__.py: exports the model class."""
    doc = py_docstring(f"{ctx.cls}: generated by archc (target {target}) from {source_text(ctx)}.")
    return f"{doc}\n\nfrom .model import {ctx.cls}\n\n__all__ = [{ctx.cls!r}]\n"


def verify_package(files: dict[str, str], generated: tuple[str, ...], extra: frozenset[str] = frozenset()) -> None:
    """Check every generated Python file of a package (quote.verify_python) before it is written;
    `extra` names the further globals the kernels' files read (`getattr` for ctypes symbols)."""
    for name in generated:
        verify_python(files[name], f"<archc package: {name}>", allowed=PY_GLOBALS | extra)


def write_files(out: Path, files: dict[str, str]) -> list[Path]:
    """Write a package as the folder `out`, all at once (archc.files.write_folder_atomic)."""
    from archc.files import write_folder_atomic

    return write_folder_atomic(out, files)


__all__ = ["Call", "Context", "context", "explain", "forward_lines", "header", "init_py", "model_py", "source_text",
           "template", "torch_lines", "verify_package"]
