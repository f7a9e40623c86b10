"""Conditional computation: fast feedforward trees, whose inference form computes one leaf (or one
path of neurons) per input instead of the whole layer.

    fff(x, out, depth, leaf)        Belcak & Wattenhofer 2023, "Fast Feedforward Networks": 2^depth
                                    leaves, each a two-layer MLP of width `leaf`, behind a binary tree
                                    of 2^depth - 1 linear decisions
    fff_neurons(x, out, depth)      Belcak & Wattenhofer 2023, "Exponentially Faster Language
                                    Modelling" (UltraFastBERT): `trees` trees of single neurons of
                                    depth + 1 levels; an input uses the depth + 1 neurons on its path

Each has one attribute `form`: "soft" (training: every leaf or neuron, weighted by the probability
of its path), "hardened" (the same with 0/1 decisions), "hard" (inference: descend, compute only the
path), or "auto" (soft in training, hard in eval: the default). One tie rule: a logit >= 0 goes right.
`entropy=true` adds a second output, each node's mean decision entropy (the hardening term). The
torch spelling calls backends/torch/conditional.py, which the generated file carries.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from archc.ir.types import Dim, TensorType
from archc.ops.registry import Op, OpError, ParamSpec, known, need_float, register
from archc.sizes import Size

Form = Literal["auto", "soft", "hardened", "hard"]
Act = Literal["relu", "gelu", "silu", "tanh", "gelu_tanh"]
MAX_DEPTH = 20
MAX_EXPERTS = 4096
FULL_LOGITS = 1024  # backends/torch/conditional.py: up to this many nodes, one matmul decides


class _Attrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _uniform(fan_in: int) -> str:
    return f"uniform({1 / fan_in ** 0.5:.10g})"


def _rows(t: TensorType) -> Size:
    """The number of inputs: every axis but the last."""
    n = Size.of(1)
    for s in t.sizes[:-1]:
        n = n * s
    return n


def _tree_outputs(op: str, a: Any, t: TensorType, nodes: int) -> list[TensorType]:
    """A fast feedforward op's outputs: [*, out], and with `entropy` one entropy per node."""
    need_float(t, op)
    if t.rank == 0:
        raise OpError(f"{op} needs at least one axis")
    known(t.sizes[-1], f"{op}'s input features (the last axis)")
    y = TensorType(dtype=t.dtype, shape=t.shape[:-1] + (Dim(size=Size.of(a.out)),))
    return [y, TensorType(dtype=t.dtype, shape=(Dim(size=Size.of(nodes)),))] if a.entropy else [y]


class FffAttrs(_Attrs):
    out: int = Field(gt=0)
    depth: int = Field(ge=0, le=MAX_DEPTH)
    leaf: int = Field(gt=0)
    act: Act = "relu"
    form: Form = "auto"
    entropy: bool = False


