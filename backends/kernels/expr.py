"""Scalar expressions of elementwise ops, translated into Triton or CUDA C.

Each elementwise op states its scalar form once, in the op registry (`relu`: `max(x, 0)`,
`gelu`: `0.5 * x * (1 + erf(x / sqrt(2)))`). This module parses that text (a small subset of
Python: numbers, names, `+ - * / **`, calls, and `a if cond else b`) and prints it in a target's
spelling. Names bind to kernel variables (the inputs `x`, `y` and the op's parameters) or to the
node's attributes, which are compile-time constants; a condition on attributes alone is decided
here, so `gelu(approximate="tanh")` prints only its tanh form. Constant sub-expressions are folded
(`sqrt(2)` -> `1.4142135623730951`).

A dialect is data: one row per function, as tinygrad's renderers spell ops.

    max(a, b)   tl.maximum(a, b)          fmaxf(a, b)
    erf(a)      tl.math.erf(a)            erff(a)
    sigmoid(a)  tl.sigmoid(a)             archc_sigmoid(a)
    tanh(a)     _tanh(a)                  tanhf(a)
    a ** 2      a * a                     a * a
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

from archc.backends.quote import py_float


class ExprError(ValueError):
    """An expression the translator cannot print (the region falls back to torch)."""


@dataclass(frozen=True)
class Dialect:
    name: str
    funcs: Mapping[str, str]  # function -> template over its arguments {0}, {1}
    where: str  # template over {c}, {a}, {b}
    const: Callable[[float], str]
    compare: Mapping[str, str] = field(default_factory=lambda: {"<": "<", "<=": "<=", ">": ">", ">=": ">=",
                                                                "==": "==", "!=": "!="})


def _triton_const(v: float) -> str:
    return py_float(v)  # inf and nan are names in Python, not literals


def _cuda_const(v: float) -> str:
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    if math.isnan(v):
        return "NAN"
    text = repr(float(v))
    return f"{text}f" if "e" in text or "." in text else f"{text}.0f"


TRITON = Dialect(
    name="triton",
    funcs={"max": "tl.maximum({0}, {1})", "min": "tl.minimum({0}, {1})", "erf": "tl.math.erf({0})",
           "sqrt": "tl.sqrt({0})", "rsqrt": "tl.math.rsqrt({0})", "sigmoid": "tl.sigmoid({0})",
           "tanh": "_tanh({0})", "exp": "tl.exp({0})", "log": "tl.log({0})", "abs": "tl.abs({0})",
           "sin": "tl.sin({0})", "cos": "tl.cos({0})"},
    where="tl.where({c}, {a}, {b})",
    const=_triton_const,
)

CUDA = Dialect(
    name="cuda",
    funcs={"max": "fmaxf({0}, {1})", "min": "fminf({0}, {1})", "erf": "erff({0})", "sqrt": "sqrtf({0})",
           "rsqrt": "rsqrtf({0})", "sigmoid": "archc_sigmoid({0})", "tanh": "tanhf({0})", "exp": "expf({0})",
           "log": "logf({0})", "abs": "fabsf({0})", "sin": "sinf({0})", "cos": "cosf({0})"},
    where="({c} ? {a} : {b})",
    const=_cuda_const,
)

# Constant folding uses Python's math with the same meaning as the dialects' functions.
_FOLD: dict[str, Callable[..., float]] = {
    "max": max, "min": min, "erf": math.erf, "sqrt": math.sqrt, "rsqrt": lambda a: 1 / math.sqrt(a),
    "sigmoid": lambda a: 1 / (1 + math.exp(-a)), "tanh": math.tanh, "exp": math.exp, "log": math.log,
    "abs": abs, "sin": math.sin, "cos": math.cos,
}
_NAMED_CONSTANTS = {"pi": math.pi, "e": math.e}

# Precedence of what a rendered piece is, to print only the parentheses needed.
_ATOM, _MUL, _ADD, _CMP, _COND = 5, 3, 2, 1, 0


@dataclass(frozen=True)
class _Code:
    text: str
    prec: int


@lru_cache(maxsize=256)
def parse(text: str) -> ast.expr:
    """The expression's syntax tree; only the subset this module prints is accepted."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise ExprError(f"cannot parse elementwise expression {text!r}: {e.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Constant, ast.IfExp, ast.Compare,
                                 ast.BoolOp, ast.Load, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)):
            raise ExprError(f"{type(node).__name__} is not allowed in an elementwise expression: {text!r}")
    return tree


