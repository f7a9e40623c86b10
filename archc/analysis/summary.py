"""Parameters, FLOPs and activation memory of a graph, per block, as pure functions over the IR.

Symbolic axes are given values first: `B` is the batch (1 unless asked), an axis that a
`positions` table indexes defaults to that table's length (GPT-2's T = 1024), the token axis of a
model without one defaults to its context length, the model parameter Hugging Face names
`max_position_embeddings` (Llama's T = 2048, said in a note), and any other axis must be given
(`axes={"T": 256}`). Then, for every scope of the module tree:

- params: trainable parameter elements under the scope's name (`h.3.attn.qkv.weight` counts
  for `h.3.attn.qkv`, `h.3.attn`, `h.3` and `h`); a shared parameter counts once, where it was
  declared. Buffers (BatchNorm statistics) are counted apart.
- flops: each op's `flops()` rule, which counts as `torch.utils.flop_counter.FlopCounterMode`
  does (matmuls, convolutions, attention; one multiply-add is 2 FLOPs). MACs = FLOPs / 2.
- activation bytes: the bytes of every value the scope's ops produce, at the given batch. Views
  (rearrange, unbind) count as their own values: this is what the ops write, an upper bound on
  what the runtime keeps alive.

The table groups the identical layers of a stack into one row (`h.0-11 (x12)`) whose numbers
are those of one layer.
"""

from __future__ import annotations

import re
from fractions import Fraction
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from archc.analysis.structure import (ScopeTree, ancestors, depth, parent, run_label, runs, scope_tree,
                                      tied_uses, within)
from archc.errors import ArchError
from archc.ir.graph import Graph, Node
from archc.ir.types import DTYPE_BYTES, Dim, TensorType
from archc.ops import registry
from archc.sizes import Size, SizeError, parse_size

_FLOOR = re.compile(r"^floor\((.*), (\d+)\)$")


# -- sizes to numbers ---------------------------------------------------------------------------
def evaluate(size: Size, env: Mapping[str, int]) -> int:
    """The integer value of a size once its symbols are known; `floor(E, k)` atoms included."""
    total = Fraction(0)
    for mono, coef in size.terms.items():
        term = coef
        for atom, power in mono:
            term *= _atom_value(atom, env) ** power
        total += term
    if total.denominator != 1:
        raise ArchError(f"the size '{size}' is not a whole number for {_env_text(env)}")
    return int(total)


def _atom_value(atom: str, env: Mapping[str, int]) -> int:
    if atom in env:
        return env[atom]
    m = _FLOOR.match(atom)
    if m:
        return evaluate(parse_size(m.group(1)), env) // int(m.group(2))
    raise ArchError(f"the axis '{atom}' has no value", hint=f"give it one: --axis {atom}=N")


def _env_text(env: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in env.items()) or "no axes"


CONTEXT_ARGS = ("max_position_embeddings", "n_positions")  # Hugging Face's names for the context length


def context_default(graph: Graph, env: Mapping[str, int]) -> tuple[str, int, str] | None:
    """(axis, length, parameter): the one axis still without a value, when it is an axis of an
    integer input (the tokens) and the model has a context-length parameter (CONTEXT_ARGS)."""
    missing = [a for a in graph.axes if a not in env]
    arg = next((k for k in CONTEXT_ARGS if isinstance(graph.model_args.get(k), int)
                and not isinstance(graph.model_args[k], bool) and graph.model_args[k] > 0), None)
    if len(missing) != 1 or arg is None:
        return None
    tokens = [d.name for p in graph.inputs if not p.type.is_float for d in p.type.shape]
    return (missing[0], graph.model_args[arg], arg) if missing[0] in tokens else None


def axis_notes(graph: Graph, batch: int = 1, axes: Mapping[str, int] | None = None) -> tuple[str, ...]:
    """What the summary says of the axis values it chose by itself (context_default)."""
    found = context_default(graph, _given(graph, batch, axes))
    if found is None:
        return ()
    axis, n, arg = found
    return (f"{axis} = {n}: the model's {arg} (the spec has no positions table); give --axis {axis}=N "
            "for another length",)


def _given(graph: Graph, batch: int, axes: Mapping[str, int] | None) -> dict[str, int]:
    """B = batch, the length of a positions table for the axis it indexes, then `axes`."""
    env: dict[str, int] = {"B": batch} if "B" in graph.axes else {}
    for node in graph.nodes:
        if node.op == "positions":
            seq = graph.values[node.outputs[0]].sizes[0]
            if len(seq.atoms()) == 1 and str(seq) in graph.axes:
                env.setdefault(str(seq), int(node.attrs["max_len"]))
    env.update(axes or {})
    return env


