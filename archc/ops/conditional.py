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
        t = ins[0]
        need_float(t, self.name)
        if t.rank == 0:
            raise OpError("fff needs at least one axis")
        known(t.sizes[-1], "fff's input features (the last axis)")
        y = TensorType(dtype=t.dtype, shape=t.shape[:-1] + (Dim(size=Size.of(a.out)),))
        if not a.entropy:
            return [y]
        return [y, TensorType(dtype=t.dtype, shape=(Dim(size=Size.of(2 ** a.depth - 1)),))]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        d = known(ins[0].sizes[-1], "fff's input features")
        nodes, leaves = 2 ** a.depth - 1, 2 ** a.depth
        inner, outer = _uniform(d), _uniform(a.leaf)  # the package's initialization
        specs = {"w1s": ParamSpec((leaves, d, a.leaf), inner), "b1s": ParamSpec((leaves, a.leaf), inner),
                 "w2s": ParamSpec((leaves, a.leaf, a.out), outer), "b2s": ParamSpec((leaves, a.out), outer)}
        if nodes:
            specs = {"node_weights": ParamSpec((nodes, d), inner), "node_biases": ParamSpec((nodes, 1), inner), **specs}
        return specs

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
        t = ins[0]
        need_float(t, self.name)
        if t.rank == 0:
            raise OpError("fff_neurons needs at least one axis")
        known(t.sizes[-1], "fff_neurons' input features (the last axis)")
        y = TensorType(dtype=t.dtype, shape=t.shape[:-1] + (Dim(size=Size.of(a.out)),))
        if not a.entropy:
            return [y]
        return [y, TensorType(dtype=t.dtype, shape=(Dim(size=Size.of(a.trees * (2 ** (a.depth + 1) - 1))),))]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        d = known(ins[0].sizes[-1], "fff_neurons' input features")
        n = a.trees * (2 ** (a.depth + 1) - 1)
        return {"w_in": ParamSpec((n, d), _uniform(d)), "b_in": ParamSpec((n,), _uniform(d)),
                "w_out": ParamSpec((n, a.out), _uniform((a.depth + 1) * a.trees))}

    def flops(self, a: Any, ins: list[TensorType], outs: list[TensorType]) -> Size:
        """The inference (hard) form, as FlopCounterMode counts it: per tree, the depth + 1 neurons
        on the path (their dot products are the decisions), then their outputs."""
        d = known(ins[0].sizes[-1], "features")
        return _rows(ins[0]) * (a.trees * 2 * (a.depth + 1) * (d + a.out))

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return (f"fff_neurons({ins[0]}, {params['w_in']}, {params['b_in']}, {params['w_out']}, depth={a.depth}, "
                f"trees={a.trees}, act={a.act!r}, form={a.form!r}, training=self.training"
                + (", entropy=True)" if a.entropy else ")"))
