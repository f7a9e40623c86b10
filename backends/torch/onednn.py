"""CPU inference with oneDNN, in plain PyTorch: a convolution or linear layer with its epilogue
(an activation, or an add and then an activation) as one call, on weights packed once per shape.

These are the calls that torch.compile's freezing path emits (torch/_inductor/fx_passes/
mkldnn_fusion.py): `mkldnn._reorder_convolution_weight` packs a convolution's weight for one input
shape and `mkldnn._convolution_pointwise` (`.binary`, in-place `_convolution_pointwise_.binary`)
runs it on a channels-last input with post-ops; `mkl._mkl_reorder_linear_weight` / `mkl._mkl_linear`
and `mkldnn._reorder_linear_weight` / `mkldnn._linear_pointwise` do the same for a linear layer.

This file needs only torch: the torch backend copies what follows the imports verbatim into a
generated module whose IR has CPU epilogue groups (-O2, archc/passes/mark_epilogues.py).
The packed weights are a cache beside the module (keyed by the weight, dropped with it), never
in its state_dict: they are made again when the weight changes (its version), for each input
shape, dtype and device. Where oneDNN does not apply -- training mode, autograd recording,
another device or dtype, a compiler tracing the module (torch.compile does its own fusion) --
the same function computes the plain layer and activation, so the module is correct everywhere.
"""

import weakref

import torch
import torch.nn.functional as F
from torch import nn

# oneDNN's post-op name -> the same activation in torch, for the unfused path
POSTOPS = {
    "relu": lambda x, algorithm: F.relu(x),
    "gelu": lambda x, algorithm: F.gelu(x, approximate=algorithm or "none"),
    "swish": lambda x, algorithm: F.silu(x),
    "sigmoid": lambda x, algorithm: torch.sigmoid(x),
    "tanh": lambda x, algorithm: torch.tanh(x),
}
_PACKED: dict = {}  # id(weight) -> key -> packed weight (an entry goes when its weight is collected)
_MAX_SHAPES = 8  # packed weights kept per layer
_MKLDNN = torch.backends.mkldnn.is_available()
_MIN_ROWS = 32  # a linear of fewer rows stays torch's: MKL's packed GEMV measured slower, and the call costs ~10 us


def fusable(training: bool, weight: torch.Tensor, x: torch.Tensor) -> bool:
    """May this call run on oneDNN? Inference on a CPU float32/bfloat16 tensor, outside a tracer."""
    if training or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    if x.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False  # no bf16 instructions here: oneDNN would emulate them slowly
    if weight.dtype != x.dtype or not _MKLDNN or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False  # a tracer (ONNX's TorchScript exporter too) records torch's own layers
    return not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))


def _packed(w: torch.Tensor, key: tuple, pack) -> torch.Tensor:
    """The weight packed for `key` (made by `pack()` on first use, again after the weight changed)."""
    if id(w) not in _PACKED:
        _PACKED[id(w)] = {}
        weakref.finalize(w, _PACKED.pop, id(w), None)
    cache = _PACKED[id(w)]
    # an inference tensor has no version counter (made under torch.inference_mode)
    key = (-1 if w.is_inference() else w._version, w.data_ptr()) + key
    if key not in cache:
        if len(cache) >= _MAX_SHAPES:
            cache.clear()
        cache[key] = pack()
    return cache[key]


def _activation(y: torch.Tensor, act: str, algorithm: str) -> torch.Tensor:
    return POSTOPS[act](y, algorithm) if act else y


def _plain_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list, padding: list,
                dilation: list, groups: int) -> torch.Tensor:
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _conv_shape(x: torch.Tensor, weight: torch.Tensor, stride: list, padding: list, dilation: list) -> torch.Size:
    """The shape of the convolution's output (an `other` of another shape would broadcast: the plain path)."""
    hw = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
          zip(x.shape[2:], padding, dilation, weight.shape[2:], stride)]
    return torch.Size([x.shape[0], weight.shape[0], *hw])


def conv2d_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list, padding: list,
               dilation: list, groups: int, act: str = "", algorithm: str = "", training: bool = False) -> torch.Tensor:
    """act(F.conv2d(x, ...)) as one oneDNN convolution with the activation as a post-op, channels-last
    (its output is channels-last too, so the next convolution reads it without a copy)."""
    if x.dim() != 4 or not fusable(training, weight, x):
        return _activation(_plain_conv(x, weight, bias, stride, padding, dilation, groups), act, algorithm)
    x = x.contiguous(memory_format=torch.channels_last)
    if not act and groups == x.shape[1] == weight.shape[0] > 1:
        # depthwise, alone: torch's own channels-last call beats the packed one (measured)
        return _plain_conv(x, weight, bias, stride, padding, dilation, groups)
    packed = _packed(weight, (tuple(x.shape), x.dtype), lambda: torch.ops.mkldnn._reorder_convolution_weight(
        weight.detach(), padding, stride, dilation, groups, list(x.shape)))
    return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, padding, stride, dilation, groups,
                                                   act or "none", [], algorithm)


