"""Tensor-parallel and FSDP plans derived from the IR's axes (Megatron-LM, Shoeybi et al. 2019;
torchtitan's `parallelize_llama`, Liang et al. 2024). No torch here: the plan is data, applied by
archc/backends/torch/parallel.py or written out as a function by `archc build --parallel`.

Tensor parallelism splits a linear's output features over the `tp` ranks and follows that split
through the ops that read it, one rule per op:

    linear on a whole input        column-parallel: its output features are split      Colwise
    elementwise, dropout           the split passes through (other inputs broadcast over it)
    rearrange (b t (three h d))    the split lands on one factor: the one the rest of the block
                                   can read per rank (attention's heads, not `three`, not `d`);
                                   factors before it make the column split strided (q, k, v:
                                   each rank holds heads r of q, of k and of v)
    unbind, select, slice          the split passes through when they index another axis
    attention(q, k, v)             per head: q, k, v split on the same head axis
    linear contracting the split   row-parallel: partial sums, all-reduced                 Rowwise

A mixture of experts (Mixtral, torchtitan's MoE plan): the router's linear (whose logits a
`moe_router` reads) and a linear with one output feature (a scalar gate) stay whole on every rank;
stacked experts (`moe_experts`) split every expert's hidden features, as a dense MLP's: the first
weight [E, h, D] (gate and up: 2 blocks) by rows, the second [E, D, h] by columns, one all-reduce
of the module's output. Block experts (`moe(E, Block)`) are ordinary blocks: their linears split
as a dense MLP's, each expert's output all-reduced.

Any other op that reads a split axis (a softmax, a norm or a sum over it, a concat along it) has
no rule: the plan is a located error at that op (`replicate=` keeps such a linear whole). So is a
split axis that leaves its block, and a head count, hidden size or vocabulary that `tp` does not
divide. Embeddings are vocabulary-parallel (RowwiseParallel: rows of the table per rank, partial
sums all-reduced), a vocabulary or class head is column-parallel with its output gathered
(`loss_parallel`: left split on the last axis for `torch.distributed.tensor.parallel.loss_parallel`).
A head tied to the embedding (GPT-2) reads the vocabulary-split table as a column split: the module
that feeds it returns a replicated DTensor and the model's output is gathered.

Repeated blocks (equal structural keys, archc/ir/blocks.py) are planned once. FSDP units are the
stack layers, each with its own `fully_shard`, and the root; a layer that shares a tensor with
something outside it (a tie) joins its parent's unit. Which rearrange axes a rank holds only part
of (`local_axes`) does not depend on `tp`: the torch backend spells those axes from the tensor's
own shape (`x.shape[2] // 48` heads), so one generated module runs whole or split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from archc.errors import ArchError
from archc.ir.blocks import homes, tied_uses, within
from archc.ir.graph import Graph, Node
from archc.ops import registry
from archc.ops.conditional import _BYTES, MOE_SCOPE

# ops whose output is their input's values, one by one (besides those with an `elementwise` form)
_PASS_THROUGH = frozenset({"dropout", "gelu", "drop_path", "identity", "cast"})
_INDEXING = frozenset({"select", "slice"})


@dataclass(frozen=True)
class Placement:
    """One module's parallel style, in torch's terms.

    style   colwise | rowwise | embedding (RowwiseParallel on nn.Embedding) | head (colwise, output
            gathered or left split) | tied_output (the module feeding a tied head returns a
            replicated DTensor) | gather_output (the module whose output is a tied head's: gathered);
            with sequence parallelism: split_stream (a stack: its input split along the sequence,
            its output gathered) | sequence (a norm on the split stream) | gather_input (a block
            that holds a column split: its input gathered) | split_layers (the first layer of a stack
            that is no module splits the stream it reads, its last gathers the stream it returns) |
            gathered (a mixture of experts: its input gathered, its stream outputs split again);
            experts (stacked experts: each expert's hidden features split, the module's output
            all-reduced)
    chunks  colwise over a fused projection: its rows are `chunks` blocks, each split over the ranks
            (experts: the blocks of each expert's first weight, swiglu's gate and up)
    """

    path: str
    style: str
    chunks: int = 1
    shard_output: bool = False  # head / gather_output: leave the logits split (loss parallel); experts,
    # gathered: the experts' partial sums left to the block around, which reduce-scatters them
    why: str = ""
    seq: int | None = None  # sequence parallelism: the sequence axis of the stream (rowwise: of its output)
    inputs: tuple[bool, ...] = ()  # sequence parallelism: which of the module's inputs are the stream
    outputs: tuple[bool, ...] = ()  # ... and which of its outputs
    local: bool = True  # gather_input: the block gets a local tensor (False: a DTensor, which only its column
    # linears read; its gradient comes back partial and is reduce-scattered, not all-reduced)
    where: str = ""  # split_stream, split_layers: the stack's place in the spec (file:line:col), for a runtime error


@dataclass(frozen=True)
class ParallelPlan:
    tp: int
    loss_parallel: bool
    placements: tuple[Placement, ...]
    fsdp_units: tuple[str, ...]  # module paths that get their own fully_shard, innermost first (root last)
    norms: tuple[str, ...]  # norm leaves (kept in fp32 under a mixed-precision policy)
    layers: tuple[str, ...] = ()  # the stack layers (repeated blocks), in order
    local_axes: dict[int, frozenset[str]] = field(default_factory=dict)  # rearrange node -> axes split per rank
    sp: bool = False  # sequence parallelism inside the stacks
    ep: int = 1  # expert parallelism: stacked experts split over this many data-parallel ranks
    experts: tuple[str, ...] = ()  # with ep > 1: the stacked experts it splits (module paths)

    def styles(self) -> dict[str, Placement]:
        return {p.path: p for p in self.placements}


@dataclass(frozen=True)
class _Shard:
    dim: int  # negative: counted from the last axis
    outer: int | None  # blocks before the split part of the axis; None: a linear's features, not yet grouped
    axis: str  # for messages
    src: tuple[int, ...] = ()  # while not yet grouped: the column linears whose features these are

    def alike(self, other: _Shard | None) -> bool:
        return other is not None and (self.dim, self.outer) == (other.dim, other.outer)


@dataclass
class _Region:
    """Column linears that read one input, the row linears that contract their splits, and how
    their features group (`chunks`: strided blocks of a fused projection)."""

    cols: list[int]
    rows: list[int] = field(default_factory=list)
    chunks: dict[int, int] = field(default_factory=dict)
    local: dict[int, set[str]] = field(default_factory=dict)
    divides: list[tuple[int, str, int]] = field(default_factory=list)  # (node, axis, size) per rank

    def copy(self) -> _Region:
        return _Region(list(self.cols), list(self.rows), dict(self.chunks), {k: set(v) for k, v in self.local.items()},
                       list(self.divides))


class _Fail(Exception):
    def __init__(self, node: int, message: str) -> None:
        super().__init__(message)
        self.node, self.message = node, message


def _span(graph: Graph, i: int) -> object:
    node = graph.nodes[i]
    return node.span.to_span() if node.span else None


def _owned(graph: Graph, node: Node, kind: str) -> bool:
    """A leaf instance of `kind` with its own parameters (a torch module: nn.Linear, nn.Embedding)."""
    info = graph.scopes.get(node.scope)
    return info is not None and info.kind == kind and node.op == kind and bool(node.params) \
        and node.param_owners() == {node.scope}


class _Tracer:
    """Follows a column split through one unit's nodes (see the table in the module docstring)."""

    def __init__(self, graph: Graph, unit: list[int], users: dict[str, list[int]], returned: set[str]) -> None:
        self.graph, self.unit, self.users, self.returned = graph, unit, users, returned
        self.inside = set(unit)

    def region(self, positions: list[int]) -> _Region:
        """Split the output features of the linears at `positions` (which read one input) and follow them."""
        state = {}
        for pos in positions:
            node = self.graph.nodes[self.unit[pos]]
            features = self.graph.values[node.outputs[0]].shape[-1]
            axis = f"the {features.size} output features of '{node.scope}'"
            state[node.outputs[0]] = _Shard(-1, None, axis, (self.unit[pos],))
        return self._trace(positions[0] + 1, state, _Region(cols=[self.unit[p] for p in positions]))

    def _trace(self, pos: int, state: dict[str, _Shard], region: _Region) -> _Region:
        for p in range(pos, len(self.unit)):
            i = self.unit[p]
            node = self.graph.nodes[i]
            shards = [state.get(v) for v in node.inputs]
            if not any(shards):
                continue
            for v in node.inputs:
                if v in state and any(u not in self.inside for u in self.users.get(v, ())):
                    raise _Fail(i, f"{state[v].axis} would leave the block split over the ranks")
            if node.op == "rearrange" and any(s is not None and s.outer is None for s in shards) and \
                    self._split_group(node, shards[0]):
                return self._choose(p, i, state, region)
            outs = self._rule(i, node, shards, region)
            for v, s in zip(node.outputs, outs):
                if s is not None:
                    state[v] = s
        for v, s in state.items():
            if v in self.returned or any(u not in self.inside for u in self.users.get(v, ())):
                raise _Fail(region.cols[0], f"{s.axis} would leave the block split over the ranks")
        return region

    def _choose(self, p: int, i: int, state: dict[str, _Shard], region: _Region) -> _Region:
        """A split of a linear's features into factors: try each factor as the one split per rank."""
        node = self.graph.nodes[i]
        left, _right, sizes = _pattern(self.graph, node)
        s = state[node.inputs[0]]
        group = left.groups[len(left.groups) + s.dim]
        best: _Fail | None = None
        for j, name in enumerate(group):
            trial = region.copy()
            chunks = math.prod(sizes[n] for n in group[:j])
            trial.chunks.update({src: chunks for src in s.src})
            try:
                outs = self._rearrange(i, node, _Shard(s.dim, chunks, s.axis), trial, forced=name)
                new = dict(state)
                new[node.outputs[0]] = outs[0]
                return self._trace(p + 1, new, trial)
            except _Fail as f:
                if best is None or f.node > best.node:
                    best = f
        assert best is not None
        raise best

    def _split_group(self, node: Node, s: _Shard | None) -> bool:
        if s is None:
            return False
        left, _, _ = _pattern(self.graph, node)
        return len(left.groups[len(left.groups) + s.dim]) > 1

    def _rule(self, i: int, node: Node, shards: list[_Shard | None], region: _Region) -> list[_Shard | None]:
        graph = self.graph
        op = registry.get(node.op)
        s = next(x for x in shards if x is not None)
        if node.op == "linear":
            if s.dim != -1:  # a linear over a split batch axis: row by row, the split passes through
                return [s]
            if not _owned(graph, node, "linear"):
                raise _Fail(i, f"{s.axis} reach '{node.scope}', a linear that is not a module of its own")
            if s.outer not in (None, 1):
                raise _Fail(i, f"{s.axis} reach '{node.scope}' strided ({s.outer} blocks); only a contiguous "
                               "split can be contracted row-parallel")
            region.chunks.update({src: 1 for src in s.src})
            region.rows.append(i)
            return [None]
        if op.elementwise is not None or node.op in _PASS_THROUGH:
            return [self._broadcast(i, node, shards)]
        if node.op == "rearrange":
            return self._rearrange(i, node, s, region)
        if node.op == "unbind" or node.op in _INDEXING:
            rank = graph.values[node.inputs[0]].rank
            dim = node.attrs["dim"] % rank
            if dim == rank + s.dim:
                raise _Fail(i, f"{node.op} indexes {s.axis}, which each rank holds only part of")
            if node.op == "select" or node.op == "unbind":
                new = s.dim + 1 if dim > rank + s.dim else s.dim
                return [replace(s, dim=new)] * len(node.outputs)
            return [s]
        if node.op == "concat":
            rank = graph.values[node.inputs[0]].rank
            if node.attrs["dim"] % rank == rank + s.dim or not all(s.alike(x) for x in shards):
                raise _Fail(i, f"concat joins {s.axis} with tensors split otherwise, or along it")
            return [s]
        if node.op == "attention":
            q = shards[0]
            if q is None or not all(q.alike(x) for x in shards[:3]) or q.dim in (-1, -2):
                raise _Fail(i, f"attention reads {s.axis} on an axis it contracts (not per head)")
            self._broadcast(i, node, shards)
            return [q]
        raise _Fail(i, f"{node.op} reads {s.axis} and has no placement rule for an axis split over the ranks")

    def _broadcast(self, i: int, node: Node, shards: list[_Shard | None]) -> _Shard:
        """Elementwise: every split input split alike; the others of size 1 along the split axis."""
        split = [x for x in shards if x is not None]
        s = split[0]
        if not all(s.alike(x) for x in split):
            raise _Fail(i, f"{node.op} combines tensors split differently")
        s = replace(s, src=tuple(dict.fromkeys(src for x in split for src in x.src)))  # SwiGLU: gate * up
        for v, x in zip(node.inputs, shards):
            t = self.graph.values[v]
            if x is None and t.rank >= -s.dim and t.sizes[s.dim] != 1:
                raise _Fail(i, f"{node.op} combines {s.axis} with a whole tensor along that axis")
        return s

    def _rearrange(self, i: int, node: Node, s: _Shard, region: _Region, forced: str = "") -> list[_Shard | None]:
        left, right, sizes = _pattern(self.graph, node)
        group = left.groups[len(left.groups) + s.dim]
        if len(group) == 1:
            name = group[0]
        else:
            prefix = 1
            name = ""
            for n in group:
                if prefix == s.outer and (not forced or n == forced):
                    name = n
                    break
                prefix *= sizes[n]
            if not name:
                raise _Fail(i, f"rearrange '{node.attrs['pattern']}' splits {s.axis} across the ranks' parts")
            region.local.setdefault(i, set()).add(name)
            region.divides.append((i, name, sizes[name]))
        out_group = next(k for k, g in enumerate(right.groups) if name in right.groups[k])
        g = right.groups[out_group]
        before = math.prod(sizes[n] for n in g[:g.index(name)])
        if len(g) > 1:
            region.local.setdefault(i, set()).add(name)
        outer = s.outer if len(group) == 1 and len(g) == 1 else before
        if s.outer is None and len(group) == 1 and len(g) > 1:
            region.chunks.update({src: 1 for src in s.src})
        src = s.src if outer is None else ()
        axis = f"axis '{name}' ({sizes[name]}, of '{self.graph.nodes[region.cols[0]].scope}')"
        return [_Shard(out_group - len(right.groups), outer, axis, src)]


def _pattern(graph: Graph, node: Node) -> tuple[object, object, dict[str, int]]:
    from archc.ops.shape import _solve_rearrange  # the op's own reading of its pattern

    op = registry.get(node.op)
    left, right, sizes = _solve_rearrange(op.make_attrs(node.attrs), graph.values[node.inputs[0]], node.op)
    return left, right, {k: int(v.value) if v.is_const else -1 for k, v in sizes.items()}


def _layers(graph: Graph) -> list[str]:
    """Stack layers that can be called (`h.3`): the repeated blocks, each an FSDP unit."""
    out = []
    for path, info in graph.scopes.items():
        parent = graph.scopes.get(path.rpartition(".")[0])
        if info.calls and info.key and path.rpartition(".")[2].isdigit() and parent is not None \
                and parent.kind == "stack":
            out.append(path)
    return out


def _units(graph: Graph, layers: list[str]) -> list[tuple[str, int, list[int]]]:
    """(layer or "", its call's first node, node indices) for each layer call, then the rest."""
    taken: set[int] = set()
    out: list[tuple[str, int, list[int]]] = []
    for path in layers:
        for call in graph.scopes[path].calls:
            out.append((path, call.start, list(range(call.start, call.stop))))
            taken.update(range(call.start, call.stop))
    out.append(("", 0, [i for i in range(len(graph.nodes)) if i not in taken]))
    return out


def _regions(graph: Graph, nodes: list[int], skip: set[int], replicate: tuple[str, ...],
             users: dict[str, list[int]], returned: set[str], layers: list[str], strict: bool = True) -> list[_Region]:
    """The column splits of one unit: linears that read one input start a split together (q, k
    and v; SwiGLU's gate and up), each group traced to the row linears that end it. A group that
    cannot be split is an error, or with `strict` off left whole."""
    tracer = _Tracer(graph, nodes, users, returned)
    groups: dict[str, list[int]] = {}
    for pos, i in enumerate(nodes):
        node = graph.nodes[i]
        if node.op != "linear" or i in skip or not _owned(graph, node, "linear"):
            continue
        if _kept(node.scope, replicate) or node.outputs[0] in returned or _whole(graph, node, users):
            continue
        groups.setdefault(node.inputs[0], []).append(pos)
    rows: set[int] = set()
    out = []
    for positions in groups.values():
        positions = [p for p in positions if nodes[p] not in rows]
        if not positions:
            continue
        node = graph.nodes[nodes[positions[0]]]
        i = nodes[positions[0]]
        try:
            region = tracer.region(positions)
        except _Fail as f:
            if not strict:
                continue
            pattern = _layer_pattern(node.scope, layers, graph)
            raise ArchError(f"tensor parallelism: {f.message}", _span(graph, f.node),
                            f"keep it whole with parallelize(..., replicate=[{pattern!r}])",
                            notes=[(f"the split starts at '{node.scope}'", _span(graph, i))]) from None
        rows.update(region.rows)
        out.append(region)
    return out


def _whole(graph: Graph, node: Node, users: dict[str, list[int]]) -> bool:
    """A linear that stays whole on every rank: a router's (a `moe_router` reads its logits, over
    all experts), or one with a single output feature (a scalar gate: nothing to split)."""
    if node.attrs["features"] == 1:
        return True
    return any(graph.nodes[u].op == "moe_router" for u in users.get(node.outputs[0], ()))


def _kept(path: str, replicate: tuple[str, ...]) -> bool:
    """Is `path` (or a scope around it) one of `replicate`, where `*` stands for one part
    (`blocks.*.adaLN_modulation`: that module in every layer)?"""
    parts = path.split(".")
    for pattern in replicate:
        want = pattern.split(".")
        if len(want) <= len(parts) and all(w in ("*", p) for w, p in zip(want, parts)):
            return True
    return False


def _layer_pattern(path: str, layers: list[str], graph: Graph | None = None) -> str:
    """`path` with its layer's number as `*` (`blocks.*.attn.qkv`), and an expert's number in a
    mixture (`moe(E, Block)`) too, for a hint that covers every layer and expert."""
    if graph is not None:  # experts.3.up -> experts.*.up
        parts = path.split(".")
        starred = list(parts)
        for k in range(1, len(parts)):
            mixture = graph.scopes.get(".".join(parts[:k]))
            if mixture is not None and mixture.kind == MOE_SCOPE and parts[k].isdigit():
                starred[k] = "*"
        path = ".".join(starred)
    layer = next((lay for lay in layers if within(path, lay)), "")
    if not layer:
        return path
    stack, _, _ = layer.rpartition(".")
    return f"{stack}.*{path[len(layer):]}"


def _shift(region: _Region, by: int) -> _Region:
    return _Region([c + by for c in region.cols], [r + by for r in region.rows],
                   {c + by: n for c, n in region.chunks.items()}, {k + by: v for k, v in region.local.items()},
                   [(k + by, n, s) for k, n, s in region.divides])


def _all_regions(graph: Graph, replicate: tuple[str, ...], layers: list[str], tied: set[int],
                 strict: bool = True) -> list[_Region]:
    users: dict[str, list[int]] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            users.setdefault(v, []).append(i)
    returned = {p.value for p in graph.outputs}
    skip = tied
    planned: dict[str, tuple[int, list[_Region]]] = {}  # structural key -> (first node, regions)
    out: list[_Region] = []
    for path, start, nodes in _units(graph, layers):
        key = graph.scopes[path].key if path else ""
        if key and key in planned and not replicate:
            first, regions = planned[key]
            out += [_shift(r, start - first) for r in regions]
            continue
        regions = _regions(graph, nodes, skip, replicate, users, returned, layers, strict)
        if key:
            planned[key] = (start, regions)
        out += regions
    return out


def local_axes(graph: Graph) -> dict[int, frozenset[str]]:
    """Per rearrange node, the axes a rank holds only part of under tensor parallelism (for any
    degree): the torch backend reads their sizes from the input instead of writing them down.
    Splits that a plan would refuse are left out, not the others (DiT's attention, next to its
    adaLN modulation that `chunk` splits, is planned with `replicate=`)."""
    regions = _all_regions(graph, (), _layers(graph), tied_uses(graph), strict=False)
    out: dict[int, set[str]] = {}
    for r in regions:
        for k, v in r.local.items():
            out.setdefault(k, set()).update(v)
    return {k: frozenset(v) for k, v in out.items()}


def _divides(graph: Graph, tp: int, i: int, size: int, what: str, pad: bool = False) -> None:
    if size % tp:
        padded = -(-size // (64 * tp)) * 64 * tp
        raise ArchError(f"tensor parallelism over {tp} ranks splits {what} ({size}), which {tp} does not divide",
                        _span(graph, i), f"pad it to a multiple of {tp} (e.g. {padded}, as nanoGPT pads GPT-2's "
                        "vocabulary to 50304)" if pad else f"choose a tp degree that divides {size}")


def plan_parallel(graph: Graph, tp: int = 1, loss_parallel: bool = False,
                  replicate: tuple[str, ...] = (), sp: bool = False, ep: int = 1) -> ParallelPlan:
    """The tensor-parallel placements (over `tp` ranks) and FSDP units of `graph`'s module tree;
    with `sp`, the residual stream inside each stack is split along its sequence axis (Megatron
    sequence parallelism, Korthikanti et al. 2022); with `ep` > 1, stacked experts are split over
    `ep` data-parallel ranks (expert parallelism, GShard) instead of by tensor parallelism."""
    if tp < 1 or ep < 1:
        raise ArchError(f"parallelism needs at least one rank, got tp={tp}, ep={ep}")
    layers = _layers(graph)
    tied = tied_uses(graph)
    home = homes(graph)
    regions = _all_regions(graph, tuple(replicate), layers, tied)
    placements: list[Placement] = []
    for r in regions:
        for k, name, size in r.divides:
            _divides(graph, tp, k, size, f"axis '{name}' (the heads)")
        for c in r.cols:
            col, chunks = graph.nodes[c], r.chunks.get(c, 1)
            features = col.attrs["features"]
            _divides(graph, tp, c, features // chunks, f"the output features of '{col.scope}'"
                     + (f" per block of {chunks}" if chunks > 1 else ""))
            why = f"{features} features" + (f" in {chunks} blocks (fused)" if chunks > 1 else "")
            why += "".join(f", split by axis '{name}'" for _, name, _ in r.divides[:1])
            placements.append(Placement(col.scope, "colwise", chunks, why=why))
        cols = [graph.nodes[c].scope.rpartition(".")[2] for c in r.cols]
        names = ", ".join(cols[:-1]) + " and " + cols[-1] if len(cols) > 1 else cols[0]
        placements += [Placement(graph.nodes[k].scope, "rowwise", why=f"contracts the split of {names}")
                       for k in r.rows]
    split: tuple[str, ...] = ()
    if ep > 1:  # the experts split over the data-parallel ranks, whole on the tensor-parallel ones
        split = _expert_parallel(graph, ep, tuple(replicate))
    else:
        placements += _experts(graph, tp, tuple(replicate))
    placements += _vocab(graph, tp, loss_parallel, tuple(replicate), home, tied)
    if sp:
        from archc.analysis.sequence_parallel import sequence_placements

        placements = sequence_placements(graph, regions, layers, tp, placements)
    first = _first_nodes(graph)
    placements.sort(key=lambda p: (first.get(p.path, len(graph.nodes)) if p.path else -1,
                                   p.path.count(".")))  # in the order they run; a block before its first op
    local: dict[int, set[str]] = {}
    for r in regions:
        for k, v in r.local.items():
            local.setdefault(k, set()).update(v)
    norms = tuple(p for p, info in graph.scopes.items() if info.kind in ("layernorm", "rmsnorm", "batchnorm"))
    return ParallelPlan(tp, loss_parallel, tuple(placements), _fsdp_units(layers, home, tied, graph), norms, tuple(layers),
                        {k: frozenset(v) for k, v in local.items()}, sp, ep, split)


def _first_nodes(graph: Graph) -> dict[str, int]:
    """Each scope's first node (nodes run in order, so a scope's ancestors start no later)."""
    first: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        path = node.scope
        while path and path not in first:
            first[path] = i
            path = path.rpartition(".")[0]
    return first


def _vocab(graph: Graph, tp: int, loss_parallel: bool, replicate: tuple[str, ...], home: list[str],
           tied: set[int]) -> list[Placement]:
    """Embeddings (vocabulary-parallel) and the heads that produce the model's outputs."""
    out: list[Placement] = []
    returned = {p.value for p in graph.outputs}
    kept = set()
    for i, node in enumerate(graph.nodes):
        if node.op != "linear" or node.outputs[0] not in returned or _kept(node.scope, replicate):
            continue
        if i in tied:
            owner = next(iter(node.param_owners()))
            feeder = _feeder(graph, node.inputs[0])
            if not feeder or len(graph.outputs) != 1 or home[i] != "":
                kept.add(owner)  # the table stays whole: its tied use runs where no hook reaches it
                continue
            _divides(graph, tp, i, node.attrs["features"], f"the vocabulary of '{owner}' (tied head)", pad=True)
            out += [Placement(feeder, "tied_output", why=f"feeds the head tied to {owner}"),
                    Placement("", "gather_output", shard_output=loss_parallel, why=f"logits of {owner}")]
        elif _owned(graph, node, "linear"):
            _divides(graph, tp, i, node.attrs["features"], f"the outputs of the head '{node.scope}'")
            out.append(Placement(node.scope, "head", shard_output=loss_parallel,
                                 why=f"{node.attrs['features']} outputs"))
    for i, node in enumerate(graph.nodes):
        if node.op == "embedding" and _owned(graph, node, "embedding") and node.scope not in kept \
                and not _kept(node.scope, replicate):
            _divides(graph, tp, i, node.attrs["num"], f"the vocabulary of '{node.scope}'", pad=True)
            out.append(Placement(node.scope, "embedding", why=f"{node.attrs['num']} rows"))
    return out


def _experts(graph: Graph, tp: int, replicate: tuple[str, ...]) -> list[Placement]:
    """Stacked experts (`moe_experts`): each expert's hidden features split over the ranks, as a
    dense MLP's (style "experts"; `chunks` 2: swiglu's first weight holds gate and up, each split)."""
    out: list[Placement] = []
    for i, node in enumerate(graph.nodes):
        if node.op != "moe_experts" or not _owned(graph, node, "moe_experts") or _kept(node.scope, replicate):
            continue
        a: Any = registry.get(node.op).make_attrs(node.attrs)  # MoeExpertsAttrs
        _divides(graph, tp, i, a.hidden, f"the hidden features of each expert of '{node.scope}'")
        width = a.hidden // tp * _BYTES.get(graph.values[node.inputs[0]].dtype, 4)
        if a.impl == "grouped" and width % 16:
            raise ArchError(f"tensor parallelism over {tp} ranks leaves each rank {a.hidden // tp} of the "
                            f"{a.hidden} hidden features of '{node.scope}', rows of {width} bytes; "
                            "torch._grouped_mm needs a multiple of 16", _span(graph, i),
                            'choose a tp degree that leaves whole 16-byte rows, or impl="loop"')
        chunks = 2 if a.kind == "swiglu" else 1
        why = f"{a.experts} experts of {a.hidden} hidden features" + (", gate and up split alike" if chunks > 1 else "")
        out.append(Placement(node.scope, "experts", chunks, why=why))
    return out


def _expert_parallel(graph: Graph, ep: int, replicate: tuple[str, ...]) -> tuple[str, ...]:
    """The stacked experts that expert parallelism splits over `ep` ranks (E / ep each); a number
    of experts `ep` does not divide, a capacity (it counts an expert's tokens from every rank), or
    no stacked experts at all, is a located error."""
    out = []
    for i, node in enumerate(graph.nodes):
        if node.op != "moe_experts" or not _owned(graph, node, "moe_experts") or _kept(node.scope, replicate):
            continue
        a: Any = registry.get(node.op).make_attrs(node.attrs)  # MoeExpertsAttrs
        if a.experts % ep:
            raise ArchError(f"expert parallelism over {ep} ranks splits the {a.experts} experts of '{node.scope}', "
                            f"which {ep} does not divide", _span(graph, i), f"choose a degree that divides {a.experts}")
        if a.capacity is not None:
            raise ArchError(f"expert parallelism: the experts of '{node.scope}' have a capacity, which counts each "
                            "expert's tokens over every rank; it runs only dropless", _span(graph, i),
                            "drop the capacity, or split the experts by tensor parallelism (ep=False)")
        out.append(node.scope)
    if not out:  # nothing to split: say so rather than run as plain FSDP
        mixture = next((info for info in graph.scopes.values() if info.kind == MOE_SCOPE), None)
        raise ArchError("expert parallelism splits stacked experts (moe_experts), and this model has none"
                        + (" (a mixture of block experts, moe(E, Block), is not split by it)" if mixture else ""),
                        mixture.span.to_span() if mixture is not None and mixture.span else None,
                        "split them by tensor parallelism instead (ep=False)" if mixture else "drop ep")
    return tuple(dict.fromkeys(out))


def _feeder(graph: Graph, value: str) -> str:
    """The outermost block instance whose call returns `value` (the module a hook can convert)."""
    found = [p for p, info in graph.scopes.items() if p and any(value in c.outputs for c in info.calls)]
    return min(found, key=len) if found else ""


def _fsdp_units(layers: list[str], home: list[str], tied: set[int], graph: Graph) -> tuple[str, ...]:
    """The stack layers, less those that share a tensor with something outside them; then the root."""
    crossing: set[str] = set()
    for i in tied:
        for owner in graph.nodes[i].param_owners():
            for layer in layers:
                if within(owner, layer) != within(home[i], layer):
                    crossing.add(layer)
    kept = [p for p in layers if p not in crossing]
    return tuple(sorted(kept, key=lambda p: -p.count("."))) + ("",)  # inner layers before outer ones


__all__ = ["ParallelPlan", "Placement", "local_axes", "plan_parallel"]