@register
class Fff(Op):
    """Fast feedforward: a tree of linear decisions over two-layer leaves. Parameters as the
    `fastfeedforward` package names them: node_weights [2^D-1, in], node_biases [2^D-1, 1],
    w1s [2^D, in, leaf], b1s [2^D, leaf], w2s [2^D, leaf, out], b2s [2^D, out]."""

    name = "fff"
    Attrs = FffAttrs
    doc = "fast feedforward tree: `[*, in]` -> `[*, out]`; soft in training, one leaf per input in eval"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        return _tree_outputs(self.name, a, ins[0], nodes=2 ** a.depth - 1)

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        d = known(ins[0].sizes[-1], "fff's input features")
        nodes, leaves = 2 ** a.depth - 1, 2 ** a.depth
        inner, outer = _uniform(d), _uniform(a.leaf)  # the package's initialization
        specs = {"w1s": ParamSpec((leaves, d, a.leaf), inner), "b1s": ParamSpec((leaves, a.leaf), inner),
                 "w2s": ParamSpec((leaves, a.leaf, a.out), outer), "b2s": ParamSpec((leaves, a.out), outer)}
        if nodes:
            specs = {"node_weights": ParamSpec((nodes, d), inner), "node_biases": ParamSpec((nodes, 1), inner), **specs}
        return specs

    def active_params(self, a: Any, ins: list[TensorType]) -> int | None:
        """The hard form: the depth decisions on the path and one leaf."""
        d = known(ins[0].sizes[-1], "features")
        return a.depth * (d + 1) + d * a.leaf + a.leaf + a.leaf * a.out + a.out

    def flops(self, a: Any, ins: list[TensorType], outs: list[TensorType]) -> Size:
        """The inference (hard) form's matmuls: the decisions (all nodes in one matmul up to
        FULL_LOGITS nodes, else one dot product per level), then one leaf per input."""
        d = known(ins[0].sizes[-1], "features")
        nodes = 2 ** a.depth - 1
        decide = 2 * d * (nodes if nodes <= FULL_LOGITS else a.depth)
        return _rows(ins[0]) * (decide + 2 * d * a.leaf + 2 * a.leaf * a.out)

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        nodes = (f"{params['node_weights']}, {params['node_biases']}" if a.depth else
                 f"{ins[0]}.new_empty(0, {ins[0]}.shape[-1]), {ins[0]}.new_empty(0, 1)")
        return (f"fff({ins[0]}, {nodes}, {params['w1s']}, {params['b1s']}, {params['w2s']}, {params['b2s']}, "
                f"depth={a.depth}, act={a.act!r}, form={a.form!r}, training=self.training"
                + (", entropy=True)" if a.entropy else ")"))


class FffNeuronsAttrs(_Attrs):
    out: int = Field(gt=0)
    depth: int = Field(ge=0, le=MAX_DEPTH)
    trees: int = Field(default=1, gt=0)
    act: Act = "gelu"
    form: Form = "auto"
    entropy: bool = False


@register
class FffNeurons(Op):
    """UltraFastBERT's fast feedforward: `trees` trees of single neurons, 2^(depth+1) - 1 each.
    Parameters: w_in [trees * nodes, in], b_in [trees * nodes], w_out [trees * nodes, out]
    (UltraFastBERT's linear_in.weight, linear_in.bias and linear_out.weight transposed: one row per
    neuron, so that inference gathers the rows of the path)."""

    name = "fff_neurons"
    Attrs = FffNeuronsAttrs
    doc = "UltraFastBERT's fast feedforward: `[*, in]` -> `[*, out]`; in eval, depth + 1 neurons per input"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        return _tree_outputs(self.name, a, ins[0], nodes=a.trees * (2 ** (a.depth + 1) - 1))

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        d = known(ins[0].sizes[-1], "fff_neurons' input features")
        n = a.trees * (2 ** (a.depth + 1) - 1)
        return {"w_in": ParamSpec((n, d), _uniform(d)), "b_in": ParamSpec((n,), _uniform(d)),
                "w_out": ParamSpec((n, a.out), _uniform((a.depth + 1) * a.trees))}

    def active_params(self, a: Any, ins: list[TensorType]) -> int | None:
        """The hard form: the depth + 1 neurons on the path of each tree, in and out."""
        d = known(ins[0].sizes[-1], "features")
        return a.trees * (a.depth + 1) * (d + 1 + a.out)

    def flops(self, a: Any, ins: list[TensorType], outs: list[TensorType]) -> Size:
        """The inference (hard) form, as FlopCounterMode counts it: per tree, the depth + 1 neurons
        on the path (their dot products are the decisions), then their outputs."""
        d = known(ins[0].sizes[-1], "features")
        return _rows(ins[0]) * (a.trees * 2 * (a.depth + 1) * (d + a.out))

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return (f"fff_neurons({ins[0]}, {params['w_in']}, {params['b_in']}, {params['w_out']}, depth={a.depth}, "
                f"trees={a.trees}, act={a.act!r}, form={a.form!r}, training=self.training"
                + (", entropy=True)" if a.entropy else ")"))


# ---- mixture of experts ------------------------------------------------------------------------
class MoeRouterAttrs(_Attrs):
    k: int = Field(gt=0)
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    normalize: bool = True
    balance: Literal["aux", "bias"] = "aux"
    rate: float = Field(default=0.001, ge=0.0, allow_inf_nan=False)