def axis_values(graph: Graph, batch: int = 1, axes: Mapping[str, int] | None = None) -> dict[str, int]:
    """Values for the graph's symbolic axes: `axes` first, then B = batch, then the length of a
    positions table for the axis it indexes, the token axis at the model's context length
    (context_default), and a mixture's routed-tokens axis at the balanced load. Axes left without
    a value are left out."""
    env = _given(graph, batch, axes)
    found = context_default(graph, env)
    if found is not None:
        env[found[0]] = found[1]
    for node in graph.nodes:  # a mixture's routed-tokens axis (moe_select): ceil(N * k / E), the balanced load
        axis = node.attrs["axis"] if node.op == "moe_select" else None
        if axis is None or axis in env:
            continue
        x, idx = graph.values[node.inputs[0]], graph.values[node.inputs[2]]
        try:
            n = evaluate(x.numel() / x.sizes[-1], env) * evaluate(idx.sizes[-1], env)
        except (ArchError, SizeError):
            continue  # an axis of the inputs has no value: the summary says which
        env[axis] = -(-n // node.attrs["experts"])
    return env


def type_bytes(t: TensorType, env: Mapping[str, int]) -> int:
    return evaluate(t.numel(), env) * DTYPE_BYTES.get(t.dtype, 4)


def node_flops(graph: Graph, node: Node, env: Mapping[str, int]) -> int:
    op = registry.get(node.op)
    ins = [graph.values[v] for v in node.inputs]
    outs = [graph.values[v] for v in node.outputs]
    try:
        return evaluate(op.flops(op.make_attrs(node.attrs), ins, outs), env)
    except (SizeError, registry.OpError) as err:
        raise ArchError(f"cannot count the FLOPs of '{node.op}' in '{node.scope or graph.name}': {err}") from None


# -- per-scope statistics -----------------------------------------------------------------------
@dataclass
class Stats:
    params: int = 0
    buffers: int = 0
    flops: int = 0
    act_bytes: int = 0

    @property
    def macs(self) -> int:
        return self.flops // 2


def scope_stats(graph: Graph, tree: ScopeTree, env: Mapping[str, int]) -> dict[str, Stats]:
    """Statistics of every scope (its whole subtree), the root `""` being the whole model."""
    stats = {p: Stats() for p in tree.children}
    for i, node in enumerate(graph.nodes):
        flops = node_flops(graph, node, env)
        act = sum(type_bytes(graph.values[v], env) for v in node.outputs)
        for a in ancestors(tree.home[i]):
            stats[a].flops += flops
            stats[a].act_bytes += act
    for name, p in graph.params.items():
        for a in ancestors(_owner(name, stats)):
            if p.trainable:
                stats[a].params += p.numel
            else:
                stats[a].buffers += p.numel
    return stats


def _owner(param: str, scopes: Mapping[str, Any]) -> str:
    """The innermost scope whose name prefixes the parameter's (`h.0.ln_1.weight` -> `h.0.ln_1`)."""
    path = param
    while path and path not in scopes:
        path = parent(path)
    return path


def scope_outputs(graph: Graph, tree: ScopeTree) -> dict[str, list[str]]:
    """The values each scope hands out: produced inside it and used outside it (or returned)."""
    out: dict[str, list[str]] = {p: [] for p in tree.children}
    producer = {v: tree.home[i] for i, n in enumerate(graph.nodes) for v in n.outputs}
    returned = {p.value for p in graph.outputs}
    users: dict[str, list[str]] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            users.setdefault(v, []).append(tree.home[i])
    for v, scope in producer.items():
        for a in ancestors(scope)[:-1]:
            if v in returned or any(not within(u, a) for u in users.get(v, [])):
                out[a].append(v)
    return out


# -- the table ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    name: str  # the path, or a run of layers (`h.0-11`)
    path: str  # the first scope of the row
    kind: str
    depth: int
    count: int  # identical layers this row stands for; its numbers are those of one
    output: str
    params: int
    buffers: int
    flops: int
    macs: int
    act_bytes: int


@dataclass(frozen=True)
class Summary:
    model: str
    axes: dict[str, int]
    rows: tuple[Row, ...]
    total: Row
    input_bytes: int
    param_bytes: int
    axis_notes: tuple[str, ...] = ()  # how an axis got a value the user did not give (axis_notes)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "axes": self.axes, "rows": [asdict(r) for r in self.rows],
                "total": asdict(self.total), "input_bytes": self.input_bytes, "param_bytes": self.param_bytes,
                "axis_notes": list(self.axis_notes)}


