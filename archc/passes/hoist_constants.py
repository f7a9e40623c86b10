"""Hoist build-time constants: values that depend on no input and no learned weight are computed
once, when the module is built, and held as non-persistent buffers.

A spec computes tables from constants inside the model (Llama's rotary `inv_freq`, DiT's timestep
frequencies: arange, pow, exp, division). Run as written, every forward recomputes them. This pass
finds them and marks each *maximal* one, so that a backend may compute it at construction.

A value is constant when its node owns no tensors (no parameter or buffer), draws no random numbers
(`Op.stochastic`: dropout in training), has only outputs of known sizes, and reads only constants,
or reads its inputs only for their device and sizes (`Op.shape_only`: arange, full) without
reading a symbolic one. So `arange(tokens, 0, 64, 2)` is constant and `arange(tokens, dim=1)`
(0 .. T-1) is not: where a table depends on an input axis, the part that does not is hoisted (as
Hugging Face's LlamaRotaryEmbedding keeps `inv_freq` and computes the angles per forward), which is
exact: the same operations on the same numbers, only earlier.

What it does: annotates `@constant` each constant node with an output that a non-constant node
reads (a root); everything a root reads is constant too, and computed with it. Left alone: a root
whose value the model returns (a caller may write into its result), and a lone creation op
(`full`, `arange` with nothing after it): building it is as cheap as reading a buffer, as torch's
Inductor constant folding also leaves constructors to run ("skip constructors").
Assumes: nothing about the mode: a constant is the same in training and eval.
Guarantees: the graph's dataflow is unchanged (a backend that ignores `@constant` computes the same
values each forward). The torch backend computes each root in its module's `reset_constants` and
registers it with `persistent=False`, so the state_dict is unchanged; the buffer follows the module
to a device, keeps the dtype the spec computes it in (a module cast to bf16 still holds the f32
table, as Hugging Face keeps `inv_freq` in f32), and is computed again after `to_empty`.
Reference: constant folding (Kildall, "A unified approach to global program optimization", POPL
1973) as torch does it on graphs: Inductor's `constant_fold` (which also skips constructors and
seeded random ops), and torch.fx's `split_const_subgraphs`, which splits the constant part off the
same way but runs it on the first call and keeps its results as parameters, in the state_dict.
Here they are non-persistent buffers computed at construction, as Hugging Face's `inv_freq`
(`register_buffer(..., persistent=False)`), so checkpoints do not change.
"""

from __future__ import annotations

from archc.ir.graph import AnnotationIR, Graph, Node
from archc.ops import registry
from archc.passes.editor import has_annotation, remake
from archc.passes.result import PassResult

CONSTANT = "constant"


def _static(graph: Graph, node: Node) -> bool:
    return all(s.is_const for v in node.outputs for s in graph.values[v].sizes)


def constant_nodes(graph: Graph) -> set[int]:
    """The indices of the nodes whose outputs depend only on constants."""
    made: set[str] = set()
    out: set[int] = set()
    for i, node in enumerate(graph.nodes):
        op = registry.get(node.op)
        if node.params or op.returns_param or not node.inputs and not op.shape_only:
            continue
        if op.stochastic(op.make_attrs(node.attrs)) or not _static(graph, node):
            continue
        if op.shape_only or all(v in made for v in node.inputs):
            out.add(i)
            made.update(node.outputs)
    return out


def roots(graph: Graph, constant: set[int]) -> list[int]:
    """The constant nodes worth a buffer: read by a non-constant node, not returned, not a lone
    creation op."""
    returned = {p.value for p in graph.outputs}
    made = {v for i in constant for v in graph.nodes[i].outputs}
    read_outside = {v for i, n in enumerate(graph.nodes) if i not in constant for v in n.inputs if v in made}
    return [i for i in sorted(constant)
            if not registry.get(graph.nodes[i].op).shape_only
            and any(v in read_outside for v in graph.nodes[i].outputs)
            and not any(v in returned for v in graph.nodes[i].outputs)]


def hoist_constants(graph: Graph) -> PassResult:
    chosen = {i for i in roots(graph, constant_nodes(graph)) if not has_annotation(graph.nodes[i], CONSTANT)}
    if not chosen:
        return PassResult(graph)  # nothing to mark: the graph itself
    nodes = tuple(remake(n, annotations=(*n.annotations, AnnotationIR(name=CONSTANT))) if i in chosen else n
                  for i, n in enumerate(graph.nodes))
    return PassResult(graph.model_copy(update={"nodes": nodes}))
