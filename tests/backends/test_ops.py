"""Every op in the registry, lowered three ways (module, fx, emitted file), against a plain
PyTorch eager reference written here independently of the op's own torch spelling."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archc.backends.torch.inputs import example_inputs
from archc.ops import registry

from backend_harness import assert_close, spec_graph, three_ways

Sd = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Case:
    name: str
    spec: str
    ref: Callable[[tuple[torch.Tensor, ...], Sd], Any]
    atol: float = 1e-5
    sizes: dict[str, int] = field(default_factory=dict)


def _module(m: nn.Module, sd: Sd, prefix: str) -> nn.Module:
    """A torch.nn layer holding the archc weights stored under `prefix.`."""
    m.load_state_dict({k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + ".")})
    return m.eval()


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None) -> torch.Tensor:
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if causal:
        t, n = q.shape[-2], k.shape[-2]
        s = s.masked_fill(torch.ones(t, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def _ln_channels_first(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).mean(1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w[:, None, None] + b[:, None, None]


def _scaled_ws(sd: Sd, prefix: str, gamma: float) -> torch.Tensor:
    """Scaled Weight Standardization as Brock et al. 2021 write it (NF-ResNets, eq. 2):
    W^_ij = gain_i * gamma * (W_ij - mu_i) / (sigma_i * sqrt(N)), mu and sigma over the N = fan-in
    values of output channel i (sigma the population standard deviation), no epsilon."""
    w, gain = sd[prefix + ".weight"].double(), sd[prefix + ".gain"].double()
    flat = w.reshape(w.shape[0], -1)
    n = flat.shape[1]
    mu = flat.sum(1, keepdim=True) / n
    sigma = (((flat - mu) ** 2).sum(1, keepdim=True) / n).sqrt()
    return (gain.reshape(-1, 1) * gamma * (flat - mu) / (sigma * math.sqrt(n))).reshape(w.shape).float()


def _pool_mixer_ref(x: torch.Tensor, s: torch.Tensor, w: torch.Tensor, b: torch.Tensor, groups: int,
                    k: tuple[int, int]) -> torch.Tensor:
    """x + s * (pool(n) - n), n the group norm written out, pool the mean over each window's own values."""
    g = x.reshape(x.shape[0], groups, -1)
    n = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)).reshape(x.shape)
    n = n * w[:, None, None] + b[:, None, None]
    pad = (k[1] // 2, k[1] // 2, k[0] // 2, k[0] // 2)
    total = F.conv2d(F.pad(n, pad), torch.ones(x.shape[1], 1, *k), groups=x.shape[1])
    count = F.conv2d(F.pad(torch.ones(1, 1, *x.shape[2:]), pad), torch.ones(1, 1, *k))
    return x + s * (total / count - n)


def _fff_ref(x: torch.Tensor, sd: Sd, depth: int) -> torch.Tensor:
    """The hard form, input by input: descend, then the leaf's MLP (relu)."""
    out = []
    for row in x.reshape(-1, x.shape[-1]):
        k = 0
        for _ in range(depth):
            k = 2 * k + 1 + int(float(row @ sd["fff.node_weights"][k] + sd["fff.node_biases"][k, 0]) >= 0)
        leaf = k - (2 ** depth - 1)
        h = torch.relu(row @ sd["fff.w1s"][leaf] + sd["fff.b1s"][leaf])
        out.append(h @ sd["fff.w2s"][leaf] + sd["fff.b2s"][leaf])
    return torch.stack(out).reshape(*x.shape[:-1], -1)


def _fff_neurons_ref(x: torch.Tensor, sd: Sd, depth: int) -> torch.Tensor:
    w_in, b_in, w_out = sd["fff_neurons.w_in"], sd["fff_neurons.b_in"], sd["fff_neurons.w_out"]
    out = []
    for row in x:
        k, y = 0, torch.zeros(w_out.shape[1])
        for _ in range(depth + 1):
            z = float(row @ w_in[k] + b_in[k])
            y = y + F.gelu(torch.tensor(z)) * w_out[k]
            k = 2 * k + 1 + int(z >= 0)
        out.append(y)
    return torch.stack(out)


def _moe_ref(x: torch.Tensor, sd: Sd, k: int) -> torch.Tensor:
    """Mixtral's layer, token by token: softmax over the router logits, the top k renormalized,
    each chosen SwiGLU expert weighted."""
    gate, up_down = sd["gate.weight"], (sd["experts.gate_up_proj"], sd["experts.down_proj"])
    out = []
    for row in x:
        p = torch.softmax(row @ gate.t(), dim=-1)
        w, i = torch.topk(p, k)
        w = w / w.sum()
        y = torch.zeros_like(row)
        for weight, e in zip(w, i.tolist()):
            g, u = (up_down[0][e] @ row).chunk(2)
            y = y + weight * (up_down[1][e] @ (F.silu(g) * u))
        out.append(y)
    return torch.stack(out)


def _moe_block_ref(x: torch.Tensor, sd: Sd, k: int, experts: int) -> torch.Tensor:
    """A mixture of linear experts (moe(E, linear(6)): moe_select, each expert, moe_combine), token
    by token: the top k of the softmax, renormalized, each chosen expert weighted."""
    out = []
    for row in x:
        w, i = torch.topk(torch.softmax(row @ sd["gate.weight"].t(), dim=-1), k)
        w = w / w.sum()
        out.append(sum(weight * (row @ sd[f"experts.{e}.weight"].t() + sd[f"experts.{e}.bias"])
                       for weight, e in zip(w, i.tolist())))
    assert len({f"experts.{e}.weight" for e in range(experts)} & set(sd)) == experts
    return torch.stack(out)


def _moe_load_ref(x: torch.Tensor, sd: Sd) -> torch.Tensor:
    logits = x @ sd["linear.weight"].t()
    chosen = torch.topk(logits, 2, dim=-1).indices
    counts = torch.stack([(chosen == e).sum() for e in range(logits.shape[1])]).float() / x.shape[0]
    return torch.stack((counts, torch.softmax(logits, dim=-1).mean(0)))


CASES = [
    Case("adaptive_avgpool2d", "axis B\nmodel M (x: [B, 4, 9, 9]) -> [B, 4, 3, 3] { return adaptive_avgpool2d(x, 3) }",
         lambda i, sd: nn.AdaptiveAvgPool2d(3)(i[0])),
    Case("add", "axis B\nmodel M (x: [B, 3, 8], y: [3, 8]) -> [B, 3, 8] { return x + y + 1.5 }",
         lambda i, sd: i[0] + i[1] + 1.5),
    Case("arange", """axis B, T
         model M (x: [B, T, 8]) -> ([T], [4], [T - 2], [3]) {
             return arange(x, dim=1), arange(x, 0, 8, 2, dtype="f32"), arange(x, 2, dim=1), arange(x, 1, 9, 3)
         }""", lambda i, sd: (torch.tensor(list(range(i[0].shape[1]))), torch.tensor([0.0, 2.0, 4.0, 6.0]),
                              torch.tensor(list(range(2, i[0].shape[1]))), torch.tensor([1, 4, 7])), sizes={"T": 6}),
    Case("attention", """axis B, T
         model M (q: [B, 2, T, 8], k: [B, 2, T, 8], v: [B, 2, T, 4]) -> [B, 2, T, 4] {
             return attention(q, k, v, causal=true)
         }""", lambda i, sd: _attention(*i, causal=True, scale=None), atol=1e-5, sizes={"T": 7}),
    Case("attention_gqa", """axis B, T
         model M (q: [B, 6, T, 8], k: [B, 2, T, 8], v: [B, 2, T, 4]) -> [B, 6, T, 4] {
             return attention(q, k, v, causal=true)
         }""", lambda i, sd: _attention(i[0], *(t[:, [0, 0, 0, 1, 1, 1]] for t in i[1:]), causal=True, scale=None),
         sizes={"T": 5}),
    Case("attention_scaled", """axis B
         model M (q: [B, 3, 5, 8], k: [B, 3, 6, 8], v: [B, 3, 6, 8]) -> [B, 3, 5, 8] {
             return attention(q, k, v, scale=0.25)
         }""", lambda i, sd: _attention(*i, causal=False, scale=0.25)),
    Case("avgpool2d", """axis B
         model M (x: [B, 4, 9, 9]) -> [B, 4, 5, 5] {
             return avgpool2d(x, 3, stride=2, padding=1, ceil_mode=true, count_include_pad=false)
         }""", lambda i, sd: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)(i[0])),
    Case("batchnorm", "axis B\nmodel M (x: [B, 4, 5, 5]) -> [B, 4, 5, 5] { return batchnorm(x, eps=0.001) }",
         lambda i, sd: _module(nn.BatchNorm2d(4, eps=1e-3), sd, "batchnorm")(i[0])),
    Case("batchnorm_1d", "axis B\nmodel M (x: [B, 6]) -> [B, 6] { return batchnorm(x, affine=false) }",
         lambda i, sd: _module(nn.BatchNorm1d(6, affine=False), sd, "batchnorm")(i[0])),
    Case("cast", """axis B
         model M (x: [B, 8], y: i64[B, 8]) -> (f16[B, 8], i64[B, 8], [B, 8]) {
             return cast(x, "f16"), cast(x * 4.0, y), cast(y, x)
         }""", lambda i, sd: (i[0].half(), (i[0] * 4).long(), i[1].float())),
    Case("chunk", "axis B\nmodel M (x: [B, 8]) -> ([B, 4], [B, 4]) { a, b = chunk(x, 2)\n return b, a }",
         lambda i, sd: (i[0][:, 4:], i[0][:, :4])),
    Case("concat", """axis B, N
         model M (x: [B, N, 8], y: [B, 2, 8]) -> [B, N + 3, 8] {
             cls = parameter([1, 1, 8], init="normal(0.02)")
             return concat(cls, x, y, dim=1)
         }""", lambda i, sd: torch.cat([sd["cls"].expand(i[0].shape[0], 1, 8), i[0], i[1]], dim=1),
         sizes={"N": 5}),
    Case("conv1d", """axis B, L
         model M (x: [B, 4, 10]) -> [B, 6, 5] { return conv1d(x, 6, 3, stride=2, padding=1, groups=2) }""",
         lambda i, sd: _module(nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), sd, "conv1d")(i[0])),
    Case("conv2d", """axis B
         model M (x: [B, 4, 9, 9]) -> [B, 8, 5, 5] {
             y = conv2d(x, 8, 3, stride=2, padding=1)
             return conv2d(y, 8, 3, padding="same", dilation=2, groups=4, bias=false)
         }""", lambda i, sd: _module(nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=4, bias=False),
                                     sd, "conv2d_1")(_module(nn.Conv2d(4, 8, 3, 2, 1), sd, "conv2d")(i[0]))),
    Case("conv_transpose2d", """axis B
         model M (x: [B, 4, 5, 6]) -> ([B, 6, 10, 12], [B, 3, 7, 8]) {
             return conv_transpose2d(x, 6, 3, stride=2, padding=1, output_padding=1, groups=2), conv_transpose2d(x, 3, 3, bias=false)
         }""", lambda i, sd: (_module(nn.ConvTranspose2d(4, 6, 3, 2, 1, 1, groups=2), sd, "conv_transpose2d")(i[0]),
                              _module(nn.ConvTranspose2d(4, 3, 3, bias=False), sd, "conv_transpose2d_1")(i[0]))),
    Case("std_conv2d", """axis B
         model M (x: [B, 4, 9, 9]) -> ([B, 8, 5, 5], [B, 6, 9, 9]) {
             return std_conv2d(x, 8, 3, stride=2, padding=1, gamma=1.7, eps=1e-10), std_conv2d(x, 6, 1, groups=2, bias=false, eps=1e-10)
         }""", lambda i, sd: (F.conv2d(i[0], _scaled_ws(sd, "std_conv2d", 1.7), sd["std_conv2d.bias"], 2, 1),
                              F.conv2d(i[0], _scaled_ws(sd, "std_conv2d_1", 1.0), None, groups=2))),
    Case("cos", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return cos(x) }",
         lambda i, sd: torch.sin(i[0] + math.pi / 2), atol=1e-5),
    Case("div", "axis B\nmodel M (x: [B, 8], y: [B, 8]) -> [B, 8] { return x / (y * y + 1.0) + 2.0 / (x * x + 1.0) }",
         lambda i, sd: i[0] / (i[1] ** 2 + 1) + 2 / (i[0] ** 2 + 1)),
    Case("drop_path", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return drop_path(x, 0.3) }", lambda i, sd: i[0]),
    Case("dropout", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return dropout(x, 0.3) }", lambda i, sd: i[0]),
    Case("einsum", """axis B
         model M (a: [B, 2, 5, 8], b: [B, 2, 6, 8]) -> [B, 2, 5, 6] {
             return einsum(a, b, "b h t d, b h s d -> b h t s")
         }""", lambda i, sd: i[0] @ i[1].transpose(-1, -2)),
    Case("embedding", "axis B, T\nmodel M (t: i64[B, T]) -> [B, T, 8] { return embedding(t, 50, 8) }",
         lambda i, sd: _module(nn.Embedding(50, 8), sd, "embedding")(i[0])),
    Case("exp", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return exp(x) }",
         lambda i, sd: torch.tensor(math.e) ** i[0], atol=1e-5),
    Case("flatten", "axis B\nmodel M (x: [B, 2, 3, 4]) -> [B, 2, 12] { return flatten(x, 2) }",
         lambda i, sd: i[0].reshape(i[0].shape[0], 2, 12)),
    Case("gelu", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return gelu(x) + gelu(x, approximate=\"tanh\") }",
         lambda i, sd: 0.5 * i[0] * (1 + torch.erf(i[0] / math.sqrt(2)))
         + 0.5 * i[0] * (1 + torch.tanh(math.sqrt(2 / math.pi) * (i[0] + 0.044715 * i[0] ** 3)))),
    Case("global_avgpool", """axis B
         model M (x: [B, 4, 5, 6]) -> ([B, 4], [B, 4, 1, 1]) { return global_avgpool(x), global_avgpool(x, keepdim=true) }""",
         lambda i, sd: (i[0].sum((2, 3)) / 30, i[0].sum((2, 3), keepdim=True) / 30)),
    Case("groupnorm", "axis B\nmodel M (x: [B, 8, 3, 3]) -> [B, 8, 3, 3] { return groupnorm(x, 2) }",
         lambda i, sd: _module(nn.GroupNorm(2, 8), sd, "groupnorm")(i[0])),
    Case("pool_mixer_residual", """axis B
         model M (x: [B, 8, 6, 7], s: [8, 1, 1]) -> [B, 8, 6, 7] {
             return pool_mixer_residual(x, s, groups=2, kernel=[3, 5], padding=[1, 2])
         }""", lambda i, sd: _pool_mixer_ref(i[0], i[1], sd["pool_mixer_residual.weight"],
                                            sd["pool_mixer_residual.bias"], 2, (3, 5))),
    Case("identity", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return identity(x) * 2.0 }", lambda i, sd: i[0] * 2),
    Case("interpolate", """axis B, H, W
         model M (x: [B, 3, H, W]) -> ([B, 3, 2 * H, 2 * W], [B, 3, 7, 9]) {
             return interpolate(x, 2), interpolate(x, size=[7, 9], mode="bilinear")
         }""", lambda i, sd: (i[0].repeat_interleave(2, 2).repeat_interleave(2, 3),
                              nn.Upsample(size=(7, 9), mode="bilinear")(i[0])), sizes={"H": 4, "W": 5}),
    Case("layernorm", "axis B, T\nmodel M (x: [B, T, 8]) -> [B, T, 8] { return layernorm(x) }",
         lambda i, sd: _module(nn.LayerNorm(8), sd, "layernorm")(i[0])),
    Case("layernorm_channels_first", """axis B
         model M (x: [B, 6, 4, 5]) -> [B, 6, 4, 5] { return layernorm(x, dim=1, eps=0.000001) }""",
         lambda i, sd: _ln_channels_first(i[0], sd["layernorm.weight"], sd["layernorm.bias"], 1e-6)),
    Case("layernorm_no_bias", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return layernorm(x, bias=false) }",
         lambda i, sd: F.layer_norm(i[0], (8,)) * sd["layernorm.weight"]),
    Case("linear", "axis B, T\nmodel M (x: [B, T, 8]) -> [B, T, 5] { return linear(x, 5) >> linear(5, bias=false) }",
         lambda i, sd: _module(nn.Linear(5, 5, bias=False), sd, "linear_1")(_module(nn.Linear(8, 5), sd, "linear")(i[0]))),
    Case("maxpool2d", "axis B\nmodel M (x: [B, 4, 9, 9]) -> [B, 4, 5, 5] { return maxpool2d(x, 3, stride=2, padding=1) }",
         lambda i, sd: nn.MaxPool2d(3, 2, 1)(i[0])),
    Case("mean", "axis B\nmodel M (x: [B, 4, 6]) -> [B, 1, 6] { return mean(x, [1], keepdim=true) }",
         lambda i, sd: i[0].sum(1, keepdim=True) / 4),
    Case("mul", "axis B\nmodel M (x: [B, 8], y: [8]) -> [B, 8] { return x * y * 3.0 }",
         lambda i, sd: i[0] * i[1] * 3),
    Case("pad", """axis B, H, W
         model M (x: [B, 3, H, W], y: [B, 3, 4, 5]) -> ([B, 3, H + 3, W + 1], [B, 3, 6, 7]) {
             return pad(x, [0, 1, 1, 2], value=0.5), pad(y, [1, 1, 1, 1], mode="reflect")
         }""", lambda i, sd: (nn.ConstantPad2d((0, 1, 1, 2), 0.5)(i[0]), nn.ReflectionPad2d(1)(i[1])),
         sizes={"H": 5, "W": 6}),
    Case("buffer", """axis B
         model M (x: [B, 8]) -> ([B, 8], i64[3]) { s = buffer([8], init=2.0)\n n = buffer([3], dtype="i64")\n return x * s, n }""",
         lambda i, sd: (i[0] * sd["s"], sd["n"])),
    Case("parameter", """axis B
         model M (x: [B, 8]) -> [B, 8] { g = parameter([8], init=0.5)\n return x * g }""",
         lambda i, sd: i[0] * sd["g"]),
    Case("positions", "axis B, T\nmodel M (t: i64[B, T]) -> [T, 8] { return positions(t, 32, 8) }",
         lambda i, sd: sd["positions.weight"][: i[0].shape[1]]),
    Case("pow", "axis B\nmodel M (x: [B, 8], y: [B, 8]) -> [B, 8] { return x ** 2 + 2.0 ** x + (x * x + 1.0) ** y }",
         lambda i, sd: i[0] * i[0] + torch.exp(i[0] * math.log(2.0)) + torch.exp(i[1] * torch.log(i[0] * i[0] + 1))),
    Case("rearrange", """axis B, T
         model M (x: [B, T, 12], y: [B, 4, 2, 3]) -> ([B, 3, T, 4], [B, 6, 4]) {
             return rearrange(x, "b t (h d) -> b h t d", h=3), rearrange(y, "b c h w -> b (h w) c")
         }""", lambda i, sd: (i[0].reshape(i[0].shape[0], i[0].shape[1], 3, 4).permute(0, 2, 1, 3),
                              i[1].reshape(i[1].shape[0], 4, 6).transpose(1, 2))),
    Case("relu", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return relu(x) }", lambda i, sd: i[0].clamp(min=0)),
    Case("repeat", """axis B, T
         model M (x: [B, 2, T, 4], y: [B, 3]) -> ([B, 6, T, 4], [2, B, 3], [B, T, 8]) {
             return repeat(x, "b h t d -> b (h r) t d", r=3), repeat(y, "b c -> n b c", n=2), repeat(x, "b h t d -> b t (h d)")
         }""", lambda i, sd: (i[0][:, [0, 0, 0, 1, 1, 1]], torch.stack([i[1], i[1]]),
                              i[0].permute(0, 2, 1, 3).reshape(i[0].shape[0], -1, 8)), sizes={"T": 3}),
    Case("rsqrt", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return rsqrt(x * x + 0.5) }",
         lambda i, sd: 1 / torch.sqrt(i[0] ** 2 + 0.5)),
    Case("rmsnorm", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return rmsnorm(x) }",
         lambda i, sd: i[0] * torch.rsqrt(i[0].pow(2).mean(-1, keepdim=True) + 1e-6) * sd["rmsnorm.weight"]),
    Case("select", "axis B\nmodel M (x: [B, 5, 8]) -> [B, 8] { return x[:, 2] }", lambda i, sd: i[0][:, 2]),
    Case("sin", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return sin(x) }",
         lambda i, sd: torch.cos(i[0] - math.pi / 2), atol=1e-5),
    Case("leaky_relu", "axis B\nmodel M (x: [B, 8]) -> ([B, 8], [B, 8]) { return leaky_relu(x), leaky_relu(x, 0.2) }",
         lambda i, sd: (torch.where(i[0] > 0, i[0], 0.01 * i[0]), torch.where(i[0] > 0, i[0], 0.2 * i[0]))),
    Case("relu6", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return relu6(x * 4.0) }",
         lambda i, sd: (i[0] * 4).clamp(0, 6)),
    Case("hardsigmoid", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return hardsigmoid(x * 4.0) }",
         lambda i, sd: ((i[0] * 4 + 3).clamp(0, 6)) / 6),
    Case("hardswish", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return hardswish(x * 4.0) }",
         lambda i, sd: i[0] * 4 * ((i[0] * 4 + 3).clamp(0, 6)) / 6),
    Case("sigmoid", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return sigmoid(x) }",
         lambda i, sd: 1 / (1 + torch.exp(-i[0]))),
    Case("silu", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return silu(x) }",
         lambda i, sd: i[0] / (1 + torch.exp(-i[0]))),
    Case("slice", "axis B\nmodel M (x: [B, 5, 8]) -> [B, 2, 5] { return x[:, 1:3, 3:] }",
         lambda i, sd: i[0][:, 1:3, 3:]),
    Case("slice_step", "axis B\nmodel M (x: [B, 7, 8]) -> [B, 3, 4] { return slice(x, 1, 1, step=2) >> slice(2, -7, 8, 2) }",
         lambda i, sd: i[0][:, 1::2, 1::2]),
    Case("take", """axis B
         model M (x: [B, 3, 7]) -> [B, 3, 4, 2] {
             rows = arange(x, 0, 4) >> rearrange("i -> i 1")
             cols = arange(x, 0, 4) >> rearrange("j -> 1 j")
             y = take(x, cast(rows - cols + 3, dtype="i64"), dim=2) >> slice(3, 1)
             return take(y, arange(x, 0, 3, 2), dim=-1)
         }""", lambda i, sd: i[0][:, :, torch.arange(4)[:, None] - torch.arange(4)[None, :] + 3][..., 1:][..., [0, 2]]),
    Case("softmax", "axis B\nmodel M (x: [B, 3, 8]) -> [B, 3, 8] { return softmax(x, 1) }",
         lambda i, sd: torch.exp(i[0]) / torch.exp(i[0]).sum(1, keepdim=True)),
    Case("sqrt", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return sqrt(x * x + 0.5) }",
         lambda i, sd: (i[0] ** 2 + 0.5) ** 0.5),
    Case("split", "axis B\nmodel M (x: [B, 8]) -> ([B, 2], [B, 6]) { a, b = split(x, [2, 6])\n return a, b }",
         lambda i, sd: (i[0][:, :2], i[0][:, 2:])),
    Case("starrelu", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return starrelu(x) }",
         lambda i, sd: sd["starrelu.scale"] * torch.clamp(i[0], min=0) ** 2 + sd["starrelu.bias"]),
    Case("starrelu_fixed", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return starrelu(x, 0.5, -0.25, false) }",
         lambda i, sd: 0.5 * torch.clamp(i[0], min=0) ** 2 - 0.25),
    Case("sub", "axis B\nmodel M (x: [B, 8], y: [B, 8]) -> [B, 8] { return (x - y) - 2.0 + (1.0 - x) }",
         lambda i, sd: (i[0] - i[1]) - 2 + (1 - i[0])),
    Case("tanh", "axis B\nmodel M (x: [B, 8]) -> [B, 8] { return tanh(x) }",
         lambda i, sd: (torch.exp(2 * i[0]) - 1) / (torch.exp(2 * i[0]) + 1)),
    Case("fff", "axis B\nmodel M (x: [B, 3, 8]) -> [B, 3, 6] { return fff(x, 6, 3, 4) }",
         lambda i, sd: _fff_ref(i[0], sd, 3)),
    Case("fff_neurons", "axis B\nmodel M (x: [B, 8]) -> [B, 6] { return fff_neurons(x, 6, 2) }",
         lambda i, sd: _fff_neurons_ref(i[0], sd, 2)),
    Case("full", "axis B\nmodel M (x: [B, 8]) -> [2, 3] { return full(x, [2, 3], -1.5) }",
         lambda i, sd: torch.full((2, 3), -1.5)),
    Case("moe", """axis B
         model M (x: [B, 8]) -> [B, 8] {
             gate = linear(4, bias=false)
             experts = moe_experts(4, 6)
             weights, index = moe_router(gate(x), 2)
             return experts(x, weights, index)
         }""", lambda i, sd: _moe_ref(i[0], sd, 2), sizes={"B": 9}),
    Case("moe_select", """axis B
         model M (x: [B, 8]) -> [B, 6] {
             gate = linear(4, bias=false)
             weights, index = moe_router(gate(x), 2)
             experts = moe(4, linear(6))
             return experts(x, weights, index)
         }""", lambda i, sd: _moe_block_ref(i[0], sd, 2, 4), sizes={"B": 9}),
    Case("moe_load", """axis B
         model M (x: [B, 8]) -> f32[2, 5] {
             logits = linear(x, 5, bias=false)
             _, index = moe_router(logits, 2, scoring="sigmoid")
             return moe_load(logits, index)
         }""", lambda i, sd: _moe_load_ref(i[0], sd), sizes={"B": 7}),
    Case("unbind", "axis B\nmodel M (x: [3, B, 4]) -> ([B, 4], [B, 4], [B, 4]) { a, b, c = unbind(x)\n return c, a, b }",
         lambda i, sd: (i[0][2], i[0][0], i[0][1])),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op_matches_eager_reference(case: Case, tmp_path: Any) -> None:
    graph = spec_graph(case.spec)
    models = three_ways(graph, tmp_path)
    inputs = example_inputs(graph, case.sizes, seed=1)
    sd = models["module"].state_dict()
    with torch.no_grad():
        want = case.ref(inputs, sd)
        for how, model in models.items():
            assert_close(model.eval()(*inputs), want, f"{case.name} ({how})", atol=case.atol)


