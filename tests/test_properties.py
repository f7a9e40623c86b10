"""Property tests (hypothesis) for the size algebra and for the parser and formatter.

- sizes: printing then parsing a size gives it back; + - * and exact / obey the algebra
  ((a + b) - b == a, a * k / k == a); constant division is exact or an error, never rounded;
  substituting values commutes with arithmetic.
- parser and formatter: formatting an expression and parsing it back gives the same AST
  (modulo source spans); on every spec under `specs/`, formatting is idempotent and keeps the AST.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archc.errors import ArchError, Span
from archc.frontend import ast as A
from archc.frontend.fmt import expr_text, format_module
from archc.frontend.parser import parse, parse_expr
from archc.sizes import Size, SizeError, parse_size

SPECS = Path(__file__).resolve().parents[1] / "specs"
SPEC_FILES = sorted(SPECS.rglob("*.arch"))
ATOMS = ["B", "T", "D", "H", "W"]


# ---- sizes ---------------------------------------------------------------------------------------

def _size_op(op: str, a: Size, b: Size, k: int) -> Size:
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / k  # symbolic sizes may carry fractions (`H/2`); constants must divide
        return a // abs(k)
    except SizeError:
        return a


def _combine(children: st.SearchStrategy[Size]) -> st.SearchStrategy[Size]:
    return st.builds(_size_op, st.sampled_from(["+", "-", "*", "/", "//"]), children, children,
                     st.integers(-6, 6).filter(bool))


SIZES = st.recursive(st.integers(-40, 40).map(Size.of) | st.sampled_from(ATOMS).map(Size.sym), _combine,
                     max_leaves=6)
# without floor(...) atoms, which are opaque to substitution
POLYS = SIZES.filter(lambda s: all(a in ATOMS for a in s.atoms()))


@given(SIZES)
def test_a_size_prints_and_parses_back(s: Size) -> None:
    assert parse_size(str(s)) == s
    assert parse_size(s.to_json()) == s


def test_a_size_with_a_fractional_constant_prints_and_parses_back() -> None:
    s = (Size.sym("B") + 1) / 2
    assert parse_size(str(s)) == s


@given(SIZES, SIZES)
def test_adding_then_subtracting_gives_back(a: Size, b: Size) -> None:
    assert (a + b) - b == a
    assert a + b == b + a
    assert a - a == Size.of(0)


@given(SIZES, st.integers(-9, 9).filter(bool))
def test_multiplying_then_dividing_gives_back(a: Size, k: int) -> None:
    assert (a * k) / k == a


@given(POLYS, POLYS, POLYS)
def test_multiplication_distributes(a: Size, b: Size, c: Size) -> None:
    assert a * (b + c) == a * b + a * c
    assert a * b == b * a


@given(st.integers(-10**6, 10**6), st.integers(-50, 50))
def test_constant_division_is_exact_or_an_error(x: int, k: int) -> None:
    if k == 0:
        with pytest.raises(SizeError):
            Size.of(x) / k
        return
    if x % k == 0:
        assert Size.of(x) / k == Size.of(x // k)
    else:
        with pytest.raises(SizeError):
            Size.of(x) / k
    if k > 0:
        assert Size.of(x) // k == Size.of(x // k)


@given(POLYS, POLYS, st.fixed_dictionaries({a: st.integers(1, 64) for a in ATOMS}))
def test_substitution_commutes_with_arithmetic(a: Size, b: Size, values: dict[str, int]) -> None:
    env = {k: Size.of(v) for k, v in values.items()}
    assert (a + b).subs(env) == a.subs(env) + b.subs(env)
    assert (a * b).subs(env) == a.subs(env) * b.subs(env)
    assert (a + b).subs(env).is_const


def test_symbolic_division_states_divisibility() -> None:
    half = Size.sym("H") / 2
    assert str(half) == "H/2" and half * 2 == Size.sym("H")
    assert half.subs({"H": Size.of(14)}) == Size.of(7)
    with pytest.raises(SizeError):
        _ = half.subs({"H": Size.of(7)}).value  # 7/2 is not a size


# ---- expressions: format then parse ----------------------------------------------------------------

_NOWHERE = Span("<gen>", 1, 1)
NAMES = st.sampled_from(["x", "y", "D", "heads", "relu", "linear", "B2", "_a", "Mlp"])
INTS = st.integers(0, 10**6).map(lambda v: A.Const(v, _NOWHERE, str(v)))
NEG_INTS = st.integers(1, 999).map(lambda v: A.Const(-v, _NOWHERE, f"-{v}"))
FLOATS = st.sampled_from(["0.5", "1e-06", "2.0", "3.25", ".5", "1e3"]).map(
    lambda t: A.Const(float(t), _NOWHERE, t))
STRINGS = st.text(st.characters(exclude_categories=["Cs"]), max_size=12).map(
    lambda s: A.Const(s, _NOWHERE, ""))
BOOLS = st.booleans().map(lambda b: A.Const(b, _NOWHERE, "true" if b else "false"))
LEAVES = NAMES.map(lambda n: A.Name(n, _NOWHERE)) | INTS | NEG_INTS | FLOATS | STRINGS | BOOLS

BINARY = ["+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", "<=", ">", ">=", "and", "or"]


def _extend(e: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    kwargs = st.lists(st.tuples(NAMES, e), max_size=2, unique_by=lambda kv: kv[0]).map(
        lambda kvs: tuple(A.Keyword(k, v, _NOWHERE) for k, v in kvs))
    return st.one_of(
        st.builds(lambda op, a, b: A.BinOp(op, a, b, _NOWHERE), st.sampled_from(BINARY), e, e),
        st.builds(lambda a: A.UnaryOp("not", a, _NOWHERE), e),
        st.builds(lambda a: A.UnaryOp("-", a, _NOWHERE), e.filter(lambda v: not isinstance(v, A.Const)
                                                                 or isinstance(v.value, (str, bool)))),
        st.builds(lambda f, args, kws: A.Call(f, tuple(args), kws, _NOWHERE), e, st.lists(e, max_size=3), kwargs),
        st.builds(lambda o, n: A.GetAttr(o, n, _NOWHERE), e, NAMES),
        st.builds(lambda o, i: A.Index(o, tuple(i), _NOWHERE), e, st.lists(e, min_size=1, max_size=2)),
        st.builds(lambda s: A.Pipeline(tuple(s), _NOWHERE), st.lists(e, min_size=2, max_size=3)),
        st.builds(lambda s: A.TupleExpr(tuple(s), _NOWHERE), st.lists(e, min_size=1, max_size=3)),
        st.builds(lambda s: A.ListExpr(tuple(s), _NOWHERE), st.lists(e, max_size=3)),
        st.builds(lambda t, a, b: A.Cond(t, a, b, _NOWHERE), e, e, e),
        st.builds(lambda args, v, body: A.Stack(tuple(args), (), v, body, _NOWHERE),
                  st.lists(e, min_size=1, max_size=2), st.none() | NAMES, e),
    )


EXPRS = st.recursive(LEAVES, _extend, max_leaves=12)


def strip(node: Any) -> Any:
    """An AST as nested tuples, without source spans (and without how a string was quoted)."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = [f.name for f in dataclasses.fields(node) if not f.name.endswith("span")]
        if isinstance(node, A.Const) and isinstance(node.value, str):
            fields.remove("text")
        if isinstance(node, A.Module):
            fields = ["items"]
        return (type(node).__name__,) + tuple((f, strip(getattr(node, f))) for f in fields)
    if isinstance(node, (list, tuple)):
        return tuple(strip(x) for x in node)
    return node


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPRS)
def test_formatting_an_expression_then_parsing_gives_it_back(e: Any) -> None:
    text = expr_text(e)
    try:
        back = parse_expr(text, "<gen>")
    except ArchError as err:
        raise AssertionError(f"the formatter wrote {text!r}, which does not parse: {err.message}") from None
    assert strip(back) == strip(e), text


# ---- whole specs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.relative_to(SPECS).as_posix() for p in SPEC_FILES])
def test_formatting_a_spec_keeps_its_ast_and_is_idempotent(path: Path) -> None:
    module = parse(path.read_text(encoding="utf-8"), str(path))
    once = format_module(module)
    again = parse(once, str(path) + ".fmt")
    assert strip(again) == strip(module)
    assert format_module(again) == once
    assert [c.text.rstrip() for c in again.comments] == [c.text.rstrip() for c in module.comments]
