"""Fused elementwise chains (archc/ops/fused.py), in plain PyTorch: fewer passes over memory and
fewer calls than the chain they replace, the chain itself where the shortcut does not apply.

This file needs only torch: the torch backend copies what follows the imports verbatim into a
generated module whose IR has such an op (-O2, archc/passes/fuse_pool_mixer.py).
"""

import torch
import torch.nn.functional as F


def _pool_mixer_plain(x: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      groups: int, eps: float, kernel: list, padding: list) -> torch.Tensor:
    n = F.group_norm(x, groups, weight, bias, eps)
    return x + (F.avg_pool2d(n, kernel, 1, padding, count_include_pad=False) - n) * scale


def pool_mixer_residual(x: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                        groups: int, eps: float, kernel: list, padding: list) -> torch.Tensor:
    """x + scale * (avgpool(n) - n), n = group_norm(x): PoolFormer's token mixer and its residual.

    A pooling that leaves the padding out of the average is the mean of the window's own values,
    so it maps a per-channel affine n = a * x + b (a = gamma * rstd, b = beta - a * mean) to
    a * pool(x) + b; `pool(n) - n` is a * (pool(x) - x), and the whole branch is
    lerp(x, pool(x), scale * a): the normalization's statistics, one pooling, one lerp written into
    the pooling's buffer, where the chain normalizes, pools, subtracts, scales and adds. Inference
    only (no autograd, no tracing: a compiler fuses the chain itself, an exporter records it)."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or
                                              (weight is not None and weight.requires_grad))
    if needs_grad or torch.compiler.is_compiling() or torch.jit.is_tracing() or x.dim() != 4 or \
            not x.is_floating_point():
        return _pool_mixer_plain(x, scale, weight, bias, groups, eps, kernel, padding)
    b, c = x.shape[0], x.shape[1]
    _, _, rstd = torch.native_group_norm(x, None, None, b, c, x.numel() // max(b * c, 1), groups, eps)
    a = rstd.to(x.dtype).repeat_interleave(c // groups, 1) if groups > 1 else rstd.to(x.dtype)
    a = a.view(b, -1, 1, 1) * scale.reshape(-1, 1, 1)
    if weight is not None:
        a = a * weight.view(-1, 1, 1)
    pooled = F.avg_pool2d(x, kernel, 1, padding, count_include_pad=False)
    return torch.lerp(x, pooled, a.to(x.dtype), out=pooled)