def names(text: str) -> set[str]:
    """The names an expression reads (variables, attributes and constants alike)."""
    return {n.id for n in ast.walk(parse(text)) if isinstance(n, ast.Name)} - set(_FOLD)


def translate(text: str, variables: Mapping[str, str], attrs: Mapping[str, Any], dialect: Dialect) -> str:
    """`text` in `dialect`: `variables` maps names to code (kernel variables), `attrs` to constants."""
    out = _Translator(variables, attrs, dialect).visit(parse(text))
    return out.text if isinstance(out, _Code) else _const_code(out, dialect).text


def _const_code(value: Any, dialect: Dialect) -> _Code:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExprError(f"the constant {value!r} is not a number")
    return _Code(dialect.const(float(value)), _ATOM if value >= 0 else _MUL)


class _Translator:
    """Returns a Python value for a constant sub-expression, or `_Code` for one that reads variables."""

    def __init__(self, variables: Mapping[str, str], attrs: Mapping[str, Any], dialect: Dialect) -> None:
        self.variables, self.attrs, self.d = variables, attrs, dialect

    def code(self, node: ast.expr, need: int) -> str:
        out = self.visit(node)
        c = out if isinstance(out, _Code) else _const_code(out, self.d)
        return f"({c.text})" if c.prec < need else c.text

    def visit(self, node: ast.expr) -> Any:
        method = getattr(self, f"_{type(node).__name__}")
        return method(node)

    def _Constant(self, node: ast.Constant) -> Any:
        return node.value

    def _Name(self, node: ast.Name) -> Any:
        if node.id in self.variables:
            return _Code(self.variables[node.id], _ATOM)
        if node.id in self.attrs:
            value = self.attrs[node.id]
            if value is None:
                raise ExprError(f"attribute '{node.id}' has no value")
            return value
        if node.id in _NAMED_CONSTANTS:
            return _NAMED_CONSTANTS[node.id]
        raise ExprError(f"the name '{node.id}' is neither a kernel variable nor an attribute")

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            if isinstance(value, _Code):
                raise ExprError("'not' applies only to attributes")
            return not value
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise ExprError(f"unary {type(node.op).__name__} is not supported")
        if not isinstance(value, _Code):
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node.op, ast.UAdd):
            return value
        return _Code(f"-{self.code(node.operand, _ATOM)}", _MUL)

    def _BinOp(self, node: ast.BinOp) -> Any:
        left, right = self.visit(node.left), self.visit(node.right)
        if not isinstance(left, _Code) and not isinstance(right, _Code):
            return _fold_binop(node.op, left, right)
        if isinstance(node.op, ast.Pow):
            return self._pow(node.left, right)
        symbols = {ast.Add: ("+", _ADD), ast.Sub: ("-", _ADD), ast.Mult: ("*", _MUL), ast.Div: ("/", _MUL)}
        if type(node.op) not in symbols:
            raise ExprError(f"the operator {type(node.op).__name__} is not supported")
        sym, prec = symbols[type(node.op)]
        # left-associative: the right operand needs parentheses at equal precedence for - and /
        right_need = prec + 1 if sym in "-/" else prec
        return _Code(f"{self.code(node.left, prec)} {sym} {self.code(node.right, right_need)}", prec)

    def _pow(self, base: ast.expr, exponent: Any) -> _Code:
        if isinstance(exponent, _Code):
            raise ExprError("an exponent must be a constant")
        if exponent == 0.5:
            return _Code(self.d.funcs["sqrt"].format(self.code(base, _COND)), _ATOM)
        if float(exponent).is_integer() and 1 <= exponent <= 4:
            b = self.code(base, _ATOM)
            return _Code(" * ".join([b] * int(exponent)), _MUL if exponent > 1 else _ATOM)
        raise ExprError(f"the exponent {exponent} is not supported (use 0.5 or an integer 1..4)")

    def _Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise ExprError("only plain calls such as max(x, 0) are supported")
        name = node.func.id
        if name not in self.d.funcs:
            raise ExprError(f"the function '{name}' has no {self.d.name} spelling")
        args = [self.visit(a) for a in node.args]
        if not any(isinstance(a, _Code) for a in args):
            return _FOLD[name](*args)
        return _Code(self.d.funcs[name].format(*(self.code(a, _COND) for a in node.args)), _ATOM)

    def _IfExp(self, node: ast.IfExp) -> Any:
        cond = self.visit(node.test)
        if not isinstance(cond, _Code):  # decided by attributes, at compile time
            return self.visit(node.body if cond else node.orelse)
        a, b = self.code(node.body, _COND), self.code(node.orelse, _COND)
        return _Code(self.d.where.format(c=cond.text, a=a, b=b), _ATOM)

    def _Compare(self, node: ast.Compare) -> Any:
        if len(node.ops) != 1:
            raise ExprError("chained comparisons are not supported")
        left, right = self.visit(node.left), self.visit(node.comparators[0])
        op = type(node.ops[0])
        if not isinstance(left, _Code) and not isinstance(right, _Code):
            return _COMPARE[op](left, right)
        sym = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}[op]
        return _Code(f"{self.code(node.left, _ADD)} {self.d.compare[sym]} {self.code(node.comparators[0], _ADD)}",
                     _CMP)

    def _BoolOp(self, node: ast.BoolOp) -> Any:
        values = [self.visit(v) for v in node.values]
        if any(isinstance(v, _Code) for v in values):
            raise ExprError("'and' / 'or' apply only to attributes")
        return all(values) if isinstance(node.op, ast.And) else any(values)


