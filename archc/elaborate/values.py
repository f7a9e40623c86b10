"""What an expression evaluates to during elaboration.

Compile-time values are plain Python (int, float, bool, str, tuple) or `Size` for symbolic axis
sizes. Run-time values are `Tensor`s (an IR value and its type). Callables are partially applied
ops, block instances, pipelines and stacks; a callable bound to a name is a *named instance* whose
scope path names its parameters, and applying it twice shares them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Union

from archc.errors import Span
from archc.frontend import ast as A
from archc.ir.types import TensorType

if TYPE_CHECKING:
    from archc.elaborate.loader import ModuleEnv
    from archc.ops.registry import Op


@dataclass(frozen=True)
class Tensor:
    id: str
    type: TensorType


@dataclass(frozen=True)
class BlockTemplate:
    """A block definition not yet given its parameters (the name `Mlp`)."""

    definition: A.BlockDef
    module: "ModuleEnv"


@dataclass(frozen=True)
class InterfaceRef:
    definition: A.InterfaceDef
    module: "ModuleEnv"


@dataclass(frozen=True)
class ModuleRef:
    """`import "x.arch" as ns`: names are reached as `ns.Name`."""

    module: "ModuleEnv"


@dataclass(frozen=True)
class Builtin:
    name: str


@dataclass(frozen=True)
class OpFn:
    op: "Op"
    kwargs: dict[str, Any]
    bound: tuple[Tensor, ...] = ()
    scope: str | None = None
    span: Span | None = None
    tied: str | None = None  # `tied=wte`: use the parameters of the instance at this path
    inits: tuple[tuple[str, str, bool, Span | None], ...] = ()  # `init=`, `<role>_init=`: see archc/elaborate/inits.py


@dataclass(frozen=True)
class BlockFn:
    template: BlockTemplate
    params: dict[str, Any]
    scope: str | None = None
    span: Span | None = None


@dataclass(frozen=True)
class PipeFn:
    stages: tuple["Callable", ...]
    scope: str | None = None
    span: Span | None = None
    numbered: bool = False  # sequential(...): stages are children 0, 1, 2


@dataclass(frozen=True)
class StackFn:
    count: int
    var: str | None
    body: A.Expr
    frame: Any  # the Frame the body is evaluated in, once per layer
    connect: Any = None
    scope: str | None = None
    span: Span | None = None


@dataclass(frozen=True)
class SlotFn:
    """A callable passed for an interface-typed parameter; checked against it when applied."""

    interface: InterfaceRef
    inner: "Callable"
    param: str
    scope: str | None = None
    span: Span | None = None


@dataclass(frozen=True)
class ResidualFn:
    """`residual(f)`: x + f(x)."""

    inner: "Callable"
    scope: str | None = None
    span: Span | None = None


@dataclass(frozen=True)
class MoeFn:
    """`moe(E, expert)`: E instances of the expert (children 0 .. E-1), applied to
    (x, weights, indices) as a mixture of experts (archc/elaborate/moe.py)."""

    count: int
    expert: "Callable"
    capacity: float | None = None
    scope: str | None = None
    span: Span | None = None


Callable = Union[OpFn, BlockFn, PipeFn, StackFn, SlotFn, ResidualFn, MoeFn]
CALLABLES = (OpFn, BlockFn, PipeFn, StackFn, SlotFn, ResidualFn, MoeFn)


def join_scope(scope: str, name: str) -> str:
    """`blocks.3` + `attn` -> `blocks.3.attn`; the model's own scope is empty, and an empty name
    is the scope itself (`@scope("")` in a block: its own instance)."""
    return f"{scope}.{name}" if scope and name else scope or name


def snake(name: str) -> str:
    """The instance name of an anonymous block: `MlpBlock` -> `mlp_block`."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def named(fn: Callable, scope: str) -> Callable:
    """A named instance of fn (an already named instance keeps its name: it is shared)."""
    return fn if fn.scope is not None else replace(fn, scope=scope)


def describe(value: Any) -> str:
    """How a value is named in an error message."""
    if isinstance(value, Tensor):
        return f"a tensor {value.type}"
    if isinstance(value, bool):
        return f"the bool {str(value).lower()}"
    if isinstance(value, int):
        return f"the int {value}"
    if isinstance(value, float):
        return f"the float {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    if isinstance(value, OpFn):
        return f"the op '{value.op.name}'"
    if isinstance(value, (BlockFn, BlockTemplate)):
        d = value.template.definition if isinstance(value, BlockFn) else value.definition
        return f"the block '{d.name}'"
    if isinstance(value, InterfaceRef):
        return f"the interface '{value.definition.name}'"
    if isinstance(value, ModuleRef):
        return "an imported module"
    if isinstance(value, CALLABLES):
        return "a callable"
    if isinstance(value, Builtin):
        return f"the builtin '{value.name}'"
    if type(value).__name__ == "Policy":  # archc.elaborate.connect imports this module
        return f"the connection policy '{value}'"
    if type(value).__name__ == "Size":
        return f"the symbolic size '{value}'"
    return type(value).__name__


@dataclass
class Frame:
    """The variables of one block application (or of a module, for defaults and `let`)."""

    module: "ModuleEnv"
    scope: str
    vars: dict[str, Any] = field(default_factory=dict)
    loop: tuple[int, ...] = ()
    instances: set[str] = field(default_factory=set)
    annotations: tuple[A.Annotation, ...] = ()
    forced_scope: str | None = None
    block: str = ""
    target: str | None = None  # the name being assigned, while its value is evaluated
    target_exact: bool = False  # the target is a built name (`denselayer{i + 1}`): no loop indices appended
    scope_used: bool = False  # the statement's @scope named an instance it bound
