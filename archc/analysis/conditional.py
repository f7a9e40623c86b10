"""Conditional computation before anything runs: the parameters one input uses (active) against the
total, the active FLOPs per input row, and the batched lowering's dispatch buffer, for each op that
uses a part of its weights per input (`Op.active_params`: mixtures of experts, fast feedforward),
and for each mixture whose expert is a block (`moe(E, Block)`: a scope of kind "moe" whose children
0 .. E-1 are the experts): k experts' parameters active, its FLOPs at the balanced load (the
routed-tokens axis at ceil(N * k / E), archc.analysis.summary.axis_values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from archc.analysis.summary import evaluate, human, node_flops
from archc.ir.blocks import within
from archc.ir.graph import Graph
from archc.ir.types import DTYPE_BYTES
from archc.ops import registry
from archc.ops.conditional import MOE_SCOPE


@dataclass(frozen=True)
class ConditionalRow:
    scope: str
    op: str
    params: int  # all of its parameters
    active: int  # those one input row uses
    flops_per_row: int  # active FLOPs per input row
    buffer_bytes: int | None  # the batched lowering's [E, C, D] dispatch buffer, at these sizes

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def conditional_rows(graph: Graph, env: Mapping[str, int]) -> list[ConditionalRow]:
    rows = []
    for node in graph.nodes:
        op = registry.get(node.op)
        attrs = op.make_attrs(node.attrs)
        ins = [graph.values[v] for v in node.inputs]
        active = op.active_params(attrs, ins)
        if active is None:
            continue
        total = sum(graph.params[p].numel for p in node.params.values())
        x = ins[0]
        n = 1
        for s in x.sizes[:-1]:
            n *= evaluate(s, env)
        elements = op.buffer_elements(attrs, ins)
        buffer = None if elements is None else evaluate(elements, env) * DTYPE_BYTES[x.dtype]
        rows.append(ConditionalRow(node.scope, node.op, total, active, node_flops(graph, node, env) // max(n, 1), buffer))
    return rows + [_mixture_row(graph, path, env) for path, info in graph.scopes.items() if info.kind == MOE_SCOPE]


def _mixture_row(graph: Graph, path: str, env: Mapping[str, int]) -> ConditionalRow:
    """A mixture of block experts: its parameters (the experts'), those of the k experts one input
    uses, and its FLOPs (the experts' at the balanced load) per input row."""
    inside = [node for node in graph.nodes if within(node.scope, path)]
    select = next(node for node in inside if node.op == "moe_select")
    x, idx = graph.values[select.inputs[0]], graph.values[select.inputs[2]]
    total = sum(p.numel for name, p in graph.params.items() if name.startswith(path + ".") and p.trainable)
    first = sum(p.numel for name, p in graph.params.items() if name.startswith(f"{path}.0.") and p.trainable)
    rows = evaluate(x.numel() / x.sizes[-1], env)
    flops = sum(node_flops(graph, node, env) for node in inside)
    return ConditionalRow(path, f"{MOE_SCOPE}({graph.scopes[path].args.get('expert', '')})", total,
                          evaluate(idx.sizes[-1], env) * first, flops // max(rows, 1), None)


def format_rows(rows: list[ConditionalRow], graph: Graph) -> list[str]:
    """The `archc summary` lines: the model's active parameters per input, then one line per op kind."""
    if not rows:
        return []
    total = graph.param_count()
    active = total - sum(r.params - r.active for r in rows)
    lines = [f"conditional compute: {active:,} of {total:,} parameters active per input ({active / total:.1%})"]
    kinds: dict[tuple[str, int, int, int, int | None], int] = {}
    for r in rows:
        key = (r.op, r.params, r.active, r.flops_per_row, r.buffer_bytes)
        kinds[key] = kinds.get(key, 0) + 1
    for (op, params, act, flops, buffer), count in kinds.items():
        times = f" (x{count})" if count > 1 else ""
        extra = f"; dispatch buffer {human(buffer, 'B', 1024)} (batched)" if buffer is not None else ""
        lines.append(f"  {op}{times}: {act:,} of {params:,} parameters and {human(flops)} FLOPs per input row{extra}")
    return lines
