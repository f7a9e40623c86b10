"""Tensor types: a dtype and a shape of named, symbolic axes.

A `Dim` is a size (`Size`: an int, a symbol such as `B`, or an expression such as `4*D`) and an
optional axis name for display (`D`). Two types are equal when dtypes and sizes are equal; names
are labels, as wires are labelled in a Neural Circuit Diagram.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator

from archc.sizes import _TOKEN, Size, SizeError, parse_size

DTYPES = ("f32", "f16", "bf16", "f64", "i64", "i32", "i8", "u8", "bool")
FLOAT_DTYPES = ("f32", "f16", "bf16", "f64")
DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i64": 8, "i32": 4, "i8": 1, "u8": 1, "bool": 1}

# Bounds on a size written as text (an IR file): parsing one is then bounded work, whatever the file.
# archc prints powers only of atoms (`D^2`) and sizes of a few terms; these are far above that.
MAX_SIZE_TEXT = 1000  # characters
MAX_SIZE_POWER = 64  # the exponent in `B^n`
MAX_SIZE_TERMS = 64  # terms of the size, as an upper bound computed from the text before parsing
MAX_SIZE_NESTING = 32  # parentheses (and floor(...)) inside one another
MAX_SIZE_DIGITS = 19  # a number's digits (sizes are below 2**62)


def check_size_text(text: str) -> None:
    """Raise ValueError if parsing `text` as a size could take unbounded work: too long, nested
    too deep (Python's recursion), a huge exponent (`B^99999999999` multiplies that many times),
    a number of thousands of digits, or a polynomial that multiplies out to too many terms
    (`(A+B+C+D)^8`). Checked before `parse_size` sees the text."""
    if len(text) > MAX_SIZE_TEXT:
        raise ValueError(f"size text is longer than {MAX_SIZE_TEXT} characters")
    tokens = [tok for tok in _TOKEN.findall(text) if any(part.strip() for part in tok)]
    depth = run = 0
    for num, floor, _name, other in tokens:
        depth += 1 if floor or other == "(" else -1 if other == ")" else 0
        if depth > MAX_SIZE_NESTING:
            raise ValueError(f"size '{text[:40]}...' nests parentheses deeper than {MAX_SIZE_NESTING}")
        run = run + 1 if other == "-" else 0
        if run > 2:
            raise ValueError(f"cannot parse size '{text[:40]}': too many signs in a row")
        if num and len(num) > MAX_SIZE_DIGITS:
            raise ValueError(f"size '{text[:40]}...' holds a number of more than {MAX_SIZE_DIGITS} digits")
    _TermBound(text, [num or floor or name or other.strip() for num, floor, name, other in tokens]).check()


class _TermBound:
    """An upper bound on the terms each part of a size text multiplies out to, following the
    grammar of `archc.sizes.parse_size` without computing anything; a text it cannot follow is
    left for `parse_size` to refuse."""

    def __init__(self, text: str, tokens: list[str]) -> None:
        self.text, self.tokens, self.pos = text, tokens, 0

    def check(self) -> None:
        try:
            self.expr()
        except IndexError:
            pass  # malformed: parse_size says so

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        self.pos += 1
        return self.tokens[self.pos - 1]

    def bound(self, n: int) -> int:
        if n > MAX_SIZE_TERMS:
            raise ValueError(f"size '{self.text[:40]}' multiplies out to more than {MAX_SIZE_TERMS} terms")
        return n

    def expr(self) -> int:
        n = self.term()
        while self.peek() in ("+", "-"):
            self.take()
            n = self.bound(n + self.term())
        return n

    def term(self) -> int:
        n = self.factor()
        while self.peek() in ("*", "/"):
            n = self.bound(n * self.factor()) if self.take() == "*" else max(n, self.factor())
        return n

    def factor(self) -> int:
        if self.peek() == "-":
            self.take()
            return self.factor()
        n = self.atom()
        if self.peek() == "^":
            self.take()
            power = self.take()
            if not power.isdigit():
                return n  # parse_size refuses it
            if int(power) > MAX_SIZE_POWER:
                raise ValueError(f"size '{self.text[:40]}' has a power above {MAX_SIZE_POWER}")
            n = self.bound(n ** int(power))  # n <= 64 and power <= 64: a small computation
        return n

    def atom(self) -> int:
        tok = self.take()
        if tok in ("floor(", "("):
            n = self.expr()
            if tok == "floor(" and self.peek() == ",":
                self.take()
                self.take()
            if self.peek() == ")":
                self.take()
            return n
        return 1


def _to_size(v: Any) -> Size:
    if isinstance(v, Size):
        return v
    if isinstance(v, bool):
        raise ValueError("a size cannot be a bool")
    if isinstance(v, (int, str)):
        try:
            if isinstance(v, str):
                check_size_text(v)
            return parse_size(v)
        except (SizeError, ArithmeticError, RecursionError) as e:
            raise ValueError(str(e) or type(e).__name__) from None
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
