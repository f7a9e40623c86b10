"""Foresee how much a block application will expand, before expanding it.

A block that applies itself twice per level (`x = F(n - 1)(x); x = F(n - 1)(x)`) makes 2**n ops,
and a ladder of blocks that each apply the one below twice does the same without recursion:
expanding either until a limit bites takes a minute. So a forecast counts what an application
will make in a dry run where each distinct application (block, parameters, input types) is
expanded once and then reused from a table: F(n) costs its body plus two look-ups, so counting
F(40) takes 41 bodies. An application whose count passes the node or step limit is a located
error at its call, before anything is built. The elaborator asks for a forecast when a block is
applied inside an application of itself, and once, for the outermost application in progress,
when an expansion has used an eighth of the step limit.

The count is a forecast, never a verdict on the spec: a dry run that meets any other error (or an
argument it cannot key) gives up, and the real expansion, with its own limits, decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from archc.errors import ArchError, Span
from archc.elaborate.values import BlockFn, OpFn, Tensor
from archc.ir.types import TensorType
from archc.sizes import Size

if TYPE_CHECKING:
    from archc.elaborate.elaborator import Elaborator
    from archc.frontend import ast as A

BLOCK_STEPS = 100  # what a block application counts against the step limit: as long as 100 plain steps

Cost = tuple[tuple[TensorType, ...], int, int]  # output types, ops, steps


class _Over(Exception):
    """The dry run passed the budget: `what` is 'ops' or 'steps'."""

    def __init__(self, what: str) -> None:
        self.what = what


class _Unkeyable(Exception):
    pass


def freeze(value: Any) -> Any:
    """A hashable, exact key for a compile-time value (or _Unkeyable)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return (type(value).__name__, value)
    if isinstance(value, Size):
        return ("size", str(value))
    if isinstance(value, (tuple, list)):
        return ("tuple",) + tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return ("dict",) + tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, BlockFn):
        return ("block", id(value.template.definition), freeze(value.params), value.scope)
    if isinstance(value, OpFn):
        return ("op", value.op.name, freeze(value.kwargs), tuple(t.type for t in value.bound), value.scope,
                value.tied, repr(getattr(value, "inits", ())))
    if isinstance(value, Tensor):
        return ("tensor", value.type)
    raise _Unkeyable()


def application_key(fn: BlockFn, types: tuple[TensorType, ...], annotations: tuple["A.Annotation", ...]) -> Any:
    return (id(fn.template.definition), freeze(fn.params), types, tuple(id(a) for a in annotations))


@dataclass(frozen=True)
class Application:
    """A block application in progress, as it started (what a forecast replays)."""

    fn: BlockFn
    types: tuple[TensorType, ...]
    span: Span | None
    scope: str
    annotations: tuple["A.Annotation", ...]
    nodes: int  # ops made before it started
    steps: int
    depth: int


def foresee(real: "Elaborator", app: Application, recursive: bool) -> None:
    """Raise a located error when `app` would pass the node or step limit, counting from where it
    started; a forecast that cannot be made (an unkeyable argument, any other error) says nothing."""
    try:
        key = application_key(app.fn, app.types, app.annotations)
    except _Unkeyable:
        return  # a dry run could reach frames the real expansion owns (a stack passed as an argument)
    seen = real.forecasts.get(key)
    if seen is not None and app.nodes + seen[1] <= real.limits.max_nodes and \
            app.steps + seen[2] <= real.limits.max_steps:
        return  # counted before, and it fits
    dry = _dry_run(real, app)
    try:
        dry.apply_block(app.fn, [dry.new_value(t) for t in app.types], app.span, app.scope, app.annotations)
    except _Over as over:
        name = app.fn.template.definition.name
        limit = f"{real.limits.max_nodes} ops" if over.what == "ops" else f"{real.limits.max_steps} steps"
        why = ("'{name}' applies itself: each level repeats the levels below it" if recursive else
               "its blocks apply blocks that apply blocks, each more than once")
        raise ArchError(f"applying '{name}' here would expand the model past the limit of {limit}", app.span,
                        why.format(name=name) + ("; the limit is set by --max-nodes" if over.what == "ops" else "")
                        ) from None
    except (ArchError, RecursionError):
        return  # not a forecast's business: the real expansion reports it where it happens
    finally:
        dry.reset_lets()


def _dry_run(real: "Elaborator", app: Application) -> "Elaborator":
    global _DryRun
    if _DryRun is None:
        _DryRun = _dry_run_class()
    return _DryRun(real, app)


_DryRun: Any = None


def _dry_run_class() -> type:
    from archc.elaborate.elaborator import Elaborator
    from archc.elaborate.loader import LazyLet

    class DryRun(Elaborator):
        """An elaborator that reuses the cost of applications it has seen (shared with `real`)."""

        def __init__(self, real: "Elaborator", app: Application) -> None:
            super().__init__(real.limits)
            self.real = real
            self.extra = 0  # ops counted from the table, not made
            self.nesting, self.depth = real.nesting, app.depth
            self.node_budget = real.limits.max_nodes - app.nodes
            self.step_budget = real.limits.max_steps - app.steps
            self.running: list[LazyLet] = []

        def foresee(self, app: Application, recursive: bool) -> None:
            pass  # the dry run is the forecast

        def tick(self, span: Span | None, steps: int = 1) -> None:
            self.steps += steps
            if self.steps > self.step_budget:
                raise _Over("steps")

        def let_value(self, let: LazyLet, env: Any) -> Any:
            if let.state == "new":
                self.running.append(let)
            return super().let_value(let, env)

        def reset_lets(self) -> None:
            """A `let` the dry run left half evaluated is evaluated again by the real expansion."""
            for let in self.running:
                if let.state == "running":
                    let.state = "new"

        def apply_op_fn(self, *args: Any, **kwargs: Any) -> Any:
            out = super().apply_op_fn(*args, **kwargs)
            self.check_nodes()
            return out

        def check_nodes(self) -> None:
            if len(self.nodes) + self.extra > self.node_budget:
                raise _Over("ops")

        def apply_block(self, fn: BlockFn, inputs: list[Tensor], span: Span | None, scope: str,
                        annotations: tuple["A.Annotation", ...] = ()) -> list[Tensor]:
            try:
                key = application_key(fn, tuple(t.type for t in inputs), annotations)
            except _Unkeyable:
                key = None
            seen = self.real.forecasts.get(key) if key is not None else None
            if seen is not None:
                types, ops, steps = seen
                self.extra += ops
                self.check_nodes()
                self.tick(span, steps)
                return [self.new_value(t) for t in types]
            ops0, steps0 = len(self.nodes) + self.extra, self.steps
            outs = super().apply_block(fn, inputs, span, scope, annotations)
            if key is not None:
                self.real.forecasts[key] = (tuple(t.type for t in outs), len(self.nodes) + self.extra - ops0,
                                       self.steps - steps0)
            return outs

    return DryRun