def test_every_registered_op_is_covered() -> None:
    covered = {n.op for case in CASES for n in spec_graph(case.spec).nodes}
    missing = sorted(set(registry.names()) - covered)
    assert not missing, f"ops with no backend test: {missing}; add a Case to tests/backends/test_ops.py"


def _train_outputs(spec: str, tmp_path: Any, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    graph = spec_graph(spec)
    models = three_ways(graph, tmp_path)
    x = torch.randn(64, 8)
    outs = {}
    for how, model in models.items():
        torch.manual_seed(seed)
        outs[how] = model.train()(x)
    return outs, x


def test_dropout_in_training_matches_eager_and_agrees_across_backends(tmp_path: Any) -> None:
    outs, x = _train_outputs("axis B\nmodel M (x: [B, 8]) -> [B, 8] { return dropout(x, 0.3) }", tmp_path, 7)
    torch.manual_seed(7)
    want = F.dropout(x, 0.3, training=True)
    for how, y in outs.items():
        assert_close(y, want, f"dropout ({how})")


def test_drop_path_drops_whole_samples_in_training(tmp_path: Any) -> None:
    outs, x = _train_outputs("axis B\nmodel M (x: [B, 8]) -> [B, 8] { return drop_path(x, 0.5) }", tmp_path, 3)
    y = outs["module"]
    kept = (y != 0).all(dim=1)
    dropped = (y == 0).all(dim=1)
    assert bool((kept | dropped).all()) and 0 < int(kept.sum()) < 64
    assert_close(y[kept], x[kept] / 0.5, "drop_path keeps samples scaled by 1 / (1 - p)")
    for how in ("fx", "file"):
        assert_close(outs[how], y, f"drop_path ({how}) with the same seed")


def test_attention_dropout_follows_the_mode(tmp_path: Any) -> None:
    spec = """axis B
    model M (q: [B, 2, 6, 8]) -> [B, 2, 6, 8] { return attention(q, q, q, dropout=0.5) }"""
    graph = spec_graph(spec)
    models = three_ways(graph, tmp_path)
    (q,) = example_inputs(graph)
    want = _attention(q, q, q, causal=False, scale=None)
    for how, model in models.items():
        assert_close(model.eval()(q), want, f"attention eval ({how})")
        assert not torch.allclose(model.train()(q), want), f"attention dropout is off in training ({how})"


def test_batchnorm_training_updates_running_statistics_like_torch(tmp_path: Any) -> None:
    spec = "axis B\nmodel M (x: [B, 4, 5, 5]) -> [B, 4, 5, 5] { return batchnorm(x, momentum=0.2) }"
    graph = spec_graph(spec)
    models = three_ways(graph, tmp_path)
    ref = _module(nn.BatchNorm2d(4, momentum=0.2), models["module"].state_dict(), "batchnorm").train()
    x = torch.randn(3, 4, 5, 5)
    want = ref(x)
    for how, model in models.items():
        assert_close(model.train()(x), want, f"batchnorm training ({how})")
        sd = model.state_dict()
        assert_close(sd["batchnorm.running_mean"], ref.running_mean, f"running_mean ({how})")
        assert_close(sd["batchnorm.running_var"], ref.running_var, f"running_var ({how})")
