"""The `choice(...)` holes of a search space, each named by a stable path, and filling them.

A hole's path is where it stands, written from the outside in:

- in a block or model `B`: `B.p` for the default (or type) of parameter or port `p`, `B.t` for the
  statement that assigns `t` (its first target), `B.return`, `B.if` for a condition,
  `B.for.i` for what `for i in ...` runs over, `B.->` for the output types, `B.@a` for an
  annotation `@a`; in an interface `I`, `I.p` and `I.->`; at the top level, `x` for `let x = ...`;
- then `.k` for each keyword argument the hole stands in, outermost first:
  `layers = stack(4, connect=choice(residual, rezero))` in `Net` is `Net.layers.connect`;
- the second and later holes with the same path get `#2`, `#3`, ... in source order;
- a per-layer hole (`choice(..., per_layer=true)` in a stack's body) is one hole per layer of the
  innermost stack around it (in each layer of an outer stack, its layer i picks the same), with
  `[i]` after the stack's path: `blocks = stack(4) { Block(choice(a, b, per_layer=true), norm=...) }`
  in `Net` is `Net.blocks[0]` ... `Net.blocks[3]` (the family is listed as `Net.blocks[*]`), and
  a per-layer `norm=` in the same body is `Net.blocks[i].norm`.

A path changes only when the spec is edited at that place, or when holes are added before it at the
same path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

from archc.errors import ArchError, Span
from archc.frontend import ast as A
from archc.frontend.fmt import expr_text


Found = list[tuple[str, A.Choice, tuple[tuple[A.Stack, int], ...]]]  # path, hole, enclosing stacks


@dataclass(frozen=True)
class Hole:
    path: str  # a per-layer hole's family: `[*]` where the layer index goes
    choice: A.Choice
    stack: A.Stack | None = None  # the stack whose layers a per-layer hole is repeated in

    @property
    def per_layer(self) -> bool:
        return self.stack is not None

    def at(self, layer: int) -> str:
        """The path of a per-layer hole's hole in `layer`."""
        return self.path.replace("[*]", f"[{layer}]", 1)

    @property
    def options(self) -> tuple[str, ...]:
        """The options as written (formatted)."""
        return tuple(expr_text(o) for o in self.choice.options)

    @property
    def span(self) -> Span:
        return self.choice.span


def find_holes(module: A.Module) -> list[Hole]:
    """Every hole of `module`, in source order, with its path."""
    found: Found = []
    for item in module.items:
        if isinstance(item, A.Let):
            _collect(item.value, item.name, found)
        elif isinstance(item, (A.BlockDef, A.InterfaceDef)):
            _collect_def(item, found)
    seen: dict[str, int] = {}
    holes = []
    for path, choice, stacks in found:
        stack = None
        if choice.per_layer:
            stack, at = _layer_stack(choice, stacks)
            path = f"{path[:at]}[*]{path[at:]}"
        seen[path] = seen.get(path, 0) + 1
        holes.append(Hole(path if seen[path] == 1 else f"{path}#{seen[path]}", choice, stack))
    return holes


def _layer_stack(choice: A.Choice, stacks: tuple[tuple[A.Stack, int], ...]) -> tuple[A.Stack, int]:
    """The stack a per-layer hole repeats in, and where its body starts in the hole's path."""
    if not stacks:
        raise ArchError("choice(..., per_layer=true) stands outside any stack's body: a per-layer choice "
                        "needs layers", choice.span)
    return stacks[0]  # the innermost: in a stack inside another's body, its layer i picks in every outer layer


def reads_index(stack: A.Stack) -> bool:
    """Whether the layers of `stack` read their index (`i => ...`): each layer may then differ."""
    return bool(stack.var) and any(isinstance(n, A.Name) and n.id == stack.var for n in A.walk(stack.body))


def _collect_def(item: A.BlockDef | A.InterfaceDef, found: Found) -> None:
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


def _collect_stmts(stmts: tuple[A.Stmt, ...], prefix: str, found: Found) -> None:
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


