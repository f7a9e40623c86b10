"""Symbolic axis sizes: integer polynomials over named symbols, with exact division.

A size is `768`, `B`, `4*D`, `H/2`, `B*T` or `T+1`. Sizes are kept in a canonical form (a map
from monomials to rational coefficients), so two sizes are equal exactly when their canonical
texts are equal. Floor division that is not exact on a symbolic size becomes an opaque atom
`floor(E, k)`, which keeps conv arithmetic on symbolic inputs honest instead of wrong.

    >>> str(Size.sym("D") * 4), str(Size.sym("H") / 2), str(Size.of(7) // 2)
    ('4*D', 'H/2', '3')
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Mapping, Union

Monomial = tuple[tuple[str, int], ...]  # sorted (atom, power); () is the constant term
Coef = Union[int, Fraction]  # int whenever the value is whole: most sizes never need a Fraction
IntLike = Union[int, "Size"]
MAX_INT = 2**62  # sizes beyond this are a spec error, not an arbitrary-precision hang
# A size polynomial is small: a product of sums such as (A0+1)*(A1+1)*...*(A15+1) has 2**16 terms, and
# squaring an axis 40 times makes S**(2**40). Both stop where they are built, in a few milliseconds.
MAX_TERMS = 256
MAX_DEGREE = 128


class SizeError(ValueError):
    """An arithmetic mistake on sizes (inexact division, overflow); callers add a span."""


def _q(c: Coef) -> Coef:
    """A coefficient in its simplest form: a whole Fraction becomes an int."""
    return c.numerator if isinstance(c, Fraction) and c.denominator == 1 else c


def _mul_mono(a: Monomial, b: Monomial) -> Monomial:
    powers: dict[str, int] = dict(a)
    for atom, p in b:
        powers[atom] = powers.get(atom, 0) + p
    return tuple(sorted(powers.items()))


class Size:
    __slots__ = ("terms", "_key", "_text")

    def __init__(self, terms: Mapping[Monomial, Coef]) -> None:
        self.terms: dict[Monomial, Coef] = {m: _q(c) for m, c in terms.items() if c != 0}
        if len(self.terms) > MAX_TERMS:
            raise SizeError(f"size has {len(self.terms)} terms, more than the limit of {MAX_TERMS}")
        if any(c > MAX_INT or c < -MAX_INT for c in self.terms.values()):
            raise SizeError("size is too large (over 2**62)")
        for m in self.terms:
            if len(m) > 1 or (m and m[0][1] > 1):
                degree = sum(p for _, p in m)
                if degree > MAX_DEGREE:
                    raise SizeError(f"size has a term of degree {degree}, more than the limit of {MAX_DEGREE}")
        self._key = tuple(sorted(self.terms.items()))
        self._text: str | None = None  # str(self), computed once: types print their sizes often

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def of(value: IntLike) -> "Size":
        if isinstance(value, Size):
            return value
        cached = _CONSTANTS.get(value) if isinstance(value, int) else None
        if cached is not None:
            return cached
        return Size({(): value})

    @staticmethod
    def sym(name: str) -> "Size":
        return Size({((name, 1),): 1})

    # -- queries -----------------------------------------------------------------------------
    @property
    def is_const(self) -> bool:
        return all(m == () for m in self.terms)

    @property
    def value(self) -> int:
        """The integer value of a constant size (raises SizeError if symbolic or fractional)."""
        if not self.is_const:
            raise SizeError(f"size '{self}' is not a known integer")
        c = self.terms.get((), 0)
        if isinstance(c, Fraction):
            raise SizeError(f"size '{self}' is not an integer")
        return c

    def atoms(self) -> set[str]:
        return {a for m in self.terms for a, _ in m}

    def subs(self, env: Mapping[str, "Size"]) -> "Size":
        if not env or not (self.atoms() & env.keys()):
            return self
        out = Size.of(0)
        for mono, coef in self.terms.items():
            term = Size({(): coef})
            for atom, p in mono:
                factor = env.get(atom, Size.sym(atom))
                for _ in range(p):
                    term = term * factor
            out = out + term
        return out

    # -- arithmetic --------------------------------------------------------------------------
    def __add__(self, other: IntLike) -> "Size":
        o = Size.of(other)
        if not o.terms:
            return self
        if not self.terms:
            return o
        terms = dict(self.terms)
        for m, c in o.terms.items():
            terms[m] = terms.get(m, 0) + c
        return Size(terms)

    __radd__ = __add__

    def __neg__(self) -> "Size":
        return Size({m: -c for m, c in self.terms.items()})

    def __sub__(self, other: IntLike) -> "Size":
        return self + (-Size.of(other))

    def __rsub__(self, other: IntLike) -> "Size":
        return Size.of(other) - self

    def __mul__(self, other: IntLike) -> "Size":
        o = Size.of(other)
        terms: dict[Monomial, Coef] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in o.terms.items():
                m = _mul_mono(m1, m2) if m1 and m2 else (m1 or m2)
                terms[m] = terms.get(m, 0) + c1 * c2
        return Size(terms)

    __rmul__ = __mul__

    def __truediv__(self, other: IntLike) -> "Size":
        """Exact division. A constant must divide evenly; a symbolic size may carry a fraction
        (`H/2` states that H is even), which unification later checks against real sizes."""
        o = Size.of(other)
        if not o.is_const:
            quotient = self._div_by_monomial(o)
            if quotient is None:
                raise SizeError(f"cannot divide '{self}' by the symbolic size '{o}'")
            return quotient
        d = o.terms.get((), 0)
        if d == 0:
            raise SizeError("division by zero")
        q = Size({m: Fraction(c) / d for m, c in self.terms.items()})
        if q.is_const and isinstance(q.terms.get((), 0), Fraction):
            raise SizeError(f"{self} is not divisible by {o}")
        return q

    def _div_by_monomial(self, o: "Size") -> "Size | None":
        if len(o.terms) != 1:
            return None
        (mono, coef), = o.terms.items()
        out: dict[Monomial, Coef] = {}
        for m, c in self.terms.items():
            powers = dict(m)
            for atom, p in mono:
                if powers.get(atom, 0) < p:
                    return None
                powers[atom] -= p
            out[tuple(sorted((a, p) for a, p in powers.items() if p))] = Fraction(c) / coef
        return Size(out)

    def __floordiv__(self, other: IntLike) -> "Size":
        o = Size.of(other)
        if not o.is_const or o.value <= 0:
            raise SizeError(f"floor division needs a positive integer divisor, got '{o}'")
        k = o.value
        if self.is_const:
            return Size.of(self.value // k)
        exact = Size({m: Fraction(c, 1) / k for m, c in self.terms.items()})
        if all(isinstance(c, int) for c in exact.terms.values()):
            return exact
        return Size.sym(f"floor({self}, {k})")

    # -- comparison and printing -------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, int):
            other = Size.of(other)
        return isinstance(other, Size) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Size({str(self)!r})"

    def __str__(self) -> str:
        if self._text is None:
            self._text = self._render()
        return self._text

    def _render(self) -> str:
        if not self.terms:
            return "0"
        parts: list[str] = []
        # highest degree first, then by name: `B*T + 4*D + 1`
        order = sorted(self.terms, key=lambda m: (-sum(p for _, p in m), m))
        for i, mono in enumerate(order):
            coef = self.terms[mono]
            sign = "-" if coef < 0 else "+"
            text = _term_text(mono, -coef if coef < 0 else coef)
            parts.append(text if i == 0 and sign == "+" else f"{'-' if i == 0 else ' ' + sign + ' '}{text}")
        return "".join(parts)

    def to_json(self) -> int | str:
        return self.value if self.is_const and isinstance(self.terms.get((), 0), int) else str(self)


def _term_text(mono: Monomial, coef: Coef) -> str:
    num, den = (coef.numerator, coef.denominator) if isinstance(coef, Fraction) else (coef, 1)
    factors = [a if p == 1 else f"{a}^{p}" for a, p in mono]
    if num != 1 or not factors:
        factors.insert(0, str(num))
    text = "*".join(factors)
    return text if den == 1 else f"{text}/{den}"


_CONSTANTS: dict[int, Size] = {}
_CONSTANTS.update({i: Size({(): i}) for i in range(-8, 4097)})


# -- parsing the printed form back (for IR loading) ------------------------------------------
_TOKEN = re.compile(r"\s*(?:(\d+)|(floor\()|([A-Za-z_][A-Za-z_0-9]*)|(.))")


def parse_size(text: int | str) -> Size:
    """Parse a size as printed by `str(Size)` (ints, names, + - * / ^ parentheses, floor(E, k))."""
    if isinstance(text, int):
        return Size.of(text)
    tokens: list[tuple[str, str]] = []
    for num, floor, name, other in _TOKEN.findall(text):
        if num:
            tokens.append(("num", num))
        elif floor:
            tokens.append(("floor", floor))
        elif name:
            tokens.append(("name", name))
        elif other.strip():
            tokens.append(("op", other))
    parser = _SizeParser(tokens, text)
    result = parser.expr()
    if parser.pos != len(tokens):
        raise SizeError(f"cannot parse size '{text}'")
    return result


def _rational_div(a: Size, b: Size, text: str) -> Size:
    """Division as the printer means it: `B/2 + 1/2` has fractional coefficients, exactly."""
    if not b.is_const or b.value == 0:
        raise SizeError(f"cannot parse size '{text}'")
    return Size({m: Fraction(c) / b.value for m, c in a.terms.items()})


class _SizeParser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens, self.pos, self.text = tokens, 0, text

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise SizeError(f"cannot parse size '{self.text}'")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def expr(self) -> Size:
        out = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            out = out + self.term() if op == "+" else out - self.term()
        return out

    def term(self) -> Size:
        out = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()[1]
            out = out * self.factor() if op == "*" else _rational_div(out, self.factor(), self.text)
        return out

    def factor(self) -> Size:
        if self.peek() == "-":
            self.take()
            return -self.factor()
        base = self.atom()
        if self.peek() == "^":
            self.take()
            power = int(self.take()[1])
            out = Size.of(1)
            for _ in range(power):
                out = out * base
            return out
        return base

    def atom(self) -> Size:
        kind, text = self.take()
        if kind == "num":
            return Size.of(int(text))
        if kind == "name":
            return Size.sym(text)
        if kind == "floor":
            inner = self.expr()
            if self.take()[1] != ",":
                raise SizeError(f"cannot parse size '{self.text}'")
            k = int(self.take()[1])
            if self.take()[1] != ")":
                raise SizeError(f"cannot parse size '{self.text}'")
            return inner // k
        if text == "(":
            inner = self.expr()
            if self.take()[1] != ")":
                raise SizeError(f"cannot parse size '{self.text}'")
            return inner
        raise SizeError(f"cannot parse size '{self.text}'")
