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
from typing import Callable

import jinja2

from archc.backends.kernels.partition import Partition, Region
from archc.backends.torch.emit import TUPLE_OPS, class_name, expression, source_labels
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
    node = ctx.graph.nodes[index]
    return f"{ctx.labels.get(node.span.file, node.span.file)}:{node.span.line}" if node.span else ""


def header(ctx: Context, region: Region, impl: str, comment: str = "#") -> str:
    """The comment above a region's kernel: what it computes and the spec lines it came from."""
    nodes = [ctx.graph.nodes[i] for i in region.nodes]
    rule = f"{comment} " + "-" * (96 - len(comment))
    lines = [rule, f"{comment} {region.name}: {' -> '.join(n.op for n in nodes)}  [{impl}]"]
    for i, n in zip(region.nodes, nodes):
        lines.append(f"{comment}   {where(ctx, i):<40} {n.op:<12} {n.scope}")
    lines.append(rule)
    return "\n".join(lines)


def torch_lines(ctx: Context, region: Region) -> list[str]:
    """A torch region spelled as the torch target spells it (an identity becomes an alias)."""
    out = []
    for i in region.nodes:
        node = ctx.graph.nodes[i]
        ins = [ctx.names[v] for v in node.inputs]
        comment = f"  # {where(ctx, i)}" if node.span else ""
        if "alias" in region.note:
            out.append(f"{ctx.names[node.outputs[0]]} = {ins[0]}  # {node.op}: the identity in eval mode{comment[3:]}")
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
            lines.append(f"{outs}, = K.{region.name}({args})  # {where(ctx, region.nodes[0])} {first.scope}".rstrip())
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
        ops = " -> ".join(ctx.graph.nodes[i].op for i in region.nodes)
        scope = ctx.graph.nodes[region.nodes[0]].scope or "(model)"
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
        out.append(f"{region.name:<18} {where(ctx, region.nodes[0]):<28} {scope:<28} {ops:<36} {how}")
    return out


_ENVS: dict[str, jinja2.Environment] = {}


def template(folder: Path, name: str) -> jinja2.Template:
    key = str(folder)
    if key not in _ENVS:
        _ENVS[key] = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined,
                                        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                                        autoescape=False)
    return _ENVS[key].get_template(name)


def write_files(out: Path, files: dict[str, str], write: Callable[[Path, str], None]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write(out / name, text)


__all__ = ["Call", "Context", "context", "explain", "forward_lines", "header", "template", "torch_lines"]
