"""The semantics of a linear region, for re-parameterization: each affine op's effect on the
form of its input (`transfer`, the rules of `archc.passes.affine` applied per op), the constants a
region may read (values computed from parameters alone), and the dense read-off of a region that
changes layout (`probe_matrix`, RepMLP's conv-to-FC trick, notes T9).

Exceptions say why a node does not fit: `NotAffine` (not linear at all), `NeedsDense` (linear,
but only a dense matrix expresses it), `affine.NotExact` (linear, but not one conv: padding or
alignment); `region_forms` reports the first as a `Cut` at that node.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd, prod
from typing import TYPE_CHECKING, Callable, Mapping

from archc.ir.graph import Graph, Node
from archc.ir.types import TensorType
from archc.ops import registry
from archc.ops.einpattern import parse_arrow, parse_side
from archc.ops.registry import OpError
from archc.passes import affine
from archc.passes.fold_bn import bn_scale_shift
from archc.sizes import SizeError

if TYPE_CHECKING:
    from torch import Tensor

AFFINE_OPS = frozenset({"identity", "dropout", "drop_path", "conv1d", "conv2d", "linear", "batchnorm",
                        "avgpool2d", "add", "sub", "mul", "div", "rearrange", "flatten"})
FLOP_OPS = frozenset({"conv1d", "conv2d", "linear"})
LAYOUT_OPS = frozenset({"rearrange", "flatten"})
MAX_DENSE = 1 << 24  # entries of a dense matrix read off by probing
Weights = Callable[[str], "Tensor"]


class NotAffine(Exception):
    """The node is not an affine function of the region input."""


class NeedsDense(Exception):
    """The node is affine but changes layout: only the dense (probing) form can express it."""


@dataclass(frozen=True)
class Tier:
    layout: str  # "cf": channels first, convolutions over the trailing axes; "cl": last axis only
    nd: int
    channels: int


class Consts:
    """The values computed from parameters alone (a LayerScale vector, possibly reshaped), each
    fetched on demand: as a shape-only tensor while planning, evaluated when weights are known."""

    def __init__(self, names: set[str], fetch: Callable[[str], "Tensor"]) -> None:
        self.names, self.fetch = names, fetch
        self.cache: dict[str, Tensor] = {}

    def __contains__(self, value: object) -> bool:
        return value in self.names

    def __getitem__(self, value: str) -> "Tensor":
        if value not in self.cache:
            self.cache[value] = self.fetch(value)
        return self.cache[value]


def const_values(graph: Graph) -> set[str]:
    out: set[str] = set()
    for n in graph.nodes:
        if n.op == "parameter" or (n.inputs and all(v in out for v in n.inputs)):
            out.update(n.outputs)
    return out


def eval_consts(graph: Graph, names: set[str], weights: Mapping[str, "Tensor"]) -> dict[str, "Tensor"]:
    from archc.passes.probe import run_nodes

    nodes = [n for n in graph.nodes if n.outputs and n.outputs[0] in names]
    return run_nodes(nodes, graph.values, {}, weights)


# ---- the transfer rules: one op's effect on the form of its input ---------------------------------
def channel_vector(p: "Tensor", v: TensorType, out: TensorType, tier: Tier, channels: int) -> "Tensor":
    """A parameter that broadcasts along the channel axis only, as a [C] vector."""
    shape = tuple(int(s) for s in p.shape)
    channel = 1 if tier.layout == "cf" else v.rank - 1
    if out != v or len(shape) > v.rank:
        raise NotAffine("the operand broadcasts the value to a larger shape")
    for j, q in enumerate(shape):
        axis = v.rank - len(shape) + j
        if q != 1 and (axis != channel or q != channels):
            raise NotAffine("the operand varies along an axis other than the channels")
    flat = p.reshape(-1)
    return flat if flat.shape[0] == channels else flat.expand(channels)


def transfer(node: Node, forms: dict[str, affine.Form], consts: "Consts", tier: Tier,
              weight: Weights, types: Mapping[str, TensorType]) -> affine.Form:
    op, ins, a = node.op, node.inputs, node.attrs
    if op in ("identity", "dropout", "drop_path"):
        return forms[ins[0]]
    if op in LAYOUT_OPS:
        raise NeedsDense(op)
    if op in ("conv1d", "conv2d"):
        if tier.layout != "cf" or tier.nd != (1 if op == "conv1d" else 2):
            raise NeedsDense(op)
        conv = registry.get(op)
        k, s, p, d = conv._geometry(conv.make_attrs(a))  # type: ignore[attr-defined]
        bias = weight(node.params["bias"]) if "bias" in node.params else None
        return affine.then_conv(forms[ins[0]], weight(node.params["weight"]), bias, a["groups"], s, p, d)
    if op == "linear":
        if tier.layout != "cl":
            raise NeedsDense(op)
        bias = weight(node.params["bias"]) if "bias" in node.params else None
        return affine.then_conv(forms[ins[0]], weight(node.params["weight"]), bias, 1, (), (), ())
    if op == "batchnorm":
        if tier.layout == "cl" and types[ins[0]].rank != 2:
            raise NeedsDense("batchnorm normalizes axis 2, not the feature axis")
        scale, shift = bn_scale_shift(_Lookup(weight), dict(node.params), a["eps"])
        return affine.then_scale(forms[ins[0]], scale, shift)
    if op == "avgpool2d":
        if tier.layout != "cf" or tier.nd != 2:
            raise NeedsDense(op)
        pool = registry.get(op)
        k, s, p = pool.geometry(pool.make_attrs(a))  # type: ignore[attr-defined]
        if a["ceil_mode"] or (any(p) and not a["count_include_pad"]):
            raise NotAffine("average pooling is a convolution only with count_include_pad and floor mode")
        f = forms[ins[0]]
        kernel = affine.avgpool_kernel(f.cout, k, f.K)
        return affine.then_conv(f, kernel, None, f.cout, s, p, (1, 1))
    if op in ("add", "sub", "mul", "div"):
        return _arithmetic(node, forms, consts, tier, types)
    raise NotAffine(op)


class _Lookup(dict):  # type: ignore[type-arg]
    """A weight function seen as a state_dict (what bn_scale_shift reads)."""

    def __init__(self, weight: Weights) -> None:
        super().__init__()
        self.weight = weight

    def __missing__(self, name: str) -> "Tensor":
        return self.weight(name)


def _arithmetic(node: Node, forms: dict[str, affine.Form], consts: "Consts", tier: Tier,
                types: Mapping[str, TensorType]) -> affine.Form:
    op, ins, a = node.op, node.inputs, node.attrs
    out = types[node.outputs[0]]
    if len(ins) == 1:
        f, c = forms[ins[0]], float(a["other"])
        full = f.b.new_full((f.cout,), c)
        if op == "add":
            return affine.then_scale(f, None, full)
        if op == "sub":
            return affine.then_scale(f, f.b.new_full((f.cout,), -1.0), full) if a["swap"] else \
                affine.then_scale(f, None, -full)
        if op == "mul":
            return affine.then_scale(f, full, None)
        if a["swap"]:
            raise NotAffine("c / x")
        return affine.then_scale(f, f.b.new_full((f.cout,), 1.0 / c), None)
    left, right = ins
    if left in forms and right in forms:
        if op not in ("add", "sub") or types[left] != out or types[right] != out:
            raise NotAffine(f"{op} of two values that depend on the input")
        return affine.add(forms[left], forms[right], 1.0 if op == "add" else -1.0)
    if left in forms and right in consts:
        f = forms[left]
        vec = channel_vector(consts[right], types[left], out, tier, f.cout)
        return {"add": lambda: affine.then_scale(f, None, vec), "sub": lambda: affine.then_scale(f, None, -vec),
                "mul": lambda: affine.then_scale(f, vec, None), "div": lambda: affine.then_scale(f, 1.0 / vec, None),
                }[op]()
    if right in forms and left in consts and op in ("add", "sub", "mul"):
        f = forms[right]
        vec = channel_vector(consts[left], types[right], out, tier, f.cout)
        if op == "add":
            return affine.then_scale(f, None, vec)
        if op == "sub":
            return affine.then_scale(f, -vec.new_ones(vec.shape), vec)
        return affine.then_scale(f, vec, None)
    raise NotAffine(f"{op} with an operand that is neither the region's input nor a parameter")


# ---- conv / linear form of a region ---------------------------------------------------------------
def tier_of(nodes: list[Node], x: TensorType) -> Tier | None:
    ops = {n.op for n in nodes}
    try:
        if x.rank == 2:
            return Tier("cl", 0, x.sizes[1].value)
        if x.rank >= 3 and ops & {"conv1d", "conv2d", "batchnorm", "avgpool2d"}:
            return Tier("cf", x.rank - 2, x.sizes[1].value)
        if x.rank >= 1 and "linear" in ops:
            return Tier("cl", 0, x.sizes[-1].value)
    except SizeError:
        return None
    return None


def emit_attrs(f: affine.Form, tier: Tier) -> tuple[str, dict[str, object]]:
    one = lambda v: v[0] if len(set(v)) == 1 else list(v)  # noqa: E731
    if tier.layout == "cl":
        return "linear", {"features": f.cout, "bias": f.biased}
    return f"conv{tier.nd}d", {"channels": f.cout, "kernel": one(f.kernel), "stride": one(f.stride),
                               "padding": one(f.padding), "groups": f.groups, "bias": f.biased}


def implied_type(f: affine.Form, tier: Tier, x: TensorType) -> TensorType | None:
    op_name, attrs = emit_attrs(f, tier)
    op = registry.get(op_name)
    try:
        return op.infer(op.make_attrs(attrs), [x])[0]
    except (OpError, SizeError):
        return None


def region_forms(nodes: list[Node], x: str, tier: Tier, weight: Weights, consts: "Consts",
                 types: Mapping[str, TensorType], like: "Tensor") -> affine.Form:
    """The form of the region's output; raises (Cut, index) where a node breaks it."""
    forms = {x: affine.identity(tier.channels, tier.nd, like)}
    for i, node in enumerate(nodes):
        if node.outputs[0] in consts:
            continue
        try:
            f = transfer(node, forms, consts, tier, weight, types)
        except (NotAffine, NeedsDense, affine.NotExact) as err:
            raise Cut(i, err) from None
        if tier.layout == "cf" and implied_type(f, tier, types[x]) != types[node.outputs[0]]:
            raise Cut(i, affine.NotExact("the merged kernel would not produce the same output grid"))
        forms[node.outputs[0]] = f
    return forms[nodes[-1].outputs[0]]


