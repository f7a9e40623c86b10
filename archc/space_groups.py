"""Independent groups of a search space's holes: the model's stacks whose holes nothing else reads.

A *region* is a stack written in the model's own body (not inside another stack) that, read from
the spec, shares nothing with the rest of the model but its input:

- it reads no name the model's body binds (an assigned name, a `for` variable, an input port):
  so no tensor or named instance (shared weights) crosses into it;
- the model's parameters it reads are ints, floats, bools or strings, or read nowhere else; a
  top-level `let` it reads is a literal (or a choice of literals);
- nothing else instantiates the model (so its stacks are elaborated once per model), and the
  model gives no explicit paths (`@scope`: two uses of a path share their weights).

Its holes are the holes inside it (its depth, `connect=`, its body) and the defaults of the
model's parameters that only it reads; its per-layer holes go with it. The other holes form the
*outer group*. archc/space_probe.py then checks on the IR of every probe that each application of
the stack keeps its input's type (else the region is merged back into the outer group), which is
what makes the groups independent: whatever a region picks, the rest of the model sees the same
types, and the region sees the same input whatever the other regions pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from archc.frontend import ast as A
from archc.frontend.holes import Hole, is_node

SCALARS = {"int", "float", "bool", "str"}
TYING = {"scope"}  # annotations that give an explicit path: the model then has no regions


@dataclass(frozen=True, eq=False)
class Region:
    """A stack of the model whose holes are independent of the other regions' (given the outer group)."""

    stack: A.Stack
    holes: tuple[Hole, ...]  # its holes but the per-layer ones, in source order
    families: tuple[Hole, ...]  # the per-layer holes of it and of the stacks inside it

    @property
    def all_holes(self) -> tuple[Hole, ...]:
        return self.holes + self.families


def find_regions(module: A.Module, holes: list[Hole], model: str | None) -> list[Region]:
    """The regions of the model `module` elaborates (none when it is not clear which model)."""
    entry = _entry(module, model)
    if entry is None or any(isinstance(n, A.Name) and n.id == entry.name for item in module.items
                            if item is not entry for n in A.walk(item)):
        return []
    bound = _bound(entry, module)
    if bound is None or any(isinstance(n, A.Annotation) and n.name in TYING for n in A.walk(entry)):
        return []  # an explicit path may tie weights across stacks (two uses of a path share them)
    params = {f.name: f for f in entry.params}
    lets = {item.name: item for item in module.items if isinstance(item, A.Let)}
    regions = []
    for stack in _top_stacks(entry.body):
        inside = {id(n) for n in A.walk(stack)}
        reads = _reads(stack)
        if reads & bound or any(not _literal(lets[n].value) for n in reads & lets.keys() - params.keys()):
            continue
        own: list[Hole] = []
        shared = False
        for name in sorted(reads & params.keys()):
            elsewhere = any(isinstance(n, A.Name) and n.id == name and id(n) not in inside for n in A.walk(entry))
            formal = params[name]
            if elsewhere and getattr(formal.type, "name", None) not in SCALARS:
                shared = True
            elif not elsewhere and isinstance(formal.default, A.Choice):
                own.extend(h for h in holes if h.choice is formal.default)
        if shared:
            continue
        own.extend(h for h in holes if not h.per_layer and id(h.choice) in inside)
        family = tuple(h for h in holes if h.stack is not None and id(h.stack) in inside)
        if own or family:
            order = {id(h): i for i, h in enumerate(holes)}
            regions.append(Region(stack, tuple(sorted(own, key=lambda h: order[id(h)])), family))
    return regions


def shared_with_layers(module: A.Module, holes: list[Hole]) -> tuple[A.Stack, str] | None:
    """A per-layer stack whose body reads a name its block binds (a named instance: weights its
    layers share, whose parameters count once however many layers use them), and the name."""
    for stack in {id(h.stack): h.stack for h in holes if h.stack is not None}.values():
        block = next((b for b in module.items if isinstance(b, A.BlockDef) and any(n is stack for n in A.walk(b))),
                     None)
        bound = _bound(block, module) if block is not None else None
        if bound is None:
            continue
        names = sorted(_reads(stack) & bound - ({stack.var} if stack.var else set()))
        if names:
            return stack, names[0]
    return None


def _entry(module: A.Module, model: str | None) -> A.BlockDef | None:
    blocks = [b for b in module.items if isinstance(b, A.BlockDef)]
    if model is not None:
        return next((b for b in blocks if b.name == model), None)
    models = [b for b in blocks if b.kind == "model"]
    return models[0] if len(models) == 1 else None


def _bound(entry: A.BlockDef, module: A.Module) -> set[str] | None:
    """The names the model's body binds (None when a formatted name makes that unclear)."""
    names: set[str] = set()
    ports = entry.ports
    if ports is None:
        face = next((i for i in module.items if isinstance(i, A.InterfaceDef) and i.name == entry.implements), None)
        if face is None:
            return None
        ports = face.ports
    names.update(f.name for f in ports)
    for s in _statements(entry.body):
        if isinstance(s, A.Assign):
            if any(f is not None for f in s.formats) or any("{" in t for t in s.targets):
                return None
            names.update(s.targets)
        elif isinstance(s, A.For):
            names.add(s.var)
    return names


def _statements(stmts: tuple[A.Stmt, ...]) -> Iterator[A.Stmt]:
    for s in stmts:
        yield s
        if isinstance(s, A.If):
            for _, body in s.branches:
                yield from _statements(body)
            yield from _statements(s.orelse or ())
        elif isinstance(s, A.For):
            yield from _statements(s.body)


def _top_stacks(node: Any) -> Iterator[A.Stack]:
    """The stacks in `node` that are not inside another stack."""
    if isinstance(node, A.Stack):
        yield node
        return
    for child in node if isinstance(node, (tuple, list)) else A.children(node) if is_node(node) else ():
        yield from _top_stacks(child)


def _reads(stack: A.Stack) -> set[str]:
    """The names a stack reads (its layers' index variables too: a name that is also bound
    outside keeps the stack out of the regions)."""
    return {n.id for n in A.walk(stack) if isinstance(n, A.Name)}


def _literal(expr: A.Expr) -> bool:
    if isinstance(expr, A.Choice):
        return all(_literal(o) for o in expr.options)
    return isinstance(expr, A.Const)
