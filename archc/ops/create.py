"""Ops that make a tensor of a given kind rather than compute new values: arange (positions from
sizes), cast (a dtype) and full (a constant)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from archc.ir.types import Dim, TensorType
from archc.ops.registry import Op, OpError, norm_dim, register
from archc.sizes import Size

# the dtypes arange may make, as torch names them
_TORCH_DTYPES = {"i64": "torch.int64", "i32": "torch.int32", "f32": "torch.float32", "f64": "torch.float64",
                 "f16": "torch.float16", "bf16": "torch.bfloat16"}


class ArangeAttrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    start: int = 0
    end: int | None = None  # None: the size of axis `dim` of the input
    step: int = Field(default=1, gt=0)
    dim: int = -1
    dtype: Literal["i64", "i32", "f32", "f64", "f16", "bf16"] = "i64"

    @model_validator(mode="after")
    def _bounded(self) -> "ArangeAttrs":
        if max(abs(self.start), abs(self.end or 0)) > 2**48:
            raise ValueError("start and end must be at most 2**48 in size")
        return self


@register
class Arange(Op):
    """`start, start + step, ...` below `end`, as torch.arange, on the device of the input `x`.

    Without `end`, the range counts the positions of axis `dim` of `x` (`arange(x, dim=1)` on
    `[B, T, D]` is `[T]`: 0 .. T-1), so a symbolic axis works; the output keeps that axis's name
    when it starts at 0 with step 1. `x` gives only its device and, without `end`, that size."""

    name = "arange"
    Attrs = ArangeAttrs
    fresh = True
    shape_only = True

    def _length(self, a: Any, t: TensorType) -> tuple[Size, str | None]:
        if a.end is not None:
            n = math.ceil((a.end - a.start) / a.step) if a.end > a.start else 0
            if n <= 0:
                raise OpError(f"arange: the range {a.start} to {a.end} (step {a.step}) is empty")
            return Size.of(n), None
        if t.rank == 0:
            raise OpError(f"arange without end counts the positions of an axis of its input, got {t}")
        d = norm_dim(a.dim, t.rank, self.name)
        size, label = t.sizes[d], t.shape[d].name
        if a.start == 0 and a.step == 1:
            return size, label
        if size.is_const:
            n = math.ceil((size.value - a.start) / a.step)
            if n <= 0:
                raise OpError(f"arange: the range {a.start} to {size.value} (step {a.step}) is empty")
            return Size.of(n), None
        if a.step != 1 or a.start < 0:
            raise OpError(f"arange: {a.start} to the symbolic size {size} in steps of {a.step} has a length "
                          "archc cannot state", hint="give `end` as a known size, or use step 1")
        return size - a.start, None

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        size, label = self._length(a, ins[0])
        return [TensorType(dtype=a.dtype, shape=(Dim(size=size, name=label),))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        t = types[0]
        end = str(a.end) if a.end is not None else f"{ins[0]}.shape[{norm_dim(a.dim, t.rank, self.name)}]"
        return (f"torch.arange({a.start}, {end}, {a.step}, dtype={_TORCH_DTYPES[a.dtype]}, "
                f"device={ins[0]}.device)")


class CastAttrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    dtype: Literal["f32", "f16", "bf16", "f64", "i64", "i32", "i8", "u8", "bool"] | None = None


@register
class Cast(Op):
    """`x` converted to `dtype`, or to the dtype of `like` (`cast(cos, q)`: Hugging Face's
    `cos.to(q.dtype)`, so tables computed in f32 meet a bf16 model in its dtype). The identity when
    the dtype is already x's."""

    name = "cast"
    inputs = ("x", "like?")
    Attrs = CastAttrs

    def _target(self, a: Any, ins: list[TensorType]) -> str:
        if (len(ins) == 2) == (a.dtype is not None):
            raise OpError("cast() takes a dtype or a tensor `like` whose dtype to take, one of them")
        return ins[1].dtype if len(ins) == 2 else a.dtype

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        return [ins[0].with_dtype(self._target(a, ins))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        if len(ins) == 2:
            return f"{ins[0]}.to({ins[1]}.dtype)"
        return f"{ins[0]}.to({_CAST_DTYPES[a.dtype]})"


_CAST_DTYPES = {**_TORCH_DTYPES, "i8": "torch.int8", "u8": "torch.uint8", "bool": "torch.bool"}


class FullAttrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    shape: tuple[int, ...]
    value: Annotated[float, Field(allow_inf_nan=False)] = 0.0
    dtype: Literal["f32", "f16", "bf16", "f64", "i64", "i32"] = "f32"

    @field_validator("shape")
    @classmethod
    def _sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 0 <= n <= 2**31 - 1 for n in v):
            raise ValueError("each size must be between 0 and 2**31 - 1")
        return v


@register
class Full(Op):
    """A tensor of `shape` filled with `value`, on the device of the input `x` (which gives only its
    device): `full(tokens, [2, 8])` starts an accumulator that a stack of layers adds to."""

    name = "full"
    Attrs = FullAttrs
    fresh = True
    shape_only = True

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        if len(a.shape) > 8:
            raise OpError(f"full: rank {len(a.shape)} is more than 8")
        return [TensorType(dtype=a.dtype, shape=tuple(Dim(size=Size.of(n)) for n in a.shape))]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return f"torch.full({tuple(a.shape)!r}, {a.value!r}, dtype={_CAST_DTYPES[a.dtype]}, device={ins[0]}.device)"
