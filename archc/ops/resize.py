"""Ops that change the extent of spatial axes without parameters: pad and interpolate."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from archc.ir.types import Dim, TensorType
from archc.ops.registry import Op, OpError, need_float, register
from archc.sizes import Size


class _Attrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PadAttrs(_Attrs):
    pads: tuple[int, ...]
    mode: Literal["constant", "reflect", "replicate", "circular"] = "constant"
    value: float = Field(default=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _shape(self) -> "PadAttrs":
        if not self.pads or len(self.pads) % 2:
            raise ValueError(f"pads needs pairs (before, after) per axis, last axis first, got {list(self.pads)}")
        if min(self.pads) < 0 or max(self.pads) > 2**31 - 1:
            raise ValueError(f"pads must be between 0 and 2**31 - 1, got {list(self.pads)}")
        if self.mode != "constant" and self.value != 0.0:
            raise ValueError(f"value applies to mode \"constant\" only, not \"{self.mode}\"")
        return self


@register
class Pad(Op):
    """torch.nn.functional.pad: `pads` = (before, after) for the last axis, then the one before it,
    ...; "reflect", "replicate" and "circular" pad the last 1-3 axes of [B, C, ...]."""

    name = "pad"
    Attrs = PadAttrs
    fresh = True

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        n = len(a.pads) // 2
        if n > t.rank:
            raise OpError(f"pad: {len(a.pads)} pads name {n} axes, the input {t} has {t.rank}")
        if a.mode != "constant":
            need_float(t, self.name)
            if n > 3 or t.rank not in (n + 1, n + 2):
                raise OpError(f"pad: mode \"{a.mode}\" pads the last 1-3 axes of [B, C, ...] or [C, ...]; "
                              f"padding {n} of the axes of {t} is not a case torch has")
        dims = list(t.shape)
        for i in range(n):
            before, after = a.pads[2 * i], a.pads[2 * i + 1]
            axis = t.rank - 1 - i
            size = t.sizes[axis]
            if a.mode in ("reflect", "circular") and max(before, after) > 0:
                limit = size.value - (1 if a.mode == "reflect" else 0) if size.is_const else None
                if limit is None:
                    raise OpError(f"pad: mode \"{a.mode}\" needs a known size for axis {axis + 1}, got {size}")
                if max(before, after) > limit:
                    raise OpError(f"pad: mode \"{a.mode}\" pads axis {axis + 1} of size {size} by at most {limit}, "
                                  f"got {max(before, after)}")
            if before or after:
                dims[axis] = Dim(size=size + (before + after))
        return [TensorType(dtype=t.dtype, shape=tuple(dims))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        value = f", value={a.value!r}" if a.mode == "constant" and a.value else ""
        return f"F.pad({ins[0]}, {tuple(a.pads)!r}, mode={a.mode!r}{value})"


class InterpolateAttrs(_Attrs):
    scale: int | None = None
    size: int | tuple[int, ...] | None = None
    mode: Literal["nearest", "bilinear"] = "nearest"
    align_corners: bool = False

    @model_validator(mode="after")
    def _one(self) -> "InterpolateAttrs":
        if (self.scale is None) == (self.size is None):
            raise ValueError("give one of scale (an integer factor) and size")
        if self.scale is not None and not 0 < self.scale <= 2**16:
            raise ValueError(f"scale must be between 1 and {2**16}, got {self.scale}")
        sizes = (self.size,) if isinstance(self.size, int) else self.size or ()
        if any(not 0 < s <= 2**31 - 1 for s in sizes) or (self.size is not None and not sizes):
            raise ValueError(f"size must be positive, got {self.size}")
        if self.align_corners and self.mode == "nearest":
            raise ValueError("align_corners applies to mode \"bilinear\" only")
        return self


@register
class Interpolate(Op):
    """Upsampling (or resizing) of the spatial axes of [B, C, ...] as torch.nn.functional.interpolate:
    "nearest" for 1-3 spatial axes, "bilinear" for [B, C, H, W]; by an integer `scale` or to `size`."""

    name = "interpolate"
    Attrs = InterpolateAttrs

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        spatial = t.rank - 2
        if a.mode == "bilinear" and spatial != 2:
            raise OpError(f"interpolate: mode \"bilinear\" expects [B, C, H, W], got {t}")
        if not 1 <= spatial <= 3:
            raise OpError(f"interpolate expects [B, C, ...] with 1 to 3 spatial axes, got {t}")
        if a.size is not None:
            size = (a.size,) * spatial if isinstance(a.size, int) else tuple(a.size)
            if len(size) != spatial:
                raise OpError(f"interpolate: size {list(size)} needs {spatial} values for {t}")
            out = tuple(Dim(size=Size.of(s)) for s in size)
        else:
            out = tuple(Dim(size=s * a.scale) for s in t.sizes[2:])
        return [TensorType(dtype=t.dtype, shape=t.shape[:2] + out)]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        how = f"size={a.size!r}" if a.size is not None else f"scale_factor={float(a.scale)!r}"
        corners = f", align_corners={a.align_corners}" if a.mode == "bilinear" else ""
        return f"F.interpolate({ins[0]}, {how}, mode={a.mode!r}{corners})"
