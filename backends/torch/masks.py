"""Sparse weights in plain PyTorch: masks by magnitude, one function per pattern (archc/ir/sparsity.py
says what each means), and torch's layers computing with `weight * weight_mask`.

This file needs only torch: the torch backend copies what follows the imports verbatim into a
generated module whose spec has `@sparse`, and `archc.sparsity` imports the functions to prune
trained weights, so both compute the same masks. Each mask function returns a bool tensor of the
weight's shape, True where the weight is kept; `within` restricts the choice to the weights still
kept (iterative pruning prunes the remaining ones). Ties between equal magnitudes go to the lower
index (a stable sort), on every device.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _rank_keep(score: torch.Tensor, k: int) -> torch.Tensor:
    """True at the `k` largest scores of each row (ties: the lower index first)."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, order, True)


def nm_mask(weight: torch.Tensor, n: float, m: float, within: torch.Tensor | None = None) -> torch.Tensor:
    """N:M: the `n` largest |w| of each `m` consecutive weights along the input channels (for a
    convolution [out, in, *kernel], along `in` at each kernel position)."""
    n, m = int(n), int(m)
    score = weight.detach().abs().float()
    if within is not None:
        score = score.masked_fill(~within, -1.0)
    conv = score.dim() > 2
    if conv:
        score = score.movedim(1, -1)  # [out, *kernel, in]
    keep = _rank_keep(score.reshape(-1, m), n).reshape(score.shape)
    keep = keep.movedim(-1, 1) if conv else keep
    return keep if within is None else keep & within


def magnitude_mask(weight: torch.Tensor, density: float, within: torch.Tensor | None = None) -> torch.Tensor:
    """Unstructured: the `round(density * numel)` largest |w| of the whole weight."""
    score = weight.detach().abs().float().reshape(1, -1)
    if within is not None:
        score = score.masked_fill(~within.reshape(1, -1), -1.0)
    return _rank_keep(score, round(density * score.numel())).reshape(weight.shape)


def block_mask(weight: torch.Tensor, rows: float, cols: float, density: float,
               within: torch.Tensor | None = None) -> torch.Tensor:
    """Blocks: the weight as an [out, in * kernel] matrix in `rows` x `cols` tiles; keep the
    `round(density * tiles)` tiles of largest L1 norm, whole."""
    rows, cols = int(rows), int(cols)
    w = weight.detach().abs().float().reshape(weight.shape[0], -1)
    r, c = w.shape[0] // rows, w.shape[1] // cols
    score = w.reshape(r, rows, c, cols).sum(dim=(1, 3)).reshape(1, -1)
    if within is not None:
        alive = within.reshape(r, rows, c, cols).any(dim=3).any(dim=1).reshape(1, -1)
        score = score.masked_fill(~alive, -1.0)
    tiles = _rank_keep(score, round(density * score.numel())).reshape(r, 1, c, 1)
    keep = tiles.expand(r, rows, c, cols).reshape(weight.shape)
    return keep if within is None else keep & within


class _Masked:
    """A torch layer that computes with `weight * weight_mask` (a bool buffer, True where a weight is
    kept): a sparse weight. Its parent's reset_parameters makes the mask from the weight."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", torch.ones_like(self.weight, dtype=torch.bool))


class MaskedLinear(_Masked, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.weight_mask, self.bias)


class MaskedConv1d(_Masked, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.weight_mask, self.bias)


class MaskedConv2d(_Masked, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.weight_mask, self.bias)
