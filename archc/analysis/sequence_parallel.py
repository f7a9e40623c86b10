"""Sequence parallelism (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models"; torchtitan's `apply_tp`) on top of a tensor-parallel plan
(archc/analysis/parallel.py): between the tensor-parallel blocks of a stack, the residual stream
is split along its sequence axis, so norms, dropout and residual adds run on 1/tp of the tokens.

    the stack                 its input sliced along the sequence, its output gathered
                              (SequenceSplit: Replicate -> Shard(seq) -> Replicate; a length tp
                              does not divide is an error when it runs); a stack whose layers
                              take more than the stream (Llama's rotary tables) is no module: its
                              first layer slices the stream, its last gathers it, the other
                              inputs pass whole
    a norm on the stream      SequenceParallel(sequence_dim=seq)
    a block around a column   PrepareModuleInput: Shard(seq) -> Replicate (all-gather); its other
    split                     inputs (rotary tables, masks) pass whole
    its row split             RowwiseParallel(output_layouts=Shard(seq)) (reduce-scatter)
    a block around a mixture  PrepareModuleInputOutput: its input gathered, its outputs shaped as
    of experts (moe_router)   the stream sliced again (torchtitan gathers before its MoE too)

Other ops on the split stream must be elementwise and own no parameters; anything else is a
located error (a parameter there would need its gradients summed over the ranks).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from archc.analysis.parallel import _PASS_THROUGH, Placement, _owned, _Region, _span
from archc.errors import ArchError, Span
from archc.ir.graph import Graph, Node
from archc.ops import registry

_NORMS = ("layernorm", "rmsnorm")


def sequence_placements(graph: Graph, regions: list[_Region], layers: list[str], tp: int,
                        placements: list[Placement]) -> list[Placement]:
    """Sequence parallelism inside each stack: its input split along the sequence axis (the one
    before the features), norms on the split stream `SequenceParallel`, each block around a column
    split gathers its input, each row split reduce-scatters its output along the sequence, a block
    around a mixture of experts runs on the gathered sequence and splits its output again, and the
    stack's output is gathered. The stack's other inputs (rotary tables, a load accumulator) stay
    whole on every rank. Any other op on the split stream must leave the sequence axis alone and
    own no parameters (a parameter there would need its gradients summed over the ranks)."""
    out = list(placements)
    scattered: set[str] = set()  # the row splits whose output is reduce-scattered along the sequence
    for stack in dict.fromkeys(layer.rpartition(".")[0] for layer in layers):
        info = graph.scopes[stack]
        span = info.span.to_span() if info.span else None
        if len(info.calls) != 1:
            raise ArchError(f"sequence parallelism: the stack '{stack}' is called {len(info.calls)} times, "
                            "not once", span)
        call = info.calls[0]
        x = graph.values[call.inputs[0]]
        if x.rank < 3:
            raise ArchError(f"sequence parallelism: the stack '{stack}' takes {x} first, not a [batch, sequence, "
                            "features] stream", span)
        length = x.shape[-2].size
        if length.is_const and int(length.value) % tp:
            raise ArchError(f"sequence parallelism over {tp} ranks splits the {length.value} positions of the "
                            f"stream of '{stack}', which {tp} does not divide", span)
        members = [lay for lay in layers if lay.rpartition(".")[0] == stack]
        chained = _chained(graph, members, call)
        found = len(out)
        state = _trace(graph, regions, call.start, call.stop, call.inputs[0], out, scattered)
        seq = x.rank - 2
        clash = next((p for p in out[found:] if p.path in members), None)
        if clash is not None and not chained:  # the layer itself gathers: it cannot also split the stream
            raise ArchError(f"sequence parallelism: the layer '{clash.path}' is itself the block that gathers the "
                            "stream; the stack's ends need a block inside it", span,
                            "put the layer's mixing in a block of its own (as Llama's self_attn, mlp)")
        if chained:  # one module (nn.Sequential) in and out
            if state.get(call.outputs[0]) != -2:
                raise ArchError(f"sequence parallelism: the stack '{stack}' does not return the split stream", span)
            out.append(Placement(stack, "split_stream", seq=seq, inputs=(True,), outputs=(True,),
                                 where=_where(span, stack), why="the stream split along the sequence"))
            continue
        out += _layer_ends(graph, stack, members, call, state, seq, span)
    rows = _rows(graph, regions)
    return [replace(p, seq=graph.values[graph.nodes[rows[p.path]].outputs[0]].rank - 2)
            if p.style == "rowwise" and p.path in scattered else p for p in out]


def _rows(graph: Graph, regions: list[_Region]) -> dict[str, int]:
    return {graph.nodes[k].scope: k for r in regions for k in r.rows}


def _trace(graph: Graph, regions: list[_Region], start: int, stop: int, stream: str, out: list[Placement],
           scattered: set[str]) -> dict[str, int]:
    """Follow the split stream through nodes [start, stop): which values are split along which
    axis (negative, from the last); appends the placements of the norms and blocks it meets."""
    mixers = _mixers(graph, regions, start, stop)
    rows = _rows(graph, regions)
    state: dict[str, int] = {stream: -2}
    skip_to = -1
    for i in range(start, stop):
        if i < skip_to:
            continue
        if i in mixers:
            path, mixer, kind = mixers[i]
            skip_to = mixer.stop
            if state.get(mixer.inputs[0]) != -2:
                raise ArchError(f"sequence parallelism: '{path}' does not read the split stream first", _span(graph, i))
            if any(v in state for v in mixer.inputs[1:]):
                raise ArchError(f"sequence parallelism: '{path}' reads the split stream in more than its first "
                                "input", _span(graph, i))
            flags = tuple(v == mixer.inputs[0] for v in mixer.inputs)
            seq = graph.values[mixer.inputs[0]].rank - 2
            if kind == "moe":  # gathered, run whole on every rank, split again (torchtitan's MoE)
                like = graph.values[mixer.inputs[0]]
                back = tuple(graph.values[v].shape == like.shape for v in mixer.outputs)
                partial = _partial_experts(graph, mixer, back, out)
                out.append(Placement(path, "gathered", seq=seq, inputs=flags, outputs=back, shard_output=partial,
                                     why="a mixture of experts on the gathered sequence"
                                     + (", its experts' partial sums reduce-scattered" if partial else "")))
                state.update({v: -2 for v, split in zip(mixer.outputs, back) if split})
                continue
            cols = {k for r in regions for k in r.cols if mixer.start <= k < mixer.stop}
            only = all(k in cols for k in range(mixer.start, mixer.stop) if mixer.inputs[0] in graph.nodes[k].inputs)
            out.append(Placement(path, "gather_input", seq=seq, inputs=flags, local=not only,
                                 why="gathers the sequence for its column split"))
            inside = {p: k for p, k in rows.items() if mixer.start <= k < mixer.stop}
            scattered.update(inside)
            if len(mixer.outputs) != 1:
                raise ArchError(f"sequence parallelism: '{path}' returns {len(mixer.outputs)} values; a block "
                                "around a column split returns its row split's output alone", _span(graph, i))
            split = {graph.nodes[k].outputs[0]: -2 for k in inside.values()}  # reduce-scattered
            for k in range(min(inside.values(), default=mixer.stop), mixer.stop):
                if k not in inside.values():
                    _follow(graph, k, split, out)
            if split.get(mixer.outputs[0]) != -2:
                raise ArchError(f"sequence parallelism: '{path}' does not return its row split's output split "
                                "along the sequence", _span(graph, mixer.stop - 1))
            state[mixer.outputs[0]] = -2
            continue
        _follow(graph, i, state, out)
    return state


def _follow(graph: Graph, i: int, state: dict[str, int], out: list[Placement]) -> None:
    """Node `i`, if it reads a split value: where its outputs are split; a norm SequenceParallel."""
    node = graph.nodes[i]
    if any(v in state for v in node.inputs):
        for v, dim in zip(node.outputs, _sequence_rule(graph, i, node, state)):
            state[v] = dim
        if node.op in _NORMS:
            rank = graph.values[node.inputs[0]].rank
            out.append(Placement(node.scope, "sequence", seq=rank + state[node.inputs[0]],
                                 why="norm on the split stream"))


def _partial_experts(graph: Graph, mixer: Any, back: tuple[bool, ...], out: list[Placement]) -> bool:
    """When the mixture's one stream output is its tensor-parallel experts' output as it is, the
    experts leave their partial sums (no all-reduce) and the block reduce-scatters them along the
    sequence (torchtitan's `output_layouts=Partial()`, `desired_output_layouts=Shard(1)`)."""
    split = [v for v, b in zip(mixer.outputs, back) if b]
    node = next((k for k in range(mixer.start, mixer.stop) if graph.nodes[k].op == "moe_experts"
                 and graph.nodes[k].outputs[0] in split), None)
    if len(split) != 1 or node is None or any(split[0] in graph.nodes[k].inputs for k in range(node, mixer.stop)):
        return False  # read inside the block too: whole sums needed there
    for k, p in enumerate(out):
        if p.path == graph.nodes[node].scope and p.style == "experts":
            out[k] = replace(p, shard_output=True)
            return True
    return False


def _where(span: object, stack: str) -> str:
    """`llama.arch:78:14`: the stack's place, for the error a length tp does not divide raises."""
    return f"{Path(span.file).name}:{span.line}:{span.col}" if isinstance(span, Span) else stack


def _chained(graph: Graph, members: list[str], call: Any) -> bool:
    """Do the stack's layers run in order, each taking the one value the previous one made (the
    torch backend's nn.Sequential, a module the model calls)?"""
    if len(call.inputs) != 1 or len(call.outputs) != 1:
        return False
    value, at = call.inputs[0], call.start
    for layer in members:
        calls = graph.scopes[layer].calls
        if len(calls) != 1 or calls[0].start != at or calls[0].inputs != (value,) or len(calls[0].outputs) != 1:
            return False
        value, at = calls[0].outputs[0], calls[0].stop
    return at == call.stop and value == call.outputs[0]


def _layer_ends(graph: Graph, stack: str, members: list[str], call: Any, state: dict[str, int], seq: int,
                span: object) -> list[Placement]:
    """A stack of layers that take more than the stream (rotary tables, masks; an nn.ModuleList,
    no module of its own): its first layer splits the stream it reads, its last layer gathers the
    stream it returns; the other inputs and outputs pass whole."""
    first, last = (graph.scopes[members[k]] for k in (0, -1))
    if len(first.calls) != 1 or len(last.calls) != 1:
        raise ArchError(f"sequence parallelism: the layers of the stack '{stack}' are not called once each", span)
    stream = call.inputs[0]
    inputs = tuple(v == stream for v in first.calls[0].inputs)
    outputs = tuple(state.get(v) == -2 for v in last.calls[0].outputs)
    if sum(inputs) != 1:
        raise ArchError(f"sequence parallelism: the first layer of '{stack}' does not read the stream once", span)
    if any(state.get(v) == -2 and v not in last.calls[0].outputs for v in call.outputs) or not any(outputs):
        raise ArchError(f"sequence parallelism: the stack '{stack}' does not return the split stream from its "
                        "last layer", span)
    where = _where(span, stack)
    if members[0] == members[-1]:
        return [Placement(members[0], "split_layers", seq=seq, inputs=inputs, outputs=outputs, where=where,
                          why="splits the stream along the sequence and gathers it")]
    return [Placement(members[0], "split_layers", seq=seq, inputs=inputs, where=where,
                      why="splits the stream along the sequence"),
            Placement(members[-1], "split_layers", seq=seq, outputs=outputs, where=where,
                      why="gathers the stream")]


def _mixers(graph: Graph, regions: list[_Region], start: int, stop: int) -> dict[int, tuple[str, Any, str]]:
    """First node -> (path, call, kind) of each block in [start, stop) that runs on the gathered
    sequence: kind "moe", the innermost callable block around a mixture's router (`moe_router`);
    kind "column", the innermost callable block that holds a column split and whose first input is
    the column linear's (a split inside a mixture is the mixture's)."""
    out: dict[int, tuple[str, Any, str]] = {}
    for i in range(start, stop):
        if graph.nodes[i].op == "moe_router":
            found = _around(graph, graph.nodes[i].scope + ".", [i])  # its own scope or one above
            if found is not None:
                out[found[1].start] = (*found, "moe")
    moe = [(call.start, call.stop) for _, call, _ in out.values()]
    for r in regions:
        if not start <= r.cols[0] < stop or any(a <= r.cols[0] < b for a, b in moe):
            continue
        col = graph.nodes[r.cols[0]]
        found = _around(graph, col.scope, r.cols + r.rows)
        if found is not None:
            path, call = found
            if call.inputs[0] != col.inputs[0]:
                raise ArchError(f"sequence parallelism: the block '{path}' around the column split "
                                f"'{col.scope}' does not take that linear's input first", _span(graph, r.cols[0]))
            out[call.start] = (path, call, "column")
    return out


def _around(graph: Graph, path: str, nodes: list[int]) -> tuple[str, Any] | None:
    """The innermost block above `path` that is called once and runs all of `nodes`."""
    while path:
        path = path.rpartition(".")[0]
        info = graph.scopes.get(path)
        if info is not None and len(info.calls) == 1 and all(info.calls[0].start <= k < info.calls[0].stop
                                                              for k in nodes):
            return path, info.calls[0]
    return None


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