def conv2d_add_act(x: torch.Tensor, other: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: list, padding: list, dilation: list, groups: int, act: str = "", algorithm: str = "",
                   overwrite: bool = False, training: bool = False) -> torch.Tensor:
    """act(F.conv2d(x, ...) + other) as one oneDNN convolution with the add and the activation as
    post-ops; with `overwrite` (other is read by nothing else) the result is written into `other`
    (oneDNN's sum post-op), as timm's ResNet does with `x += shortcut`."""
    if x.dim() != 4 or not fusable(training, weight, x) or other.dtype != x.dtype or \
            other.shape != _conv_shape(x, weight, stride, padding, dilation):
        return _activation(_plain_conv(x, weight, bias, stride, padding, dilation, groups) + other, act, algorithm)
    x = x.contiguous(memory_format=torch.channels_last)
    packed = _packed(weight, (tuple(x.shape), x.dtype), lambda: torch.ops.mkldnn._reorder_convolution_weight(
        weight.detach(), padding, stride, dilation, groups, list(x.shape)))
    if overwrite and other.is_contiguous(memory_format=torch.channels_last) and not other.requires_grad:
        return torch.ops.mkldnn._convolution_pointwise_.binary(other, x, packed, bias, padding, stride, dilation,
                                                               groups, "add", 1.0, act or None, [], algorithm or None)
    return torch.ops.mkldnn._convolution_pointwise.binary(x, other, packed, bias, padding, stride, dilation, groups,
                                                          "add", 1.0, act or None, [], algorithm or None)


def _conv_module(conv: nn.Module) -> tuple | None:
    """An nn.Conv2d's arguments (weight, bias, stride, padding, dilation, groups), or None if oneDNN's
    call does not take them (another padding mode, padding by name)."""
    if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return conv.weight, conv.bias, list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups


def conv_act(conv: nn.Conv2d, x: torch.Tensor, act: str = "", algorithm: str = "") -> torch.Tensor:
    """act(conv(x)): conv2d_act on the layer's own weights."""
    args = _conv_module(conv)
    if args is None:
        return _activation(conv(x), act, algorithm)
    return conv2d_act(x, *args, act, algorithm, training=conv.training)


def conv_add_act(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor, act: str = "", algorithm: str = "",
                 overwrite: bool = False) -> torch.Tensor:
    """act(conv(x) + other): conv2d_add_act on the layer's own weights."""
    args = _conv_module(conv)
    if args is None:
        return _activation(conv(x) + other, act, algorithm)
    return conv2d_add_act(x, other, *args, act, algorithm, overwrite=overwrite, training=conv.training)


# an activation in place on a tensor nothing else holds (the GEMM's fresh output): no second buffer
POSTOPS_INPLACE = {
    "relu": lambda y, algorithm: torch.relu_(y),
    "gelu": lambda y, algorithm: torch.ops.aten.gelu_(y, approximate=algorithm or "none"),
    "swish": lambda y, algorithm: torch.ops.aten.silu_(y),
    "sigmoid": lambda y, algorithm: torch.sigmoid_(y),
    "tanh": lambda y, algorithm: torch.tanh_(y),
}


def linear_act(linear: nn.Linear, x: torch.Tensor, act: str = "", algorithm: str = "") -> torch.Tensor:
    """act(linear(x)) on a weight packed for the number of rows, as Inductor's freezing emits it:
    float32 as MKL's packed sgemm and then the activation in place (oneDNN's GELU post-op measured
    slower than torch's GELU after the GEMM on this CPU: 4.9 against 4.2 ms for ConvNeXt-T's 784x192x768),
    bfloat16 as oneDNN's linear with the activation as a post-op. Fewer than _MIN_ROWS rows (a
    decoding step): torch's own linear."""
    if not isinstance(linear, nn.Linear):
        return _activation(linear(x), act, algorithm)
    w, b = linear.weight, linear.bias
    rows = x.numel() // x.shape[-1] if x.dim() >= 2 and x.shape[-1] else 0
    if rows < _MIN_ROWS or not x.is_contiguous() or not fusable(linear.training, w, x) or \
            (x.dtype == torch.float32 and not torch._C.has_mkl):
        return _activation(F.linear(x, w, b), act, algorithm)
    shape = x.shape
    x = x.view(rows, shape[-1]) if x.dim() > 2 else x
    if x.dtype == torch.float32:
        y = torch.ops.mkl._mkl_linear(x, _packed(w, ("mkl", rows), lambda: torch.ops.mkl._mkl_reorder_linear_weight(
            w.detach(), rows)), w, b, rows)
        y = POSTOPS_INPLACE[act](y, algorithm) if act else y
    else:
        y = torch.ops.mkldnn._linear_pointwise(x, _packed(w, ("onednn", rows, x.dtype), lambda: torch.ops.mkldnn.
                                               _reorder_linear_weight(w.detach(), rows)), b, act or "none", [],
                                               algorithm or "")
    return y.view(*shape[:-1], y.shape[-1]) if len(shape) > 2 else y
