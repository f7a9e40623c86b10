"""Fold BatchNorm into the convolution or linear layer before it (eval mode).

What it does: `batchnorm(conv(x))` becomes one `conv(x)` with a bias, and the same for conv1d
and for linear on [B, F] (where BatchNorm's channel axis is the feature axis). With
s = gamma / sqrt(running_var + eps):  W' = W * s (per output channel),
b' = beta + (b - running_mean) * s  (b = 0 when the layer had no bias).
The layer keeps its scope and weight name; a bias parameter `<scope>.bias` appears if it had
none; the BatchNorm's parameters and buffers disappear.
Assumes: eval mode (BatchNorm uses its running statistics); the layer's output is used only by
the BatchNorm; the layer's parameters are not shared with another node; neither is @no_fuse.
Guarantees: identical outputs in eval mode up to float rounding (the fold is computed in float64
and cast back to the weight's dtype); returns the weight transform.
Reference: Ioffe & Szegedy, "Batch Normalization", ICML 2015 (§3.2, inference); the fold as in
torch.nn.utils.fusion.fuse_conv_bn_weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from archc.ir.graph import Graph, Node
from archc.passes.editor import Editor, has_annotation, remake
from archc.passes.result import PassResult, StateDict
from archc.passes.rewrite import Rule, rewrite

if TYPE_CHECKING:
    from torch import Tensor

FOLDABLE = ("conv1d", "conv2d", "linear")


@dataclass(frozen=True)
class Fold:
    weight: str
    old_bias: str | None
    new_bias: str
    bn: dict[str, str]  # role -> parameter name
    eps: float


def bn_scale_shift(sd: StateDict, bn: dict[str, str], eps: float) -> "tuple[Tensor, Tensor]":
    """(s, t) with batchnorm(x) = s * x + t per channel, in float64."""
    import torch

    mean = sd[bn["running_mean"]].double()
    inv = torch.rsqrt(sd[bn["running_var"]].double() + eps)
    gamma = sd[bn["weight"]].double() if "weight" in bn else torch.ones_like(mean)
    beta = sd[bn["bias"]].double() if "bias" in bn else torch.zeros_like(mean)
    scale = gamma * inv
    return scale, beta - mean * scale


def _fold_rule(folds: list[Fold]) -> Rule:
    def apply(index: int, bn: Node, ed: Editor) -> bool:
        found = ed.producer(bn.inputs[0])
        if found is None:
            return False
        at, layer = found
        if layer.op not in FOLDABLE or has_annotation(layer, "no_fuse") or len(ed.users(layer.outputs[0])) != 1:
            return False
        if ed.is_output(layer.outputs[0]) or (layer.op == "linear" and ed.values[layer.outputs[0]].rank != 2):
            return False
        if any(len(ed.param_users(p)) != 1 for p in list(layer.params.values()) + list(bn.params.values())):
            return False  # shared (tied) weights would change for the other user too
        old_bias = layer.params.get("bias")
        new_bias = old_bias or (f"{layer.scope}.bias" if layer.scope else "bias")
        if old_bias is None and new_bias in ed.params:
            return False
        ed.nodes[at] = remake(layer, outputs=bn.outputs, attrs={**layer.attrs, "bias": True},
                              params={**layer.params, "bias": new_bias})
        if old_bias is None:
            ed.declare(new_bias, ed.nodes[at], "bias")  # type: ignore[arg-type]
        ed.delete(index)
        folds.append(Fold(layer.params["weight"], old_bias, new_bias, dict(bn.params), bn.attrs["eps"]))
        return True
    return Rule("batchnorm", "batchnorm(conv(x, W, b)) -> conv(x, W*s, beta + (b - mean)*s)", apply)


def _transform(folds: list[Fold]):  # type: ignore[no-untyped-def]
    def apply(sd: StateDict) -> "dict[str, Tensor]":
        out = dict(sd)
        for f in folds:
            w = out[f.weight]  # `out`: a second BatchNorm folds into the already folded layer
            scale, shift = bn_scale_shift(out, f.bn, f.eps)
            bias = out[f.old_bias].double() if f.old_bias else 0.0
            out[f.weight] = (w.double() * scale.view(-1, *[1] * (w.dim() - 1))).to(w.dtype)
            out[f.new_bias] = (bias * scale + shift).to(w.dtype)
            for name in f.bn.values():
                out.pop(name, None)
        return out
    return apply


def fold_bn(graph: Graph) -> PassResult:
    folds: list[Fold] = []
    new = rewrite(graph, (_fold_rule(folds),))
    return PassResult(new, _transform(folds) if folds else None)
