"""Pooling and reductions over [B, C, H, W] (and mean over any axes)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from archc.ir.types import Dim, TensorType
from archc.ops.registry import Op, OpError, known, need_float, need_rank, norm_dim, register
from archc.sizes import Size


class _Attrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _two(v: int | tuple[int, ...], what: str) -> tuple[int, int]:
    out = (v, v) if isinstance(v, int) else tuple(v)
    if len(out) != 2 or min(out) < 0:
        raise OpError(f"{what} needs one or two non-negative values, got {v}")
    return out  # type: ignore[return-value]


def _pooled(size: Size, k: int, s: int, p: int, d: int, ceil: bool) -> Size:
    span = size + (2 * p - d * (k - 1) - 1)
    if not ceil:
        return span // s + 1
    out = (span + (s - 1)) // s + 1
    # PyTorch: the last window must start inside the input or left padding
    if out.is_const and size.is_const and (out.value - 1) * s >= size.value + p:
        out = out - 1
    return out


class PoolAttrs(_Attrs):
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: int | tuple[int, int] = 0
    ceil_mode: bool = False
    count_include_pad: bool = True  # avgpool only: divide by the full window, padding included


class _Pool(Op):
    Attrs = PoolAttrs
    kind = "avg"

    def geometry(self, a: Any) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        k = _two(a.kernel, f"{self.name} kernel")
        s = _two(a.stride if a.stride is not None else a.kernel, f"{self.name} stride")
        p = _two(a.padding, f"{self.name} padding")
        if min(k) <= 0 or min(s) <= 0:
            raise OpError(f"{self.name}: kernel and stride must be positive")
        if max(k + s) > 2**31 - 1:
            raise OpError(f"{self.name}: kernel and stride must be at most {2**31 - 1}")
        if any(pp > kk // 2 for pp, kk in zip(p, k)):
            raise OpError(f"{self.name}: padding {p} must be at most half the kernel {k}")
        return k, s, p

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        need_rank(t, 4, self.name, "[B, C, H, W]")
        k, s, p = self.geometry(a)
        spatial = []
        for size, kk, ss, pp in zip(t.sizes[2:], k, s, p):
            out = _pooled(size, kk, ss, pp, 1, a.ceil_mode)
            if out.is_const and out.value <= 0:
                raise OpError(f"{self.name}: window {kk} does not fit an axis of size {size}")
            spatial.append(Dim(size=out))
        return [TensorType(dtype=t.dtype, shape=t.shape[:2] + tuple(spatial))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        k, s, p = self.geometry(a)
        extra = f", count_include_pad={a.count_include_pad}" if self.kind == "avg" else ""
        return f"F.{self.kind}_pool2d({ins[0]}, {k}, {s}, {p}, ceil_mode={a.ceil_mode}{extra})"


@register
class AvgPool2d(_Pool):
    name = "avgpool2d"
    linear = True
    kind = "avg"


@register
class MaxPool2d(_Pool):
    name = "maxpool2d"
    kind = "max"


class AdaptiveAttrs(_Attrs):
    size: int | tuple[int, int]


@register
class AdaptiveAvgPool2d(Op):
    name = "adaptive_avgpool2d"
    Attrs = AdaptiveAttrs
    linear = True

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        need_rank(t, 4, self.name, "[B, C, H, W]")
        h, w = _two(a.size, "adaptive_avgpool2d size")
        if min(h, w) <= 0:
            raise OpError(f"adaptive_avgpool2d: output size {a.size} must be positive")
        return [TensorType(dtype=t.dtype, shape=t.shape[:2] + (Dim(size=Size.of(h)), Dim(size=Size.of(w))))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return f"F.adaptive_avg_pool2d({ins[0]}, {_two(a.size, 'size')})"


class GlobalAttrs(_Attrs):
    keepdim: bool = False


@register
class GlobalAvgPool(Op):
    """Mean over every axis after the channels: [B, C, H, W] -> [B, C]."""

    name = "global_avgpool"
    Attrs = GlobalAttrs
    linear = True

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        if t.rank < 3:
            raise OpError(f"global_avgpool expects [B, C, ...spatial], got {t}")
        if a.keepdim:
            return [TensorType(dtype=t.dtype, shape=t.shape[:2] + (Dim(size=Size.of(1)),) * (t.rank - 2))]
        return [TensorType(dtype=t.dtype, shape=t.shape[:2])]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        dims = tuple(range(2, types[0].rank))
        return f"{ins[0]}.mean({dims}, keepdim={a.keepdim})"


class MeanAttrs(_Attrs):
    dims: tuple[int, ...]
    keepdim: bool = False


@register
class Mean(Op):
    name = "mean"
    Attrs = MeanAttrs
    linear = True

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        dims = {norm_dim(d, t.rank, self.name) for d in a.dims}
        if len(dims) != len(a.dims):
            raise OpError(f"mean: an axis appears twice in dims={list(a.dims)}")
        shape = tuple(Dim(size=Size.of(1)) if i in dims else d for i, d in enumerate(t.shape)
                      if a.keepdim or i not in dims)
        return [TensorType(dtype=t.dtype, shape=shape)]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return f"{ins[0]}.mean({tuple(a.dims)}, keepdim={a.keepdim})"


__all__ = ["known"]
