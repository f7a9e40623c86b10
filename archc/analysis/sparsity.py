"""The sparse weights of a graph before any weight exists: dense and effective (nonzero) parameters
and FLOPs, and whether a sparse kernel can be expected to pay (`archc check`, `archc summary`).

A sparse op's effective FLOPs are its dense FLOPs times the fraction of its weight kept: a
matmul or convolution does one multiply-add per nonzero weight and input row. The GPU outlook is
`gpu_outlook` (2:4 on sparse tensor cores: pattern, op, dtype, shape multiples,
size); on the CPU, unstructured and block weights are decided by measurement when lowered.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from archc.analysis.summary import human, node_flops
from archc.ir import sparsity as S
from archc.ir.graph import Graph

if TYPE_CHECKING:
    from archc.passes.prune import SparseWeight


# 2:4 on NVIDIA sparse tensor cores (torch.sparse.to_sparse_semi_structured): the dtypes each
# backend packs, and the multiples the weight's rows and columns need (torch 2.13's tables,
# read from torch/sparse/semi_structured.py: cuSPARSELt and CUTLASS; a weight fitting both works
# with either). fp32 has no cuSPARSELt kernel.
SEMI_DTYPES = ("f16", "bf16", "i8")
SEMI_MULTIPLE = {"f16": (32, 64), "bf16": (32, 64), "i8": (32, 128)}
SEMI_MIN_CC = (8, 0)
# Below this many columns or rows, published 2:4 measurements (PyTorch's semi-structured tutorial,
# NVIDIA's ASP results) show no gain over dense cuBLAS: archc's threshold, stated, not measured here.
SEMI_MIN_DIM = 1024
SEMI_MIN_TOKENS = 64  # fewer rows of activations (batch-1 decode) leave the kernel memory-bound


def gpu_outlook(w: "SparseWeight", graph: Graph, dtype: str | None = None) -> str | None:
    """None when a 2:4 kernel can be used and may pay for this weight on a GPU, else why not
    (`dtype`: the weight's at run time, when the model was cast; else the spec's)."""
    if w.pattern.kind != "n:m" or (w.pattern.n, w.pattern.m) != (2, 4):
        return f"{w.pattern.text()}: sparse tensor cores take 2:4 only"
    if w.node.op != "linear":
        return f"{w.node.op}: only linear weights are packed for sparse tensor cores"
    dtype = dtype or graph.params[w.weight].dtype
    if dtype not in SEMI_DTYPES:
        return f"{dtype}: 2:4 kernels take {', '.join(SEMI_DTYPES)} (cast the model, e.g. to bf16)"
    rows, cols = w.shape
    mr, mc = SEMI_MULTIPLE[dtype]
    if rows % mr or cols % mc:
        return f"weight {rows}x{cols}: 2:4 kernels in {dtype} need multiples of {mr}x{mc}"
    if min(rows, cols) < SEMI_MIN_DIM:
        return f"weight {rows}x{cols}: below {SEMI_MIN_DIM} in a dimension, no speed-up is expected"
    sizes = graph.values[w.node.inputs[0]].sizes[:-1]
    if all(s.is_const for s in sizes) and math.prod(s.value for s in sizes) < SEMI_MIN_TOKENS:
        return (f"{math.prod(s.value for s in sizes)} rows of input: too few (memory-bound, as in batch-1 "
                "decode), no speed-up expected")
    return None  # (a symbolic number of rows depends on the batch: not known here)


@dataclass(frozen=True)
class SparseRow:
    weight: str
    op: str
    pattern: str
    dense: int  # weight elements
    kept: int  # nonzero at most
    flops: int  # dense FLOPs of its op(s)
    effective_flops: int
    gpu: str  # "2:4 kernel" or why not
    cpu: str

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def sparse_rows(graph: Graph, env: Mapping[str, int] | None = None) -> list[SparseRow]:
    """One row per sparse weight; FLOPs only when `env` gives the axes their values."""
    from archc.passes.prune import sparse_weights

    rows = []
    for w in sparse_weights(graph):
        total, kept = math.prod(w.shape), S.kept_elements(w.pattern, w.shape)
        users = [n for n in graph.nodes if n.params.get("weight") == w.weight]
        flops = sum(node_flops(graph, n, env) for n in users) if env is not None else 0
        why = gpu_outlook(w, graph)
        cpu = ("no CPU kernel for N:M: computed dense" if w.pattern.kind == "n:m" else
               "CSR/BSR where it measures faster when lowered (archc.sparsity.lower)")
        rows.append(SparseRow(w.weight, w.node.op, w.pattern.text(), total, kept, flops,
                              flops * kept // total, "2:4 kernel (compute capability 8.0+)" if why is None else why, cpu))
    return rows


def format_rows(rows: list[SparseRow], graph: Graph) -> list[str]:
    """The `archc summary` lines for the sparse weights."""
    if not rows:
        return []
    dense = graph.param_count()
    cut = sum(r.dense - r.kept for r in rows)
    flops, eff = sum(r.flops for r in rows), sum(r.effective_flops for r in rows)
    lines = [f"sparse weights: {len(rows)}; parameters {dense:,} dense, {dense - cut:,} nonzero "
             f"({(dense - cut) / dense:.1%}); their ops' FLOPs {human(flops)} dense, {human(eff)} effective"]
    width = max(len(r.weight) for r in rows)
    for r in rows:
        lines.append(f"  {r.weight.ljust(width)}  {r.op}  {r.pattern}: {r.dense:,} -> {r.kept:,}; "
                     f"GPU: {r.gpu}; CPU: {r.cpu}")
    return lines


def check_lines(graph: Graph) -> list[str]:
    """`archc check`'s note on sparse weights: counts, and where no speed-up is expected, why."""
    rows = sparse_rows(graph)
    if not rows:
        return []
    dense = graph.param_count()
    kept = dense - sum(r.dense - r.kept for r in rows)
    patterns = "; ".join(f"{p} (x{n})" for p, n in Counter(r.pattern for r in rows).items())
    lines = [f"note: {len(rows)} sparse weights ({patterns}): {kept:,} of {dense:,} parameters nonzero"]
    for reason, n in Counter(r.gpu for r in rows if not r.gpu.startswith("2:4 kernel")).items():
        lines.append(f"note: no GPU speed-up expected for {n} of them: {reason}")
    return lines

