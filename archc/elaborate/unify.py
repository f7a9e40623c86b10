"""Matching tensor types written in a spec (`[*, D]`, `f32[B, C, H/2, W/2]`) against real types.

Axis names in a signature are unknowns, bound at their first occurrence and checked at every
later one; `*` binds any number of leading axes. A dimension that is an expression in one unknown
(`H/2`, `4*D`, `T+1`) is solved for it, exactly: `H/2` against 7 is an error, not 3.
"""

from __future__ import annotations

from typing import Any, Callable

from archc.errors import ArchError, Span, did_you_mean
from archc.frontend import ast as A
from archc.ir.types import DTYPES, Dim, TensorType
from archc.sizes import Size, SizeError

UNKNOWN = "?"  # prefix of unknown axis atoms while solving


class _ArithError(ArchError):
    """Arithmetic in a type that fails for the sizes at hand (`H/2` with H = 7)."""


class Pattern:
    """A tensor type from the spec, evaluated against the names in scope."""

    def __init__(self, expr: A.TensorTypeExpr, lookup: Callable[[str], Any], axes: set[str]) -> None:
        self.expr = expr
        self.lookup = lookup  # returns an int/Size for a name in scope, or None
        self.axes = axes
        if expr.dtype is not None and expr.dtype not in DTYPES:
            raise ArchError(f"unknown dtype '{expr.dtype}'", expr.span, did_you_mean(expr.dtype, DTYPES)
                            or f"dtypes are {', '.join(DTYPES)}")
        stars = [d for d in expr.dims if isinstance(d, A.Star)]
        if len(stars) > 1:
            raise ArchError("a tensor type may contain '*' only once", stars[1].span)

    def size_of(self, e: A.Expr, bindings: dict[str, Size]) -> Size:
        if isinstance(e, A.Name):
            if e.id in bindings:
                return bindings[e.id]
            value = self.lookup(e.id)
            if isinstance(value, bool):
                raise ArchError(f"'{e.id}' is a bool, not a size", e.span)
            if isinstance(value, int) and value < 0:
                raise ArchError(f"'{e.id}' is {value}; an axis size cannot be negative", e.span)
            if isinstance(value, (int, Size)):
                return _const(value, e.span)
            if e.id in self.axes:
                return Size.sym(UNKNOWN + e.id)
            raise ArchError(f"unknown axis '{e.id}' in a tensor type", e.span,
                            did_you_mean(e.id, self.axes) or f"declare it with 'axis {e.id}'")
        if isinstance(e, A.Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
            if e.value < 0:
                raise ArchError("an axis size cannot be negative", e.span)
            return _const(e.value, e.span)
        if isinstance(e, A.BinOp) and e.op in ("+", "-", "*", "/", "//"):
            a, b = self.size_of(e.left, bindings), self.size_of(e.right, bindings)
            try:
                return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                        "/": lambda: a / b, "//": lambda: a // b}[e.op]()
            except SizeError as err:
                raise _ArithError(str(err), e.span) from None
        raise ArchError("a tensor type's axes are names, integers and + - * / of them", e.span)

    def fresh(self, bindings: dict[str, Size]) -> TensorType:
        """The type itself, with unknown axes made symbolic (for a model's inputs)."""
        dims = []
        for d in self.expr.dims:
            if isinstance(d, A.Star):
                raise ArchError("a model's input type cannot contain '*'", d.span)
            size = self.size_of(d, bindings)
            env = {a: Size.sym(a[len(UNKNOWN):]) for a in size.atoms() if a.startswith(UNKNOWN)}
            for a, s in env.items():
                bindings.setdefault(a[len(UNKNOWN):], s)
            dims.append(Dim(size=size.subs(env), name=_label(d)))
        return TensorType(dtype=self.expr.dtype or "f32", shape=tuple(dims))

    def match(self, actual: TensorType, bindings: dict[str, Size], stars: dict[str, tuple[Dim, ...]],
              what: str, span: Span | None) -> TensorType:
        """Bind unknowns so this pattern equals `actual`; return actual relabelled by the pattern."""
        def fail(detail: str) -> ArchError:
            return ArchError(f"{what}: expected {self.text()}, got {actual} ({detail})", span,
                             notes=[("the type is declared here", self.expr.span)])

        if self.expr.dtype is not None and self.expr.dtype != actual.dtype:
            raise fail(f"dtype {actual.dtype} is not {self.expr.dtype}")
        dims = list(self.expr.dims)
        star_at = next((i for i, d in enumerate(dims) if isinstance(d, A.Star)), None)
        fixed = len(dims) - (1 if star_at is not None else 0)
        if actual.rank < fixed or (star_at is None and actual.rank != fixed):
            raise fail(f"rank {actual.rank}, expected {'at least ' if star_at is not None else ''}{fixed}")
        pairs: list[tuple[A.Expr, Dim, int]] = []
        if star_at is not None:
            n_star = actual.rank - fixed
            lead = actual.shape[star_at:star_at + n_star]
            if "*" in stars and tuple(d.size for d in stars["*"]) != tuple(d.size for d in lead):
                raise fail(f"'*' is [{', '.join(str(d) for d in lead)}] here but "
                           f"[{', '.join(str(d) for d in stars['*'])}] elsewhere")
            stars.setdefault("*", lead)
            before, after = dims[:star_at], dims[star_at + 1:]
            pairs = [(e, actual.shape[i], i) for i, e in enumerate(before)]  # type: ignore[misc]
            pairs += [(e, actual.shape[star_at + n_star + i], star_at + n_star + i)  # type: ignore[misc]
                      for i, e in enumerate(after)]
        else:
            pairs = [(e, actual.shape[i], i) for i, e in enumerate(dims)]  # type: ignore[misc]
        pending = list(pairs)
        while pending:
            progress = False
            for item in list(pending):
                e, dim, i = item
                try:
                    size = self.size_of(e, bindings)
                except _ArithError as err:
                    known = ", ".join(f"{n} = {bindings[n]}" for n in _names(e) if n in bindings)
                    raise fail(f"axis {i + 1}: {_expr_text(e)}{' with ' + known if known else ''}: "
                               f"{err.message}") from None
                unknowns = [a for a in size.atoms() if a.startswith(UNKNOWN)]
                if len(unknowns) > 1:
                    continue
                pending.remove(item)
                progress = True
                if not unknowns:
                    if size != dim.size:
                        said = "expected " if _expr_text(e) == str(size) else f"{_expr_text(e)} is "
                        raise fail(f"axis {i + 1}: {said}{size}, got {dim.size}")
                    continue
                bindings[unknowns[0][len(UNKNOWN):]] = _solve(size, unknowns[0], dim.size, fail, i, e)
            if not progress:
                e, _, i = pending[0]
                raise fail(f"axis {i + 1}: cannot infer the axes of '{_expr_text(e)}' from it")
        labels = {i: _label(e) for e, _, i in pairs}
        return TensorType(dtype=actual.dtype, shape=tuple(
            Dim(size=d.size, name=labels.get(i) or d.name) for i, d in enumerate(actual.shape)))

    def text(self) -> str:
        dims = ", ".join("*" if isinstance(d, A.Star) else _expr_text(d) for d in self.expr.dims)
        return f"{self.expr.dtype or ''}[{dims}]"


def _const(value: int | Size, span: Span) -> Size:
    try:
        return Size.of(value)
    except SizeError as err:  # past 2**62
        raise _ArithError(str(err), span) from None


def _solve(size: Size, atom: str, actual: Size, fail: Callable[[str], ArchError], i: int, e: A.Expr) -> Size:
    """Solve size(atom) == actual for an atom that appears linearly."""
    if size.terms == {((atom, 1),): 1}:
        value = actual  # a bare axis name, as in most signatures: no algebra needed
    else:
        coef = Size({m: c for m, c in size.terms.items() if any(a == atom for a, _ in m)})
        rest = size - coef
        if any(dict(m).get(atom, 0) != 1 for m in coef.terms):
            raise fail(f"axis {i + 1}: cannot solve '{_expr_text(e)}' for {atom[len(UNKNOWN):]}")
        try:
            factor = coef / Size.sym(atom)
            value = (actual - rest) / factor
        except SizeError as err:
            raise fail(f"axis {i + 1}: {err}") from None
    name = atom[len(UNKNOWN):]
    if value.is_const:
        c = value.terms.get((), 0)
        if getattr(c, "denominator", 1) != 1 or c <= 0:
            raise fail(f"axis {i + 1}: {_expr_text(e)} cannot be {actual}: {name} would be {c}")
    return value


def _names(e: Any) -> list[str]:
    if isinstance(e, A.Name):
        return [e.id]
    if isinstance(e, A.BinOp):
        return _names(e.left) + [n for n in _names(e.right) if n not in _names(e.left)]
    return []


def _label(e: Any) -> str | None:
    return e.id if isinstance(e, A.Name) else (_expr_text(e) if isinstance(e, A.BinOp) else None)


def _expr_text(e: Any) -> str:
    from archc.frontend.fmt import expr_text
    return expr_text(e)
