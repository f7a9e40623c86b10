"""The `choice(...)` holes of a search space, each named by a stable path, and filling them.

A hole's path is where it stands, written from the outside in:

- in a block or model `B`: `B.p` for the default (or type) of parameter or port `p`, `B.t` for the
  statement that assigns `t` (its first target), `B.return`, `B.if` for a condition,
  `B.for.i` for what `for i in ...` runs over, `B.->` for the output types, `B.@a` for an
  annotation `@a`; in an interface `I`, `I.p` and `I.->`; at the top level, `x` for `let x = ...`;
- then `.k` for each keyword argument the hole stands in, outermost first:
  `layers = stack(4, connect=choice(residual, rezero))` in `Net` is `Net.layers.connect`;
- the second and later holes with the same path get `#2`, `#3`, ... in source order.

A path changes only when the spec is edited at that place, or when holes are added before it at the
same path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

from archc.errors import ArchError, Span
from archc.frontend import ast as A
from archc.frontend.fmt import expr_text


@dataclass(frozen=True)
class Hole:
    path: str
    choice: A.Choice

    @property
    def options(self) -> tuple[str, ...]:
        """The options as written (formatted)."""
        return tuple(expr_text(o) for o in self.choice.options)

    @property
    def span(self) -> Span:
        return self.choice.span


def find_holes(module: A.Module) -> list[Hole]:
    """Every hole of `module`, in source order, with its path."""
    found: list[tuple[str, A.Choice]] = []
    for item in module.items:
        if isinstance(item, A.Let):
            _collect(item.value, item.name, found)
        elif isinstance(item, (A.BlockDef, A.InterfaceDef)):
            _collect_def(item, found)
    seen: dict[str, int] = {}
    holes = []
    for path, choice in found:
        seen[path] = seen.get(path, 0) + 1
        holes.append(Hole(path if seen[path] == 1 else f"{path}#{seen[path]}", choice))
    return holes


def _collect_def(item: A.BlockDef | A.InterfaceDef, found: list[tuple[str, A.Choice]]) -> None:
    name = item.name
    if isinstance(item, A.BlockDef):
        for a in item.annotations:
            _collect(a, f"{name}.@{a.name}", found)
        for f in item.params + (item.ports or ()):
            _collect(f, f"{name}.{f.name}", found)
        _collect(item.outs or (), f"{name}.->", found)
        _collect_stmts(item.body, name, found)
    else:
        for f in item.ports:
            _collect(f, f"{name}.{f.name}", found)
        _collect(item.outs, f"{name}.->", found)


def _collect_stmts(stmts: tuple[A.Stmt, ...], prefix: str, found: list[tuple[str, A.Choice]]) -> None:
    for s in stmts:
        if isinstance(s, A.Assign):
            _collect(s, f"{prefix}.{s.targets[0]}", found)
        elif isinstance(s, A.Return):
            _collect(s, f"{prefix}.return", found)
        elif isinstance(s, A.If):
            _collect(s.annotations, f"{prefix}.if", found)
            for test, body in s.branches:
                _collect(test, f"{prefix}.if", found)
                _collect_stmts(body, prefix, found)
            _collect_stmts(s.orelse or (), prefix, found)
        elif isinstance(s, A.For):
            _collect((s.annotations, s.iter), f"{prefix}.for.{s.var}", found)
            _collect_stmts(s.body, prefix, found)


def _collect(node: Any, path: str, found: list[tuple[str, A.Choice]]) -> None:
    if isinstance(node, A.Choice):
        found.append((path, node))
        return
    if isinstance(node, A.Keyword):
        path = f"{path}.{node.name}"
    children = node if isinstance(node, (tuple, list)) else A.children(node) if _is_node(node) else ()
    for child in children:
        _collect(child, path, found)


def _is_node(x: Any) -> bool:
    return is_dataclass(x) and type(x).__module__ == A.__name__


def fill(module: A.Module, picks: dict[str, int], holes: list[Hole]) -> A.Module:
    """`module` with each hole replaced by its chosen option (`picks`: path -> option index)."""
    table: dict[int, A.Expr] = {}
    for h in holes:
        if h.path not in picks:
            raise ArchError(f"no option is chosen for the hole {h.path}", h.span)
        k = picks[h.path]
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(h.choice.options):
            raise ArchError(f"the hole {h.path} has {len(h.choice.options)} options; {k!r} is not one of "
                            f"0..{len(h.choice.options) - 1}", h.span)
        table[id(h.choice)] = h.choice.options[k]
    unknown = sorted(set(picks) - {h.path for h in holes})
    if unknown:
        raise ArchError(f"the spec has no hole {unknown[0]}")
    return _fill(module, table)


def _fill(node: Any, table: dict[int, A.Expr]) -> Any:
    if isinstance(node, A.Choice):
        return table[id(node)]
    if isinstance(node, tuple):
        return tuple(_fill(x, table) for x in node)
    if isinstance(node, list):
        return [_fill(x, table) for x in node]
    if not (_is_node(node) or isinstance(node, A.Module)):
        return node
    changed = {}
    for f in fields(node):
        old = getattr(node, f.name)
        new = _fill(old, table)
        if new is not old:
            changed[f.name] = new
    return replace(node, **changed) if changed else node
