"""CPU inference with oneDNN, in plain PyTorch: a convolution or linear layer with its epilogue
(an activation, or an add and then an activation) as one call, on weights packed once per shape.

These are the calls that torch.compile's freezing path emits (torch/_inductor/fx_passes/
mkldnn_fusion.py): `mkldnn._reorder_convolution_weight` packs a convolution's weight for one input
shape and `mkldnn._convolution_pointwise` (`.binary`, in-place `_convolution_pointwise_.binary`)
runs it on a channels-last input with post-ops; `mkl._mkl_reorder_linear_weight` / `mkl._mkl_linear`
and `mkldnn._reorder_linear_weight` / `mkldnn._linear_pointwise` do the same for a linear layer.

This file needs only torch: the torch backend copies what follows the imports verbatim into a
generated module whose IR has CPU epilogue groups (-O2, archc/passes/mark_epilogues.py).
The packed weights are a cache beside the module (a weak dictionary keyed by the layer), never
in its state_dict: they are made again when the weight changes (its version), for each input
shape, dtype and device. Where oneDNN does not apply -- training mode, autograd recording,
another device or dtype, a compiler tracing the module (torch.compile does its own fusion) --
the same function computes the plain layer and activation, so the module is correct everywhere.
"""

import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn

# oneDNN's post-op name -> the same activation in torch, for the unfused path
ACTIVATIONS = {
    "relu": lambda x, algorithm: F.relu(x),
    "gelu": lambda x, algorithm: F.gelu(x, approximate=algorithm or "none"),
    "swish": lambda x, algorithm: F.silu(x),
    "sigmoid": lambda x, algorithm: torch.sigmoid(x),
    "tanh": lambda x, algorithm: torch.tanh(x),
}
_PACKED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()  # layer -> key -> packed
_LINEAR_WAY: dict = {}  # (rows, in, out, act, dtype, threads) -> "eager", "mkl" or "onednn": measured once
_MAX_SHAPES = 8  # packed weights kept per layer


def fusable(layer: nn.Module, x: torch.Tensor) -> bool:
    """May this call run on oneDNN? Inference on a CPU float32/bfloat16 tensor, outside a tracer."""
    if layer.training or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    if x.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False  # no bf16 instructions here: oneDNN would emulate them slowly
    if layer.weight.dtype != x.dtype or torch.compiler.is_compiling() or not torch.backends.mkldnn.is_available():
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))


def _packed(layer: nn.Module, key: tuple, pack) -> torch.Tensor:
    """The layer's weight packed for `key` (made by `pack()` on first use, again after the weight changed)."""
    cache = _PACKED.setdefault(layer, {})
    w = layer.weight  # an inference tensor has no version counter (made under torch.inference_mode)
    key = (-1 if w.is_inference() else w._version, w.data_ptr()) + key
    if key not in cache:
        if len(cache) >= _MAX_SHAPES:
            cache.clear()
        cache[key] = pack()
    return cache[key]


def _activation(y: torch.Tensor, act: str, algorithm: str) -> torch.Tensor:
    return ACTIVATIONS[act](y, algorithm) if act else y


def _conv_args(conv: nn.Conv2d) -> tuple:
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def _conv_ok(conv: nn.Module, x: torch.Tensor) -> bool:
    return isinstance(conv, nn.Conv2d) and x.dim() == 4 and conv.padding_mode == "zeros" and \
        not isinstance(conv.padding, str) and fusable(conv, x)