class Cut(Exception):
    def __init__(self, position: int, reason: Exception) -> None:
        super().__init__(str(reason))
        self.position, self.reason = position, reason


# ---- dense form of a region (layout changes; RepMLP) ---------------------------------------------
def batch_preserving(nodes: list[Node], x: TensorType, types: Mapping[str, TensorType], consts: set[str]) -> bool:
    batch = x.sizes[0]
    if batch.is_const:
        return False  # a probe needs its own batch size
    for node in nodes:
        if node.outputs[0] in consts:
            continue
        t = types[node.outputs[0]]
        if t.rank < 2 or t.sizes[0] != batch:
            return False
        if node.op == "rearrange":
            left, right = (parse_side(s, "rearrange") for s in parse_arrow(node.attrs["pattern"], "rearrange"))
            if not left.groups or len(left.groups[0]) != 1 or left.groups[0] != right.groups[0] \
                    or left.groups[0] == ("...",):
                return False
        if node.op == "flatten" and node.attrs["start"] % types[node.inputs[0]].rank == 0:
            return False
    return True


def probe_matrix(nodes: list[Node], x: str, y: str, types: Mapping[str, TensorType],
                 weights: Mapping[str, "Tensor"], consts: Consts) -> "tuple[Tensor, Tensor]":
    """(M, b) with region(x) = M @ vec(x) + b per batch row, read off the identity."""
    import torch

    from archc.passes.probe import run_nodes

    shape = tuple(s.value for s in types[x].sizes[1:])
    n = prod(shape)
    eye = torch.eye(n, dtype=torch.float64)
    probe = torch.cat([torch.zeros(1, n, dtype=torch.float64), eye]).reshape(n + 1, *shape)
    produced = {v for n in nodes for v in n.outputs}
    env = {v: consts[v] for n in nodes for v in n.inputs if v in consts and v not in produced}
    env = run_nodes(nodes, types, {**env, x: probe}, weights)
    out = env[y].reshape(n + 1, -1)
    return (out[1:] - out[0]).T.contiguous(), out[0].clone()


def dense_groups(M: "Tensor") -> int:
    """The most groups g such that M is block-diagonal in g blocks."""
    import torch

    nout, nin = (int(s) for s in M.shape)
    nz = M != 0
    for g in sorted((g for g in range(1, gcd(nin, nout) + 1) if nin % g == 0 and nout % g == 0), reverse=True):
        blocks = nz.reshape(g, nout // g, g, nin // g).any(dim=(1, 3))
        if not (blocks & ~torch.eye(g, dtype=torch.bool)).any():
            return g
    return 1



def random_weights(graph: Graph, nodes: list[Node]) -> dict[str, "Tensor"]:
    """Weights in general position, to read a region's structure (which entries are non-zero)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    out = {}
    for node in nodes:
        for role, name in node.params.items():
            if name not in out:
                t = torch.randn(graph.params[name].shape, generator=gen, dtype=torch.float64)
                out[name] = t.abs() + 0.5 if role == "running_var" else t
    return out
