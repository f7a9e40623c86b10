"""Numeric checks: does a computed tensor match a reference, within absolute and relative tolerances?

As `torch.testing.assert_close`: an element is close when |got - want| <= atol + rtol * |want|, so one
tolerance serves logits near 1e-3 and near 1e4 (float32 rounding grows with the values), except that
|want| counts as at least the output's root mean square: an element near zero that is the sum of terms
near 1e4 carries their rounding (about 1e-3), not its own. A NaN or an infinity on either side is never
close, and neither are tensors of different shapes. Used by
`archc deploy` (train-time vs deployed model) and by the ONNX check (onnxruntime vs torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from torch import Tensor

ATOL = 1e-4
RTOL = 1e-4


@dataclass(frozen=True)
class Closeness:
    """How far `got` is from `want` over every element compared."""

    atol: float
    rtol: float
    max_abs: float = 0.0  # the largest |got - want| (NaN when a difference is NaN)
    worst_abs: float = 0.0  # the element furthest past its allowance: its |got - want| ...
    worst_want: float = 0.0  # ... and |want| there (not raised to the RMS)
    worst_ratio: float = 0.0  # |got - want| / (atol + rtol * |want|) there: <= 1 when all are close
    not_finite: int = 0  # elements where got, want or their difference is NaN or infinite
    shape_mismatch: str = ""

    @property
    def ok(self) -> bool:
        return not self.not_finite and not self.shape_mismatch and self.worst_ratio <= 1.0

    @property
    def max_rel(self) -> float:
        """|got - want| / |want| at the worst element (0 where both are 0)."""
        return self.worst_abs / self.worst_want if self.worst_want else (0.0 if not self.worst_abs else math.inf)

    def describe(self) -> str:
        """One line: the max error and what was allowed."""
        if self.shape_mismatch:
            return f"the outputs' shapes differ ({self.shape_mismatch})"
        if self.not_finite:
            return f"{self.not_finite} output element(s) are NaN or infinite"
        return (f"max abs error {self.max_abs:.3g}; the worst element is off by {self.worst_abs:.3g} where the "
                f"reference is {self.worst_want:.3g} (allowed: {self.atol:g} + {self.rtol:g} * max(|reference|, its output's RMS))")


def compare(pairs: Iterable[tuple["Tensor", "Tensor"]], atol: float = ATOL, rtol: float = RTOL) -> Closeness:
    """Compare each (got, want) pair elementwise, in float64."""
    import torch

    out = Closeness(atol, rtol)
    for got, want in pairs:
        got, want = torch.as_tensor(got), torch.as_tensor(want)
        if got.shape != want.shape:
            return Closeness(atol, rtol, shape_mismatch=f"{list(got.shape)} vs {list(want.shape)}")
        if got.numel() == 0:
            continue
        g, w = got.detach().double().cpu(), want.detach().double().cpu()
        diff = (g - w).abs()
        bad = ~torch.isfinite(diff) | ~torch.isfinite(g) | ~torch.isfinite(w)
        n_bad = int(bad.sum())
        allowed = atol + rtol * w.abs().clamp_min(float(w.pow(2).mean().sqrt()) if n_bad == 0 else 0.0)
        zero, inf = torch.zeros_like(diff), torch.full_like(diff, math.inf)
        ratio = torch.where(allowed > 0, diff / torch.where(allowed > 0, allowed, 1.0), torch.where(diff == 0, zero, inf))
        ratio = torch.where(bad, zero, ratio)  # counted in not_finite
        i = int(ratio.flatten().argmax())
        worst = float(ratio.flatten()[i])
        max_abs = math.nan if n_bad else float(diff.max())
        out = Closeness(
            atol, rtol,
            max_abs=max_abs if math.isnan(max_abs) or math.isnan(out.max_abs) else max(out.max_abs, max_abs),
            worst_abs=float(diff.flatten()[i]) if worst > out.worst_ratio else out.worst_abs,
            worst_want=float(w.abs().flatten()[i]) if worst > out.worst_ratio else out.worst_want,
            worst_ratio=max(out.worst_ratio, worst),
            not_finite=out.not_finite + n_bad)
    return out


__all__ = ["ATOL", "RTOL", "Closeness", "compare"]