def _collect(node: Any, path: str, found: Found, stacks: tuple[tuple[A.Stack, int], ...] = ()) -> None:
    if isinstance(node, A.Choice):
        found.append((path, node, stacks))
        return
    if isinstance(node, A.Keyword):
        path = f"{path}.{node.name}"
    if isinstance(node, A.Stack):  # its body's holes know the stack, and where its path ends
        _collect((node.args, node.kwargs), path, found, stacks)
        _collect(node.body, path, found, ((node, len(path)),) + stacks)
        return
    children = node if isinstance(node, (tuple, list)) else A.children(node) if is_node(node) else ()
    for child in children:
        _collect(child, path, found, stacks)


def is_node(x: Any) -> bool:
    """Whether `x` is a node of the syntax tree (archc.frontend.ast)."""
    return is_dataclass(x) and type(x).__module__ == A.__name__


def fill(module: A.Module, picks: dict[str, int], holes: list[Hole]) -> A.Module:
    """`module` with each hole replaced by its chosen option (`picks`: path -> option index).

    A per-layer hole is picked per layer (`Net.blocks[0]`, `Net.blocks[1]`, ...: one per layer of
    its stack), or for every layer at once by its family's path (`Net.blocks[*]`). Layers that pick
    different options read them from a list by the layer's index: `[a, b, a][i]`."""
    table: dict[int, A.Expr] = {}
    indexed: dict[int, str] = {}  # id of a stack whose layers pick differently -> its index variable
    known = set()
    for h in holes:
        if h.path in picks:
            ks = [picks[h.path]]
            known.add(h.path)
        elif h.per_layer:
            ks = _layer_picks(h, picks)
            known.update(h.at(i) for i in range(len(ks)))
        else:
            raise ArchError(f"no option is chosen for the hole {h.path}", h.span)
        for k in ks:
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(h.choice.options):
                raise ArchError(f"the hole {h.path} has {len(h.choice.options)} options; {k!r} is not one of "
                                f"0..{len(h.choice.options) - 1}", h.span)
        if len(set(ks)) <= 1:
            table[id(h.choice)] = h.choice.options[ks[0] if ks else 0]
            continue
        var = indexed.setdefault(id(h.stack), h.stack.var or _fresh_var(h.stack))
        table[id(h.choice)] = A.Index(A.ListExpr(tuple(h.choice.options[k] for k in ks), h.span),
                                      (A.Name(var, h.span),), h.span)
    unknown = sorted(set(picks) - known)
    if unknown:
        raise ArchError(f"the spec has no hole {unknown[0]}")
    return _fill(module, table, indexed)


def _layer_picks(h: Hole, picks: dict[str, int]) -> list[int]:
    ks = []
    while h.at(len(ks)) in picks:
        ks.append(picks[h.at(len(ks))])
    return ks


def _fresh_var(stack: A.Stack) -> str:
    used = {n.id for n in A.walk(stack.body) if isinstance(n, A.Name)}
    return next(v for v in ("i", "layer", "layer_index") + tuple(f"i{k}" for k in range(len(used) + 1))
                if v not in used)


def substitute(node: Any, table: dict[int, A.Expr]) -> Any:
    """`node` (a module or any part of one) with the holes and stacks in `table` (by id of their
    choice or stack node) replaced; the other holes stay holes."""
    return _fill(node, table, {})


def _fill(node: Any, table: dict[int, A.Expr], indexed: dict[int, str]) -> Any:
    if isinstance(node, (A.Choice, A.Stack)) and id(node) in table:
        return table[id(node)]
    if isinstance(node, A.Choice):
        return node
    if isinstance(node, A.Stack) and id(node) in indexed and node.var is None:
        return replace(_fill_fields(node, table, indexed), var=indexed[id(node)])
    return _fill_fields(node, table, indexed)


def _fill_fields(node: Any, table: dict[int, A.Expr], indexed: dict[int, str]) -> Any:
    if isinstance(node, tuple):
        return tuple(_fill(x, table, indexed) for x in node)
    if isinstance(node, list):
        return [_fill(x, table, indexed) for x in node]
    if not (is_node(node) or isinstance(node, A.Module)):
        return node
    changed = {}
    for f in fields(node):
        old = getattr(node, f.name)
        new = _fill(old, table, indexed)
        if new is not old:
            changed[f.name] = new
    return replace(node, **changed) if changed else node