def summarize(graph: Graph, batch: int = 1, axes: Mapping[str, int] | None = None, max_depth: int = 2) -> Summary:
    """The per-block table of a graph, opened down to `max_depth` levels of scopes."""
    env = axis_values(graph, batch, axes)
    missing = sorted(set(graph.axes) - set(env))
    if missing:
        raise ArchError(f"the axis '{missing[0]}' has no value",
                        hint=" ".join(f"--axis {a}=N" for a in missing))
    tree = scope_tree(graph)
    stats = scope_stats(graph, tree, env)
    outputs = scope_outputs(graph, tree)
    rows: list[Row] = []

    def row(run: list[str]) -> Row:
        path, s = run[0], stats[run[0]]
        kind = tree.kind(path)
        if kind == "stack":
            kind = f"stack x{tree.depth_of(path)}"
        name = run_label(run) + (f" (x{len(run)})" if len(run) > 1 else "")
        return Row(name, path, kind, depth(path), len(run), _outputs_text(graph, outputs[path]),
                   s.params, s.buffers, s.flops, s.macs, s.act_bytes)

    def walk(path: str) -> None:
        for run in runs(tree, path):
            rows.append(row(run))
            if depth(run[0]) < max_depth and not tree.is_op_scope(run[0]):
                walk(run[0])
        if path and tree.direct[path] and tree.children[path] and depth(path) < max_depth:
            rows.append(_direct_row(graph, tree, path, env))

    walk("")
    if tree.direct[""]:
        rows.append(_direct_row(graph, tree, "", env))
    s = stats[""]
    total = Row("total", "", graph.name, 0, 1, ", ".join(_type_text(graph.values[p.value]) for p in graph.outputs),
                s.params, s.buffers, s.flops, s.macs, s.act_bytes)
    input_bytes = sum(type_bytes(p.type, env) for p in graph.inputs)
    param_bytes = sum(p.nbytes for p in graph.params.values())
    return Summary(graph.name, env, tuple(rows), total, input_bytes, param_bytes, axis_notes(graph, batch, axes))


def _direct_row(graph: Graph, tree: ScopeTree, path: str, env: Mapping[str, int]) -> Row:
    """The ops written directly in a block, next to its sub-blocks (`x + attn(...)`)."""
    nodes = [graph.nodes[i] for i in tree.direct[path]]
    tied = tied_uses(graph)
    ops = sorted({f"{graph.nodes[i].op} (shares {graph.nodes[i].scope})" if i in tied else graph.nodes[i].op
                  for i in tree.direct[path]})
    flops = sum(node_flops(graph, n, env) for n in nodes)
    act = sum(type_bytes(graph.values[v], env) for n in nodes for v in n.outputs)
    name = f"{path}.(ops)" if path else "(ops)"
    return Row(name, path, ", ".join(ops), depth(path) + 1, 1, "", 0, 0, flops, flops // 2, act)


def _outputs_text(graph: Graph, values: list[str]) -> str:
    if not values:
        return ""
    last = [_type_text(graph.values[values[-1]])]
    return last[0] if len(values) == 1 else f"{last[0]} (+{len(values) - 1})"


def dim_text(d: Dim) -> str:
    """`D=768`, `T`, `56`: an axis name is shown when it is a name, not an expression that
    a block signature computed (`(H + stride - 1) // stride`)."""
    size = str(d.size)
    if d.name is None or d.name == size or not d.name.isidentifier():
        return size
    return f"{d.name}={size}" if d.size.is_const else d.name


def axes_text(t: TensorType, dtype: str = "always") -> str:
    """`f32[B, T, D=768]`; with dtype="not f32", `[B, T, D=768]` unless the dtype is another."""
    text = f"[{', '.join(dim_text(d) for d in t.shape)}]"
    return text if dtype != "always" and t.dtype == "f32" else f"{t.dtype}{text}"


def _type_text(t: TensorType) -> str:
    return axes_text(t)


# -- printing -----------------------------------------------------------------------------------
def human(n: float, unit: str = "", base: int = 1000) -> str:
    """`1234567` -> `1.23M`; with base 1024 and unit `B`: `1.18 MiB`."""
    prefixes = ["", "K", "M", "G", "T", "P"]
    i = 0
    while abs(n) >= base and i < len(prefixes) - 1:
        n /= base
        i += 1
    if i == 0:
        return f"{int(n)}{' ' + unit if unit else ''}"
    prefix = prefixes[i] + ("i" if base == 1024 else "")
    digits = f"{n:.0f}" if abs(n) >= 100 else f"{n:.3g}"  # 1000 KiB, not 1e+03 KiB
    return f"{digits}{' ' if unit else ''}{prefix}{unit}"


def format_table(s: Summary) -> str:
    header = ("name", "kind", "output", "params", "FLOPs", "MACs", "activations")
    lines = []
    for r in (*s.rows, s.total):
        indent = "  " * max(r.depth - 1, 0)
        params = f"{r.params:,}" if r.params else "-"
        if r.buffers:
            params += f" (+{r.buffers:,} buf)"
        lines.append((indent + r.name, r.kind, r.output, params,
                      human(r.flops) if r.flops else "-", human(r.macs) if r.macs else "-",
                      human(r.act_bytes, "B", 1024) if r.act_bytes else "-"))
    widths = [max(len(x[i]) for x in (header, *lines)) for i in range(len(header))]
    right = {3, 4, 5, 6}

    def fmt(cells: tuple[str, ...]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    rule = "-" * len(fmt(header))
    body = [fmt(x) for x in lines]
    title = f"{s.model}  ({_env_text(s.axes)})"
    notes = list(s.axis_notes)
    if any(r.count > 1 for r in s.rows):
        notes.append("rows marked (xN) stand for N identical layers; their numbers are those of one layer")
    notes.append(f"parameters: {human(s.param_bytes, 'B', 1024)}; inputs: {human(s.input_bytes, 'B', 1024)}; "
                 "activations: bytes of the values each block's ops produce")
    return "\n".join([title, rule, fmt(header), rule, *body[:-1], rule, body[-1], "", *notes])
