"""Tensor types: a dtype and a shape of named, symbolic axes.

A `Dim` is a size (`Size`: an int, a symbol such as `B`, or an expression such as `4*D`) and an
optional axis name for display (`D`). Two types are equal when dtypes and sizes are equal; names
are labels, as wires are labelled in a Neural Circuit Diagram.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator

from archc.sizes import Size, SizeError, parse_size

DTYPES = ("f32", "f16", "bf16", "f64", "i64", "i32", "i8", "u8", "bool")
FLOAT_DTYPES = ("f32", "f16", "bf16", "f64")


def _to_size(v: Any) -> Size:
    if isinstance(v, Size):
        return v
    if isinstance(v, bool):
        raise ValueError("a size cannot be a bool")
    if isinstance(v, (int, str)):
        try:
            return parse_size(v)
        except SizeError as e:
            raise ValueError(str(e)) from None
    raise ValueError(f"not a size: {v!r}")


SizeField = Annotated[Size, PlainValidator(_to_size), PlainSerializer(lambda s: s.to_json())]


class Dim(BaseModel):
    model_config = ConfigDict(frozen=True)
    size: SizeField
    name: str | None = None

    def __str__(self) -> str:
        size = str(self.size)
        if self.name is None or self.name == size:
            return size
        return f"{self.name}={size}" if self.size.is_const else self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dim) and self.size == other.size

    def __hash__(self) -> int:
        return hash(self.size)


class TensorType(BaseModel):
    model_config = ConfigDict(frozen=True)
    dtype: str = "f32"
    shape: tuple[Dim, ...] = ()

    @staticmethod
    def of(dtype: str, sizes: list[Size | int], names: list[str | None] | None = None) -> "TensorType":
        names = names or [None] * len(sizes)
        return TensorType(dtype=dtype, shape=tuple(Dim(size=Size.of(s), name=n) for s, n in zip(sizes, names)))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def sizes(self) -> tuple[Size, ...]:
        return tuple(d.size for d in self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def numel(self) -> Size:
        out = Size.of(1)
        for s in self.sizes:
            out = out * s
        return out

    def with_shape(self, sizes: list[Size], names: list[str | None] | None = None) -> "TensorType":
        return TensorType.of(self.dtype, list(sizes), names)

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(dtype=dtype, shape=self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    def sizes_str(self) -> str:
        return f"[{', '.join(str(d.size) for d in self.shape)}]"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorType) and self.dtype == other.dtype and self.sizes == other.sizes

    def __hash__(self) -> int:
        return hash((self.dtype, self.sizes))
