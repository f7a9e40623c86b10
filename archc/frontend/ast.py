"""The syntax tree of an `.arch` file. Every node carries the span it was parsed from."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Iterator, Union

from archc.errors import Span


# ---- expressions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Const:
    """An int, float, str or bool literal; `text` keeps how the user wrote a number."""

    value: int | float | str | bool
    span: Span
    text: str = ""


@dataclass(frozen=True)
class TupleExpr:
    items: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / // % ** == != < <= > >= and or
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class UnaryOp:
    op: str  # - not
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class Keyword:
    name: str
    value: "Expr"
    span: Span


@dataclass(frozen=True)
class Call:
    func: "Expr"
    args: tuple["Expr", ...]
    kwargs: tuple[Keyword, ...]
    span: Span


@dataclass(frozen=True)
class GetAttr:
    obj: "Expr"
    name: str
    span: Span


@dataclass(frozen=True)
class SliceExpr:
    lo: "Expr | None"
    hi: "Expr | None"
    span: Span


@dataclass(frozen=True)
class EllipsisExpr:
    span: Span


@dataclass(frozen=True)
class Index:
    obj: "Expr"
    subs: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class Pipeline:
    """`x >> f >> g`: the first stage is a value or a callable, the rest are callables."""

    stages: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class Stack:
    """`stack(n, connect=...) { i => Block(...) }`: n instances of a callable, chained."""

    args: tuple["Expr", ...]
    kwargs: tuple[Keyword, ...]
    var: str | None
    body: "Expr"
    span: Span


@dataclass(frozen=True)
class Cond:
    """`if test then a else b`: a compile-time choice between two expressions."""

    test: "Expr"
    then: "Expr"
    orelse: "Expr"
    span: Span


@dataclass(frozen=True)
class Choice:
    """`choice(a, b, c)`: a hole of a search space; a concrete spec has one option in its place.
    `choice(range(lo, hi, step))` lists ints (kept as `range` for printing); `per_layer=true` in a
    stack's body makes one hole per layer."""

    options: tuple["Expr", ...]
    span: Span
    per_layer: bool = False
    range: tuple[int, int, int] | None = None  # written as range(lo, hi, step)


Expr = Union[Cond, Name, Const, TupleExpr, ListExpr, BinOp, UnaryOp, Call, GetAttr, SliceExpr,
             EllipsisExpr, Index, Pipeline, Stack, Choice]


# ---- types ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Star:
    """`*` in a tensor type: any number of leading axes (broadcast)."""

    span: Span


@dataclass(frozen=True)
class TensorTypeExpr:
    dtype: str | None
    dims: tuple[Union[Expr, Star], ...]
    span: Span


@dataclass(frozen=True)
class TypeName:
    name: str
    span: Span


TypeExpr = Union[TensorTypeExpr, TypeName]


# ---- statements -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Annotation:
    name: str
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]
    span: Span


@dataclass(frozen=True)
class Assign:
    targets: tuple[str, ...]  # as written: `fc`, or `denselayer{i + 1}` for a formatted name
    value: Expr
    span: Span
    annotations: tuple[Annotation, ...] = ()
    formats: tuple["NameFormat | None", ...] = ()  # per target: its parts, where it is formatted


@dataclass(frozen=True)
class NameFormat:
    """A name built from compile-time values, `denselayer{i + 1}`: text and expressions in order."""

    parts: tuple[Union[str, Expr], ...]
    span: Span


@dataclass(frozen=True)
class Return:
    values: tuple[Expr, ...]
    span: Span
    annotations: tuple[Annotation, ...] = ()


@dataclass(frozen=True)
class If:
    branches: tuple[tuple[Expr, tuple["Stmt", ...]], ...]
    orelse: tuple["Stmt", ...] | None
    span: Span
    annotations: tuple[Annotation, ...] = ()


@dataclass(frozen=True)
class For:
    var: str
    iter: Expr
    body: tuple["Stmt", ...]
    span: Span
    annotations: tuple[Annotation, ...] = ()


Stmt = Union[Assign, Return, If, For]


# ---- top-level items --------------------------------------------------------------------------
@dataclass(frozen=True)
class Formal:
    name: str
    type: TypeExpr
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class Import:
    path: str
    alias: str | None
    names: tuple[str, ...] | None  # `from "p" import a, b`
    span: Span


@dataclass(frozen=True)
class AxisDecl:
    names: tuple[str, ...]
    span: Span


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class InterfaceDef:
    name: str
    ports: tuple[Formal, ...]
    outs: tuple[TensorTypeExpr, ...]
    span: Span


@dataclass(frozen=True)
class BlockDef:
    kind: str  # "block" | "model"
    name: str
    params: tuple[Formal, ...]
    ports: tuple[Formal, ...] | None  # None: taken from the interface it implements
    outs: tuple[TensorTypeExpr, ...] | None
    implements: str | None
    body: tuple[Stmt, ...]
    span: Span
    annotations: tuple[Annotation, ...] = ()
    name_span: Span | None = None


Item = Union[Import, AxisDecl, Let, InterfaceDef, BlockDef]


@dataclass(frozen=True)
class Comment:
    text: str
    line: int
    col: int


@dataclass
class Module:
    file: str
    items: list[Item]
    comments: list[Comment] = field(default_factory=list)


def children(node: Any) -> Iterator[Any]:
    """The syntax nodes directly inside `node` (in field order; spans and strings are not nodes)."""
    for f in fields(node):
        yield from _nodes_in(getattr(node, f.name))


def _nodes_in(value: Any) -> Iterator[Any]:
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _nodes_in(v)
    elif is_dataclass(value) and type(value).__module__ == __name__:
        yield value


def walk(node: Any) -> Iterator[Any]:
    """`node` and every syntax node below it, depth first in source order."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(list(children(n))))
