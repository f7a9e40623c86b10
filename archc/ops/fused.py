"""Ops that passes make from chains of other ops, so a backend runs the chain in fewer passes over
memory. Each is also an ordinary op a spec may write; its meaning is the chain it replaces."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, PositiveInt

from archc.ir.types import TensorType
from archc.ops.nn import Eps
from archc.ops.registry import Op, OpError, ParamSpec, known, need_float, need_rank, register


class _Attrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _pair(v: int | tuple[int, ...], what: str) -> tuple[int, int]:
    out = (v, v) if isinstance(v, int) else tuple(v)
    if len(out) != 2 or min(out) < 0:
        raise OpError(f"{what} needs one or two non-negative values, got {v}")
    return out  # type: ignore[return-value]


class PoolMixerAttrs(_Attrs):
    groups: PositiveInt = 1
    eps: Eps = 1e-5
    affine: bool = True
    kernel: int | tuple[int, int] = 3
    padding: int | tuple[int, int] = 1


@register
class PoolMixerResidual(Op):
    """PoolFormer's token-mixer branch and its residual (Yu et al. 2022, "MetaFormer is actually what
    you need for vision"): `x + scale * (avgpool(n) - n)` with `n = groupnorm(x)`, the pooling of
    stride 1 that keeps the size and leaves the padding out of the average (count_include_pad=false).
    `scale` is a per-channel gain ([C, 1, 1]: LayerScale). archc/passes/fuse_pool_mixer.py makes it
    at -O2. Because such a pooling of a per-channel affine map a*x + b is a*pool(x) + b, the branch
    is `x + scale * gamma * rstd * (avgpool(x) - x)`: the torch backend runs the normalization's
    statistics, one pooling of x and one lerp (backends/torch/fused.py)."""

    name = "pool_mixer_residual"
    inputs = ("x", "scale")
    Attrs = PoolMixerAttrs
    fresh = True

    def geometry(self, a: Any) -> tuple[tuple[int, int], tuple[int, int]]:
        k, p = _pair(a.kernel, f"{self.name} kernel"), _pair(a.padding, f"{self.name} padding")
        if any(kk <= 0 or 2 * pp != kk - 1 for kk, pp in zip(k, p)):
            raise OpError(f"{self.name}: the pooling must keep the size: an odd kernel and padding (kernel - 1) / 2, "
                          f"got kernel {list(k)} and padding {list(p)}")
        return k, p

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        x, scale = ins
        need_float(x, self.name)
        need_rank(x, 4, self.name, "[B, C, H, W]")
        self.geometry(a)
        c = known(x.sizes[1], f"{self.name}'s channels (axis 2)")
        if c % a.groups:
            raise OpError(f"{self.name}: groups={a.groups} must divide the {c} channels")
        if scale.dtype != x.dtype:
            raise OpError(f"{self.name}: scale must have the dtype of x ({x.dtype}), got {scale}")
        # right-aligned to [B, C, H, W]: one value per channel (or one for all), 1 elsewhere
        allowed = ((1,), (1, c), (1,), (1,))
        sizes = scale.sizes
        if scale.rank > 4 or any(not s.is_const or s.value not in allowed[4 - scale.rank + i]
                                 for i, s in enumerate(sizes)):
            raise OpError(f"{self.name}: scale must be one value per channel, [{c}, 1, 1], got {scale}")
        return [x]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        c = known(ins[0].sizes[1], "channels")
        return {"weight": ParamSpec((c,), "ones"), "bias": ParamSpec((c,), "zeros")} if a.affine else {}

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        k, p = self.geometry(a)
        return (f"pool_mixer_residual({ins[0]}, {ins[1]}, {params.get('weight', 'None')}, {params.get('bias', 'None')}, "
                f"{a.groups}, {a.eps}, {list(k)}, {list(p)})")