_COMPARE = {ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
            ast.GtE: lambda a, b: a >= b, ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b}


def _fold_binop(op: ast.operator, a: Any, b: Any) -> Any:
    table = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b,
             ast.Pow: lambda: a ** b}
    if type(op) not in table:
        raise ExprError(f"the operator {type(op).__name__} is not supported")
    return table[type(op)]()


def evaluate(text: str, variables: Mapping[str, Any], attrs: Mapping[str, Any]) -> Any:
    """The expression evaluated with torch tensors (a reference for tests of the registry)."""
    import torch

    funcs = {"max": torch.maximum, "min": torch.minimum, "erf": torch.erf, "sqrt": torch.sqrt,
             "rsqrt": torch.rsqrt, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "exp": torch.exp,
             "log": torch.log, "abs": torch.abs, "sin": torch.sin, "cos": torch.cos}

    def lift(v: Any) -> Any:
        return v if isinstance(v, torch.Tensor) else torch.tensor(float(v))

    env: dict[str, Any] = {**_NAMED_CONSTANTS, **attrs, **variables}
    env.update({k: (lambda f: lambda *a: f(*map(lift, a)))(f) for k, f in funcs.items()})
    # `a if cond else b` with a tensor condition would need torch.where; the registry's conditions
    # are on attributes, which Python's own `if` decides
    tree = ast.Expression(body=parse(text))
    return eval(compile(tree, "<elementwise>", "eval"), {"__builtins__": {}}, env)  # noqa: S307


__all__ = ["CUDA", "TRITON", "Dialect", "ExprError", "evaluate", "names", "parse", "translate"]
