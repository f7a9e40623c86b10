"""Compile-time arithmetic: what `ratio * D`, `768 / heads`, `2 ** 10` and `H // 2` evaluate to.

Ints stay exact (`/` must divide; `//` rounds down), floats are floats, and a symbolic size (`T`)
stays symbolic. Results are bounded, so a spec cannot make the compiler build huge numbers.
"""

from __future__ import annotations

import math
from typing import Any

from archc.sizes import MAX_INT, Size, SizeError


class ConstError(Exception):
    """A mistake in compile-time arithmetic (inexact division, overflow); the caller adds a span."""


def int_op(op: str, a: int, b: int) -> int | float:
    if op == "+":
        out = a + b
    elif op == "-":
        out = a - b
    elif op == "*":
        out = a * b
    elif op == "/":
        if b == 0:
            raise ZeroDivisionError
        if a % b:
            raise ConstError(f"{a} / {b} is not a whole number (use // to round down, or a float)")
        out = a // b
    elif op == "//":
        out = a // b
    elif op == "%":
        out = a % b
    elif op == "**":
        if b < 0:
            return float(a) ** b
        if a not in (0, 1, -1) and b * math.log2(abs(a)) > 62:
            raise ConstError(f"{a} ** {b} is too large")
        out = a ** b
    else:
        raise AssertionError(op)
    if abs(out) > MAX_INT:
        raise ConstError(f"integer {'overflow' if abs(out) > MAX_INT else ''} in {a} {op} {b}")
    return out


def float_op(op: str, a: float, b: float) -> float:
    try:
        if op == "%":
            out = a % b
        elif op == "//":
            out = float(a // b)
        elif op == "**":
            out = a ** b
        else:
            out = {"+": a + b, "-": a - b, "*": a * b}[op] if op != "/" else a / b
    except OverflowError:
        raise ConstError(f"float overflow in {a} {op} {b}") from None
    if isinstance(out, complex):  # (-8.0) ** 0.5
        raise ConstError(f"{a} ** {b} is not a real number")
    if not math.isfinite(out):
        raise ConstError(f"float overflow in {a} {op} {b}")
    return out


def size_op(op: str, a: Size, b: Size) -> Size:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    if op == "//":
        return a // b
    raise SizeError(f"'{op}' is not defined on symbolic sizes")


def plain(v: Any) -> Any:
    if isinstance(v, Size) and v.is_const:
        return v.value
    if isinstance(v, tuple):
        return tuple(plain(x) for x in v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric(op: str, a: Any, b: Any) -> Any:
    """`a op b` on ints, floats or sizes. Raises ConstError, SizeError or ZeroDivisionError."""
    if isinstance(a, Size) or isinstance(b, Size):
        if isinstance(a, float) or isinstance(b, float):
            raise ConstError(f"cannot mix the symbolic size '{a if isinstance(a, Size) else b}' with a float")
        out = size_op(op, Size.of(a), Size.of(b))
        return out.value if out.is_const and isinstance(out.terms.get((), 0), int) else out
    if isinstance(a, int) and isinstance(b, int):
        return int_op(op, a, b)
    return float_op(op, float(a), float(b))