@register
class MoeRouter(Op):
    """Top-k routing of each input over E experts from its router logits [*, E]: the k best experts
    and their weights. `softmax` (Mixtral): the softmax over all E in float32, then the top k,
    renormalized to sum to 1 (equal to a softmax over the top-k logits, Mistral's form); `sigmoid`
    (DeepSeek-V3): sigmoid scores, the top k, renormalized when `normalize`. Ties: the lower index.

    `balance="bias"` (DeepSeek-V3's auxiliary-loss-free balancing, Wang et al. 2024): the router
    owns a buffer `e_score_correction_bias` [E] added to the scores to choose the experts (the
    weights stay the scores'); in training each forward moves it by `rate` towards balance,
    b_e += rate * sign(mean load - load_e), as BatchNorm updates its statistics. With
    `balance="aux"` (the default) the loss of moe_load balances the load instead."""

    name = "moe_router"
    Attrs = MoeRouterAttrs
    doc = "top-k routing: logits `[*, E]` -> weights `f32[*, k]`, expert indices `i64[*, k]`"

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        if a.balance != "bias":
            return {}
        e = known(ins[0].sizes[-1], "the number of experts")
        return {"e_score_correction_bias": ParamSpec((e,), "zeros", trainable=False)}

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        if t.rank == 0:
            raise OpError("moe_router takes router logits [*, experts]")
        e = known(t.sizes[-1], "the number of experts (the last axis of the logits)")
        if a.k > e:
            raise OpError(f"moe_router: top-{a.k} of {e} experts")
        shape = t.shape[:-1] + (Dim(size=Size.of(a.k)),)
        return [TensorType(dtype="f32", shape=shape), TensorType(dtype="i64", shape=shape)]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        if a.balance == "bias":
            return (f"moe_route({ins[0]}, {a.k}, {a.scoring!r}, {a.normalize}, "
                    f"bias={params['e_score_correction_bias']}, rate={a.rate!r}, training=self.training)")
        return f"moe_route({ins[0]}, {a.k}, {a.scoring!r}, {a.normalize})"


@register
class MoeLoad(Op):
    """How evenly a layer routes (Switch Transformer's load-balancing terms, Fedus et al. 2022):
    from the router logits [*, E] and the chosen experts [*, k], a [2, E] tensor whose row 0 is the
    fraction of the N inputs' k choices that went to each expert (each row of choices counts k
    times: it sums to k) and row 1 the mean softmax probability of each expert. The auxiliary loss
    is E * sum(f * P); Hugging Face's Mixtral pools f and P over the layers first (mean of rows)."""

    name = "moe_load"
    inputs = ("logits", "indices")
    doc = "load-balancing statistics: logits `[*, E]`, indices `i64[*, k]` -> `f32[2, E]`"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        logits, idx = ins
        need_float(logits, self.name)
        if idx.dtype != "i64" or idx.rank != logits.rank or idx.sizes[:-1] != logits.sizes[:-1]:
            raise OpError(f"moe_load: indices must be i64[*, k] over the logits' inputs, got {idx} for {logits}")
        e = known(logits.sizes[-1], "the number of experts")
        return [TensorType(dtype="f32", shape=(Dim(size=Size.of(2)), Dim(size=Size.of(e))))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return f"moe_load({ins[0]}, {ins[1]})"


def _check_routing(op: str, x: TensorType, w: TensorType, idx: TensorType) -> None:
    """A mixture's inputs: x [*, D] and the router's weights and indices [*, k] over the same inputs."""
    need_float(x, op)
    need_float(w, op)
    if x.rank == 0 or idx.dtype != "i64" or idx.rank != x.rank or w.sizes != idx.sizes \
            or idx.sizes[:-1] != x.sizes[:-1]:
        raise OpError(f"{op}: weights and indices must be [*, k] over x's inputs (x {x}, weights {w}, indices {idx})")


class MoeExpertsAttrs(_Attrs):
    experts: int = Field(gt=0, le=MAX_EXPERTS)
    hidden: int = Field(gt=0)
    kind: Literal["swiglu", "mlp"] = "swiglu"
    act: Act = "silu"
    impl: Literal["loop", "grouped", "batched"] = "loop"
    capacity: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)


