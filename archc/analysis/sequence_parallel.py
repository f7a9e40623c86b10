"""Sequence parallelism (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models"; torchtitan's `apply_tp`) on top of a tensor-parallel plan
(archc/analysis/parallel.py): between the tensor-parallel blocks of a stack, the residual stream
is split along its sequence axis, so norms, dropout and residual adds run on 1/tp of the tokens.

    the stack                 its input sliced along the sequence, its output gathered
                              (PrepareModuleInputOutput: Replicate -> Shard(seq) -> Replicate)
    a norm on the stream      SequenceParallel(sequence_dim=seq)
    a block around a column   PrepareModuleInput: Shard(seq) -> Replicate (all-gather)
    split
    its row split             RowwiseParallel(output_layouts=Shard(seq)) (reduce-scatter)

Other ops on the split stream must be elementwise and own no parameters; anything else is a
located error (a parameter there would need its gradients summed over the ranks).
"""

from __future__ import annotations

from dataclasses import replace

from archc.analysis.parallel import _PASS_THROUGH, Placement, _owned, _Region, _span
from archc.errors import ArchError
from archc.ir.graph import Graph, Node
from archc.ops import registry

_NORMS = ("layernorm", "rmsnorm")


def sequence_placements(graph: Graph, regions: list[_Region], layers: list[str], tp: int,
              placements: list[Placement]) -> list[Placement]:
    """Sequence parallelism inside each stack: its input split along the sequence axis (the one
    before the features), norms on the split stream `SequenceParallel`, each block around a column
    split gathers its input, each row split reduce-scatters its output along the sequence, and the
    stack's output is gathered. Any other op on the split stream must leave the sequence axis
    alone and own no parameters (a parameter there would need its gradients summed over the ranks)."""
    out = list(placements)
    rows = {graph.nodes[k].scope: k for r in regions for k in r.rows}
    for stack in dict.fromkeys(layer.rpartition(".")[0] for layer in layers):
        info = graph.scopes[stack]
        span = info.span.to_span() if info.span else None
        if len(info.calls) != 1 or len(info.calls[0].inputs) != 1 or len(info.calls[0].outputs) != 1:
            raise ArchError(f"sequence parallelism: the stack '{stack}' is not one call of one tensor in, one out", span)
        call = info.calls[0]
        x = graph.values[call.inputs[0]]
        if x.rank < 3:
            raise ArchError(f"sequence parallelism: the stack '{stack}' takes {x}, not a [batch, sequence, "
                            "features] stream", span)
        length = x.shape[-2].size
        if length.is_const and int(length.value) % tp:
            raise ArchError(f"sequence parallelism over {tp} ranks splits the {length.value} positions of the "
                            f"stream of '{stack}', which {tp} does not divide", span)
        mixers = _mixers(graph, regions, call.start, call.stop)
        state: dict[str, int] = {call.inputs[0]: -2}
        skip_to = -1
        for i in range(call.start, call.stop):
            if i < skip_to:
                continue
            if i in mixers:
                path, mixer = mixers[i]
                skip_to = mixer.stop
                if state.get(mixer.inputs[0]) != -2:
                    raise ArchError(f"sequence parallelism: '{path}' does not read the split stream", _span(graph, i))
                out.append(Placement(path, "gather_input", seq=graph.values[mixer.inputs[0]].rank - 2,
                                     why="gathers the sequence for its column split"))
                state.update({v: -2 for v in mixer.outputs})
                continue
            node = graph.nodes[i]
            if any(v in state for v in node.inputs):
                for v, dim in zip(node.outputs, _sequence_rule(graph, i, node, state)):
                    state[v] = dim
                if node.op in _NORMS:
                    rank = graph.values[node.inputs[0]].rank
                    out.append(Placement(node.scope, "sequence", seq=rank + state[node.inputs[0]],
                                         why="norm on the split stream"))
        out.append(Placement(stack, "split_stream", seq=x.rank - 2, why="the stream split along the sequence"))
    return [replace(p, seq=graph.values[graph.nodes[rows[p.path]].outputs[0]].rank - 2)
            if p.style == "rowwise" and p.path in rows else p for p in out]


def _mixers(graph: Graph, regions: list[_Region], start: int, stop: int) -> dict[int, tuple[str, object]]:
    """First node -> (path, call) of the block around each column split in [start, stop): the
    innermost callable block that holds the split and whose one input is the column linear's."""
    out: dict[int, tuple[str, object]] = {}
    for r in regions:
        if not start <= r.cols[0] < stop:
            continue
        col = graph.nodes[r.cols[0]]
        path = col.scope
        while path:
            path = path.rpartition(".")[0]
            info = graph.scopes.get(path)
            if info is not None and len(info.calls) == 1 and \
                    all(info.calls[0].start <= k < info.calls[0].stop for k in r.cols + r.rows):
                call = info.calls[0]
                if call.inputs[0] != col.inputs[0]:
                    raise ArchError(f"sequence parallelism: the block '{path}' around the column split "
                                    f"'{col.scope}' does not take that linear's input first", _span(graph, r.cols[0]))
                out[call.start] = (path, call)
                break
    return out


def _sequence_rule(graph: Graph, i: int, node: Node, state: dict[str, int]) -> list[int]:
    """Where the sequence axis of the outputs is, for an op reading the split stream."""
    split = [state[v] for v in node.inputs if v in state]
    dim = split[0]
    where = f"sequence parallelism: {node.op} reads the stream split along the sequence"
    if any(d != dim for d in split):
        raise ArchError(f"{where} along different axes", _span(graph, i))
    if node.op in _NORMS:
        if not _owned(graph, node, node.op) or node.attrs.get("dim", -1) not in (-1, graph.values[node.inputs[0]].rank - 1):
            raise ArchError(f"{where}: a norm over the last axis, as a module of its own, can be split", _span(graph, i))
        return [dim]
    if node.params:
        raise ArchError(f"{where} with parameters of '{node.scope}', which would need their gradients summed over "
                        "the ranks; there is no placement rule for them", _span(graph, i),
                        "use sequence parallelism off (sp=False) for this model")
    if registry.get(node.op).elementwise is not None or node.op in _PASS_THROUGH:
        for v in node.inputs:
            t = graph.values[v]
            if v not in state and t.rank >= -dim and t.sizes[dim] != 1:
                raise ArchError(f"{where} with a tensor that is whole along it", _span(graph, i))
        return [dim] * len(node.outputs)
    raise ArchError(f"{where} and has no placement rule for it", _span(graph, i))


__all__ = ["sequence_placements"]
