"""The elaborator's state: what it has made so far, and the limits on making more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archc.elaborate import connect as C
from archc.elaborate import forecast
from archc.elaborate.inits import Rules
from archc.elaborate.values import BlockFn, OpFn, SlotFn, Tensor, describe
from archc.errors import ArchError, Span
from archc.ir.graph import Guard, Node, ParamDecl, ScopeInfo
from archc.ir.types import TensorType
from archc.ir.verify import MAX_NODES
from archc.sizes import Size

PARAM_TYPES = ("int", "float", "bool", "str", "fn", "block", "axis", "list", "connection")

ANNOTATIONS = ("scope", "init", "dtype", "no_fuse", "sparse", "deploy", "name", "fused",
               "constant")  # fused: set by mark_epilogues; constant: by hoist_constants


@dataclass(frozen=True)
class Limits:
    max_nodes: int = MAX_NODES
    max_steps: int = 2_000_000
    max_depth: int = 64
    max_params: int = 10**11  # parameter elements


class State:
    """What the elaboration has made so far (values, op nodes, parameters, scopes), and its bounds."""

    def __init__(self, limits: Limits | None = None, dtype: str = "f32") -> None:
        self.limits = limits or Limits()
        self.dtype = dtype  # the build's floating-point dtype (archc/elaborate/dtypes.py)
        self.nodes: list[Node] = []
        self.values: dict[str, TensorType] = {}
        self.params: dict[str, ParamDecl] = {}
        self.param_owner: dict[str, Span | None] = {}
        self.scopes: dict[str, ScopeInfo] = {}
        self.counters: dict[str, dict[str, int]] = {}  # prefix -> base -> instances named so far
        self.applying: dict[int, int] = {}  # block definition (by id) -> its applications in progress
        self.forecasts: dict[Any, forecast.Cost] = {}  # see archc.elaborate.forecast
        self.in_progress: list[forecast.Application] = []  # block applications, outermost first
        self.guards: dict[tuple[str, str, int], Guard] = {}  # what the run time must check (archc.guards)
        self.foreseen = False
        self.init_rules: dict[int, Rules] = {}  # the `@init` annotations being elaborated (by id), evaluated
        self.sparse_used: set[int] = set()  # the @sparse annotations (by id) that reached a weight
        self.inits_used: set[int] = set()  # the @init annotations (by id) that initialized something
        self.under: dict[str, set[str]] = {}  # scope -> the counter prefixes at or below it
        self.steps = 0
        self.depth = 0
        self.nesting = 0  # expressions being evaluated, across all blocks being applied
        self.param_elems = 0
        self.span: Span | None = None  # the statement being elaborated, for limit errors
        self.connect: list[C.Context] = []  # stacks being wired by a connection policy

    def new_value(self, t: TensorType) -> Tensor:
        vid = f"%{len(self.values)}"
        self.values[vid] = t
        return Tensor(vid, t)

    def tick(self, span: Span | None, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > self.limits.max_steps:
            raise ArchError(f"elaboration takes more than {self.limits.max_steps} steps "
                            "(a loop or stack is too large)", span or self.span)


def jsonable(v: Any) -> Any:
    if isinstance(v, Size):
        return v.to_json()
    if isinstance(v, tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, SlotFn):
        return jsonable(v.inner)
    if isinstance(v, C.Policy):
        return str(v)
    if isinstance(v, BlockFn):
        return v.template.definition.name
    if isinstance(v, OpFn):
        return v.op.name
    return describe(v)