@register
class MoeExperts(Op):
    """E feedforward experts, each input summed over the k experts it was routed to, times their
    weights: y = sum_j w_j * expert_{i_j}(x). `swiglu` (Mixtral): down(act(gate(x)) * up(x)) with
    `gate_up_proj [E, 2 * hidden, D]` (gate rows first) and `down_proj [E, D, hidden]`, Hugging
    Face's names and layout; `mlp`: fc2(act(fc1(x))) with `fc1 [E, hidden, D]`, `fc2 [E, D, hidden]`.

    `impl` picks the lowering; all compute the same (tested to 1e-6): `loop` runs each expert on
    its inputs (Hugging Face's loop), `grouped` one grouped matmul per layer over the inputs sorted
    by expert (`torch._grouped_mm`; rows of 16-byte multiples), `batched` pads each expert's inputs
    to the busiest expert's count (or the capacity) and runs batched matmuls (a buffer of
    E x capacity x D). Dropless unless `capacity` (a factor: each expert takes at most
    ceil(capacity * N * k / E) inputs, the first ones in input order; the others are dropped)."""

    name = "moe_experts"
    inputs = ("x", "weights", "indices")
    Attrs = MoeExpertsAttrs
    doc = "E experts: `x [*, D]`, routing weights `[*, k]`, indices `i64[*, k]` -> `[*, D]`"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        x, w, idx = ins
        _check_routing(self.name, x, w, idx)
        d = known(x.sizes[-1], "moe_experts' features")
        if a.impl == "grouped" and any(n * _BYTES.get(x.dtype, 4) % 16 for n in (d, a.hidden)):
            raise OpError(f"moe_experts(impl=\"grouped\"): torch._grouped_mm needs rows of a multiple of 16 "
                          f"bytes; {d} and {a.hidden} {x.dtype} features are not",
                          hint='pad the widths, or use impl="loop"')
        return [x]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        d = known(ins[0].sizes[-1], "moe_experts' features")
        e, h = a.experts, a.hidden
        if a.kind == "swiglu":
            return {"gate_up_proj": ParamSpec((e, 2 * h, d), _uniform(d)), "down_proj": ParamSpec((e, d, h), _uniform(h))}
        return {"fc1": ParamSpec((e, h, d), _uniform(d)), "fc2": ParamSpec((e, d, h), _uniform(h))}

    def active_params(self, a: Any, ins: list[TensorType]) -> int | None:
        """The k experts an input is routed to."""
        d = known(ins[0].sizes[-1], "features")
        k = known(ins[2].sizes[-1], "top-k")
        return k * d * a.hidden * (3 if a.kind == "swiglu" else 2)

    def buffer_elements(self, a: Any, ins: list[TensorType]) -> Size | None:
        """The batched lowering's [E, C, D] buffer: C rows per expert at most, the capacity or every
        input (dropless)."""
        if a.impl != "batched":
            return None
        n, d = _rows(ins[0]), known(ins[0].sizes[-1], "features")
        if a.capacity is not None and n.is_const:
            k = known(ins[2].sizes[-1], "top-k")
            n = Size.of(min(n.value, int(-(-a.capacity * n.value * k // a.experts))))  # ceil, as the lowering
        return n * (a.experts * d)

    def flops(self, a: Any, ins: list[TensorType], outs: list[TensorType]) -> Size:
        """Active FLOPs: each input through its k experts (no capacity drops counted)."""
        d = known(ins[0].sizes[-1], "features")
        k = known(ins[2].sizes[-1], "top-k")
        per = 2 * d * (2 * a.hidden if a.kind == "swiglu" else a.hidden) + 2 * a.hidden * d
        return _rows(ins[0]) * (k * per)

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        first, second = (params["gate_up_proj"], params["down_proj"]) if a.kind == "swiglu" else (params["fc1"], params["fc2"])
        return (f"moe_experts({ins[0]}, {ins[1]}, {ins[2]}, {first}, {second}, kind={a.kind!r}, act={a.act!r}, "
                f"impl={a.impl!r}, capacity={a.capacity!r})")


_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8}


# ---- a mixture whose expert is any block: the gather before each expert, the sum after -----------
# The elaborator expands `moe(E, Block)(x, weights, indices)` into E pairs of these around E
# applications of the block (archc/elaborate/moe.py): the loop lowering written as dataflow.
ROUTED = "N_e"  # the routed-tokens axis: a fresh symbol, the leading axis of each expert's input
MOE_SCOPE = "moe"  # the kind of the scope that holds a mixture: its experts are its children 0 .. E-1


class MoeSelectAttrs(_Attrs):
    expert: int = Field(ge=0)
    experts: int = Field(gt=0, le=MAX_EXPERTS)
    axis: str = Field(default=ROUTED, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    capacity: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)


@register
class MoeSelect(Op):
    """The inputs routed to one expert: from x [*, D] and the routing (weights [*, k], indices
    i64[*, k]), the rows of x whose choices include `expert` ([N_e, D], in input order), their
    positions among the N = prod(*) inputs (i64[N_e]) and the weights of those choices ([N_e]).
    N_e is the symbol `axis`, fresh: a size only the run time knows, which no other axis unifies
    with. `capacity` (a factor, as moe_experts'): the expert takes at most ceil(capacity * N * k / E)
    choices, the first in input order."""

    name = "moe_select"
    inputs = ("x", "weights", "indices")
    Attrs = MoeSelectAttrs
    doc = "one expert's inputs: `x [*, D]`, weights `[*, k]`, indices `i64[*, k]` -> `[N_e, D]`, `i64[N_e]`, `[N_e]`"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        x, w, idx = ins
        _check_routing(self.name, x, w, idx)
        if a.expert >= a.experts:
            raise OpError(f"moe_select: expert {a.expert} of {a.experts}")
        routed = Dim(name=a.axis, size=Size.sym(a.axis))
        return [TensorType(dtype=x.dtype, shape=(routed, x.shape[-1])), TensorType(dtype="i64", shape=(routed,)),
                TensorType(dtype=w.dtype, shape=(routed,))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return f"moe_select({ins[0]}, {ins[1]}, {ins[2]}, {a.expert}, {a.experts}, capacity={a.capacity!r})"


@register
class MoeCombine(Op):
    """The experts' outputs summed back to their inputs: from x [*, D] (which gives the inputs'
    shape) and, per expert, its output [N_e, D'], the positions i64[N_e] and weights [N_e] that
    moe_select gave, y [*, D'] with y[n] = sum over the experts that took input n of weight * output
    (an index_add, in the outputs' dtype; an input no expert took is 0)."""

    name = "moe_combine"
    inputs = ("x", "*parts")
    doc = "the weighted sum of the experts' outputs: `x [*, D]`, then per expert `[N_e, D']`, `i64[N_e]`, `[N_e]` -> `[*, D']`"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        x, parts = ins[0], ins[1:]
        if x.rank == 0 or not parts or len(parts) % 3:
            raise OpError("moe_combine takes x [*, D], then (output, positions, weights) per expert, "
                          f"got {len(parts)} tensors after x")
        first = parts[0]
        for y, pos, w in zip(parts[0::3], parts[1::3], parts[2::3]):
            need_float(y, self.name)
            need_float(w, self.name)
            if y.rank != 2 or pos.dtype != "i64" or pos.rank != 1 or w.rank != 1 or \
                    not y.sizes[0] == pos.sizes[0] == w.sizes[0]:
                raise OpError(f"moe_combine: each expert gives an output [N_e, D'], positions i64[N_e] and "
                              f"weights [N_e], got {y}, {pos}, {w}")
            if y.sizes[-1] != first.sizes[-1] or y.dtype != first.dtype:
                raise OpError(f"moe_combine: the experts' outputs differ: {first} and {y}")
        return [TensorType(dtype=first.dtype, shape=x.shape[:-1] + (first.shape[-1],))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return f"moe_combine({', '.join(ins)})"
