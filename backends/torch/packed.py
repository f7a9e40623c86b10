"""An inference-only linear layer over a weight in a sparse or packed layout (`archc.sparsity.lower`).

`PackedLinear(weight, bias)` holds the weight (a CSR or BSR tensor, or one packed for 2:4 sparse
tensor cores by `torch.sparse.to_sparse_semi_structured`) and the bias as registered buffers, under
nn.Linear's names: they move with `.to()` / `.cuda()`, appear in `state_dict()`, and the module
pickles as any torch module does (a class defined at module level, not inside the function that
makes it). torch cannot deep-copy a CSR or BSR tensor (it has no storage to copy), so `deepcopy`
copies the buffers with `clone()` and everything else as usual. The forward is
`F.linear(x, weight, bias)`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W in a sparse or packed layout; no gradient (inference only)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach())
        self.register_buffer("bias", bias.detach() if bias is not None else None)

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __deepcopy__(self, memo: dict[int, Any]) -> "PackedLinear":
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k != "_buffers"}
        new.__dict__.update(copy.deepcopy(state, memo))
        new._buffers = {k: None if t is None else t.clone() for k, t in self._buffers.items()}
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{type(self.weight).__name__}, {self.weight.layout}")
