"""Mixtures whose expert is any block: `experts = moe(E, Block(...))`, applied as
`experts(x, weights, indices)` with the routing of `moe_router`.

The mixture is elaborated as the per-expert loop written out as dataflow, so that every backend
runs it as ordinary ops and the module tree holds the experts themselves:

    for e in 0 .. E-1:
        x_e, positions_e, weights_e = moe_select(x, weights, indices, expert=e)   # [N_e, D]: fresh N_e
        y_e = experts.e(x_e)                        # the block, instance `<name>.e`: an nn.ModuleList
    y = moe_combine(x, y_0, positions_0, weights_0, ...)  # index_add of weight * y_e: [*, D']

The expert sees a token tensor whose leading axis is the routed-tokens axis `N_e` (ROUTED), a
symbol no other axis unifies with, so a block that needs more than `[tokens, D]` of its input is
a located type error at the application. Every expert is the same block on the same input type,
so the E instances are one class (one structural key) and the mixture's scope, of kind "moe",
has children exactly 0 .. E-1. moe_select and moe_combine run in the scope of the mixture.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from archc.elaborate.consteval import plain
from archc.elaborate.state import State
from archc.elaborate.values import BlockFn, Frame, MoeFn, OpFn, SlotFn, Tensor, describe, join_scope, named
from archc.errors import ArchError, Span
from archc.ir.types import TensorType
from archc.ops.conditional import MAX_EXPERTS, MOE_SCOPE, ROUTED
from archc.sizes import SizeError

PIPELINE = "Expert"  # the kind of an expert that is a pipeline (`linear(64) >> gelu >> linear(D)`)


def make_moe(el: Any, args: list[Any], kwargs: dict[str, Any], span: Span) -> MoeFn:
    """`moe(E, expert, capacity=none)`: the callable, checked; applied later to (x, weights, indices)."""
    usage = "moe(experts, expert, capacity=none): moe(8, Mlp(256)), then experts(x, weights, indices)"
    args = list(args)
    for i, key in enumerate(("experts", "expert")):
        if key in kwargs:
            if len(args) > i:
                raise ArchError(f"moe() is given '{key}' twice", span, usage)
            args.insert(i, kwargs.pop(key))
    capacity = plain(kwargs.pop("capacity", None))
    if kwargs:
        raise ArchError(f"moe() has no argument '{min(kwargs)}'", span, usage)
    if len(args) != 2:
        raise ArchError(f"moe() takes the number of experts and the expert, got {len(args)} argument(s)", span, usage)
    count, expert = plain(args[0]), el.as_callable(args[1], span)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_EXPERTS:
        raise ArchError(f"moe(): the number of experts must be an int from 1 to {MAX_EXPERTS}, got {describe(count)}",
                        span)
    if expert is None or isinstance(expert, MoeFn):
        raise ArchError(f"moe(): the expert must be a block or another callable, got {describe(args[1])}", span, usage)
    named_as = expert.scope or (expert.inner.scope if isinstance(expert, SlotFn) else None)
    if named_as is not None:
        raise ArchError(f"moe(): the expert is made {count} times, so it cannot be the named instance "
                        f"'{named_as}', whose weights are one", span,
                        "pass the block itself: moe(8, Mlp(256)), not a name bound to an instance")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, (int, float))
                                 or not capacity > 0):
        raise ArchError(f"moe(): capacity must be a positive number (a factor) or none, got {describe(capacity)}",
                        span)
    return MoeFn(count, expert, None if capacity is None else float(capacity), None, span)


class Mixtures(State):
    """Applies `moe(E, expert)` instances."""

    def apply_moe(self, fn: MoeFn, inputs: list[Tensor], frame: Frame, span: Span | None, prefix: str) -> Tensor:
        if len(inputs) != 3:
            raise ArchError(f"a mixture of experts takes (x, weights, indices), got {len(inputs)} tensor(s)",
                            span, "weights, indices = moe_router(logits, k); y = experts(x, weights, indices)")
        scope = fn.scope if fn.scope is not None else (
            frame.forced_scope if frame.forced_scope is not None else self.fresh(prefix, "experts"))
        self.restart(scope)
        name = _kind(fn.expert)
        if scope in self.scopes:  # a named mixture applied again: it shares its experts
            info = self.scopes[scope]
            if info.kind != MOE_SCOPE:
                raise ArchError(f"'{scope}' is already a {info.kind}, not a mixture of experts", span)
            self.scopes[scope] = info.model_copy(update={"applied": info.applied + 1})
        self.record_scope(scope, MOE_SCOPE, {"experts": fn.count, "expert": name,
                                             **({"capacity": fn.capacity} if fn.capacity is not None else {})},
                          fn.span)
        here = replace(frame, forced_scope=None, target=None, scope=scope)
        attrs = {"experts": fn.count, "axis": self.routed_axis(frame, fn.expert, inputs, fn.count),
                 **({"capacity": fn.capacity} if fn.capacity is not None else {})}
        parts: list[Tensor] = []
        for e in range(fn.count):
            routed, positions, weights = self.apply_op("moe_select", inputs, {**attrs, "expert": e}, here, span)
            path = join_scope(scope, str(e))
            if _anonymous(fn.expert):  # a pipeline records no scope of its own: the expert is one, a module
                self.record_scope(path, PIPELINE, {}, fn.span)
            try:
                out = self.apply(named(fn.expert, path), [routed], here, span, scope)
            except ArchError as err:
                if e == 0:  # the first expert is where a type error shows: say what the expert is given
                    given = f"the expert of moe() is applied to the tokens routed to it, {routed.type}, " \
                            f"whose axis {attrs['axis']} is its own"
                    err.notes.append((given, fn.span))
                raise
            if not isinstance(out, Tensor):
                raise ArchError(f"the expert of a mixture must return one tensor [N_e, ...], '{name}' returns "
                                f"{describe(out)}", span)
            parts += [out, positions, weights]
        return self.apply_op("moe_combine", [inputs[0], *parts], {}, here, span)

    def routed_axis(self, frame: Frame, expert: Any, inputs: list[Tensor], count: int) -> str:
        """The routed-tokens axis: one per balanced load (inputs, k, E), so that `archc summary` can
        give each its value while the experts of equal mixtures (a stack's layers) stay one class:
        ROUTED, then ROUTED1, ..., skipping the names of axes the spec declares."""
        load = _load(inputs[0].type, inputs[2].type, count)
        used: set[str] = set()
        for node in self.nodes:
            if node.op == "moe_select":
                axis = node.attrs["axis"]
                if load is not None and _load(self.values[node.inputs[0]], self.values[node.inputs[2]],
                                              node.attrs["experts"]) == load:
                    return axis
                used.add(axis)
        taken = used | set(frame.module.axes) | (set(expert.template.module.axes) if isinstance(expert, BlockFn)
                                                 else set())
        n = 0
        while (ROUTED + (str(n) if n else "")) in taken:
            n += 1
        return ROUTED + (str(n) if n else "")


def _load(x: TensorType, indices: TensorType, experts: int) -> tuple[str, str, int] | None:
    """What decides a mixture's balanced load: its number of inputs, k and E (None if not a mixture's
    inputs: moe_select says what is wrong with them)."""
    try:
        return str(x.numel() / x.sizes[-1]), str(indices.sizes[-1]), experts
    except (IndexError, SizeError, ZeroDivisionError):
        return None


def _anonymous(expert: Any) -> bool:
    """Is the expert a callable with no scope of its own (a pipeline), by what it is, not by its
    kind's name (a block may be called Expert)?"""
    return _anonymous(expert.inner) if isinstance(expert, SlotFn) else not isinstance(expert, (BlockFn, OpFn))


def _kind(expert: Any) -> str:
    """What the expert is, for the scope's arguments: its block, its op, or PIPELINE."""
    if isinstance(expert, BlockFn):
        return expert.template.definition.name
    if isinstance(expert, OpFn):
        return expert.op.name
    if isinstance(expert, SlotFn):
        return _kind(expert.inner)
    return PIPELINE