def _conv_shape(conv: nn.Conv2d, x: torch.Tensor) -> torch.Size:
    """The shape of conv(x) (an `other` of another shape would broadcast: the plain path)."""
    hw = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
          zip(x.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
    return torch.Size([x.shape[0], conv.out_channels, *hw])


def _conv_weight(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    padding, stride, dilation, groups = _conv_args(conv)
    return _packed(conv, (tuple(x.shape), x.dtype), lambda: torch.ops.mkldnn._reorder_convolution_weight(
        conv.weight.detach(), padding, stride, dilation, groups, list(x.shape)))


def conv_act(conv: nn.Conv2d, x: torch.Tensor, act: str = "", algorithm: str = "") -> torch.Tensor:
    """act(conv(x)) as one oneDNN convolution with the activation as a post-op, channels-last
    (its output is channels-last too, so the next convolution reads it without a copy)."""
    if not _conv_ok(conv, x):
        return _activation(conv(x), act, algorithm)
    x = x.contiguous(memory_format=torch.channels_last)
    if not act and conv.groups == conv.in_channels == conv.out_channels > 1:
        return conv(x)  # depthwise, alone: torch's own channels-last call beats the packed one (measured)
    padding, stride, dilation, groups = _conv_args(conv)
    return torch.ops.mkldnn._convolution_pointwise(x, _conv_weight(conv, x), conv.bias, padding, stride, dilation,
                                                   groups, act or "none", [], algorithm)


def conv_add_act(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor, act: str = "", algorithm: str = "",
                 overwrite: bool = False) -> torch.Tensor:
    """act(conv(x) + other) as one oneDNN convolution with the add and the activation as post-ops;
    with `overwrite` (other is read by nothing else) the result is written into `other` (oneDNN's
    sum post-op), as timm's ResNet does with `x += shortcut`."""
    if not _conv_ok(conv, x) or other.shape != _conv_shape(conv, x) or other.dtype != x.dtype:
        return _activation(conv(x) + other, act, algorithm)
    x = x.contiguous(memory_format=torch.channels_last)
    padding, stride, dilation, groups = _conv_args(conv)
    weight = _conv_weight(conv, x)
    if overwrite and other.is_contiguous(memory_format=torch.channels_last) and not other.requires_grad:
        return torch.ops.mkldnn._convolution_pointwise_.binary(other, x, weight, conv.bias, padding, stride, dilation,
                                                               groups, "add", 1.0, act or None, [], algorithm or None)
    try:
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, weight, conv.bias, padding, stride, dilation,
                                                              groups, "add", 1.0, act or None, [], algorithm or None)
    except RuntimeError:  # a shape oneDNN's binary post-op does not take (a broadcast)
        return _activation(conv(x) + other, act, algorithm)


def _linear_ways(linear: nn.Linear, x: torch.Tensor, act: str, algorithm: str) -> dict:
    rows = x.numel() // x.shape[-1]
    ways = {"eager": lambda: _activation(F.linear(x, linear.weight, linear.bias), act, algorithm)}
    if x.dtype == torch.float32 and torch._C.has_mkl:
        ways["mkl"] = lambda: _activation(torch.ops.mkl._mkl_linear(
            x, _packed(linear, ("mkl", rows), lambda: torch.ops.mkl._mkl_reorder_linear_weight(
                linear.weight.detach(), rows)), linear.weight, linear.bias, rows), act, algorithm)
    ways["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(
        x, _packed(linear, ("onednn", rows, x.dtype), lambda: torch.ops.mkldnn._reorder_linear_weight(
            linear.weight.detach(), rows)), linear.bias, act or "none", [], algorithm or "")
    return ways


def _measure(ways: dict, rounds: int = 3) -> str:
    """The fastest of `ways` (name -> call) by the median of interleaved rounds."""
    times: dict = {name: [] for name in ways}
    for name, way in ways.items():
        way()  # packs its weight
    for _ in range(rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            times[name].append(time.perf_counter() - start)
    return min(times, key=lambda name: sorted(times[name])[rounds // 2])


def linear_act(linear: nn.Linear, x: torch.Tensor, act: str = "", algorithm: str = "") -> torch.Tensor:
    """act(linear(x)) the fastest of three ways, measured once per shape in this process (a table
    keyed by rows, features, activation, dtype and threads): torch's own linear, MKL's packed
    sgemm (what Inductor's freezing emits for float32) or oneDNN's linear with the activation as
    a post-op. The ways agree to float rounding."""
    if not isinstance(linear, nn.Linear) or not fusable(linear, x) or x.dim() < 2 or not x.is_contiguous():
        return _activation(linear(x), act, algorithm)
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    key = (x.shape[0], linear.in_features, linear.out_features, act, algorithm, x.dtype, torch.get_num_threads())
    ways = _linear_ways(linear, x, act, algorithm)
    if key not in _LINEAR_WAY:
        _LINEAR_WAY[key] = _measure(ways)
    return ways[_LINEAR_WAY[key]]().reshape(*shape[:-1], linear.out_features)
