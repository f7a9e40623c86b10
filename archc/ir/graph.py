"""The IR graph: a typed SSA graph of op nodes, with parameters named by scope.

Values are named `%N` strings and typed in `Graph.values`. Each node names its op (from the one
registry in `archc.ops`), its inputs and outputs, attributes validated by that op, the parameters
it uses (role -> full parameter name), its scope path (`blocks.3.attn.qkv`) and the source span it
came from. The graph dumps to and loads from JSON with a schema version.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from archc.errors import Span
from archc.ir.names import check_graph_names
from archc.ir.types import DTYPE_BYTES, TensorType

SCHEMA_VERSION = 2  # 2: scopes carry their block structure (calls, key)


class SpanModel(BaseModel):
    model_config = ConfigDict(frozen=True)
    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    @staticmethod
    def of(span: Span | None) -> "SpanModel | None":
        if span is None:
            return None
        return SpanModel(file=span.file, line=span.line, col=span.col, end_line=span.end_line, end_col=span.end_col)

    def to_span(self) -> Span:
        return Span(self.file, self.line, self.col, self.end_line, self.end_col)


class AnnotationIR(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Node(BaseModel):
    model_config = ConfigDict(frozen=True)
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict)
    scope: str = ""
    span: SpanModel | None = None
    annotations: tuple[AnnotationIR, ...] = ()

    def param_owners(self) -> set[str]:
        """The instances whose parameters this node uses (its own scope, unless `tied=`)."""
        return {name[: -len(role) - 1] if role else name for role, name in self.params.items()}

    @model_validator(mode="after")
    def _attrs_valid(self) -> "Node":
        from archc.ops import registry  # the op registry validates attributes
        from archc.ops.registry import OpError

        if not registry.has(self.op):  # a ValueError, so that a loaded file says which op
            raise ValueError(f"unknown op '{self.op}'")
        try:
            attrs = registry.get(self.op).canonical_attrs(self.attrs)
        except OpError as e:
            raise ValueError(e.message) from None
        object.__setattr__(self, "attrs", attrs)
        return self


class ParamDecl(BaseModel):
    """A learned tensor (trainable) or a buffer (running statistics), with its initializer."""

    model_config = ConfigDict(frozen=True)
    name: str
    shape: tuple[int, ...]
    dtype: str = "f32"
    init: str = "zeros"
    trainable: bool = True

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


class Port(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    value: str
    type: TensorType


class BlockCall(BaseModel):
    """One application of a block instance: its nodes `[start, stop)` of the graph, the values that
    enter it and the values that leave it (see archc/ir/blocks.py)."""

    model_config = ConfigDict(frozen=True)
    start: int
    stop: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class ScopeInfo(BaseModel):
    """A named instance in the module tree: which block or op it is, with what arguments."""

    model_config = ConfigDict(frozen=True)
    path: str
    kind: str  # block name, op name, "stack", or a connection policy's name
    args: dict[str, Any] = Field(default_factory=dict)
    span: SpanModel | None = None
    slot: str | None = None  # the interface-typed parameter this instance fills: "mixer: TokenMixer"
    applied: int = 1  # how many times the spec applies this block instance (a shared one: more)
    calls: tuple[BlockCall, ...] = ()  # a block instance's applications, where it can be called
    key: str = ""  # structural key: equal for instances that compute the same thing


class Guard(BaseModel):
    """A condition on a symbolic size that only the run time can check (see archc.guards): `size`
    (a polynomial in the model's axes, as printed) must be divisible by, at most or at least `bound`.
    `why` and `span` name the op that needs it."""

    model_config = ConfigDict(frozen=True)
    size: str
    kind: Literal["divisible", "at_most", "at_least"]
    bound: int = Field(strict=True, ge=1)
    why: str = ""
    span: SpanModel | None = None

    @property
    def condition(self) -> str:
        from archc.guards import text

        return text(self.kind, self.size, self.bound)


class Graph(BaseModel):
    model_config = ConfigDict(frozen=True)
    schema_version: int = Field(default=SCHEMA_VERSION, strict=True)  # 2, never "2", 2.0 or true
    name: str
    axes: tuple[str, ...] = ()  # symbolic axes that stay unknown until run time (B, T)
    model_args: dict[str, Any] = Field(default_factory=dict)
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    values: dict[str, TensorType]
    nodes: tuple[Node, ...]
    params: dict[str, ParamDecl] = Field(default_factory=dict)
    scopes: dict[str, ScopeInfo] = Field(default_factory=dict)
    guards: tuple[Guard, ...] = ()  # what the run time must check of the symbolic sizes (archc.guards)

    @model_validator(mode="after")
    def _version(self) -> "Graph":
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"IR schema version {self.schema_version} is not {SCHEMA_VERSION}: the file was written "
                             "by another archc; write it again with `archc ir` from the spec")
        check_graph_names(self)
        return self

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self, indent: int | None = 1) -> str:
        return self.model_dump_json(indent=indent)

    @staticmethod
    def from_json(text: str) -> "Graph":
        """The graph a JSON text holds, validated field by field (pydantic). A file from outside
        is loaded with `archc.ir.verify.load_json`, which also verifies it and bounds its work."""
        return Graph.model_validate_json(text)

    def structural_dict(self) -> dict[str, Any]:
        """The graph without source spans: what 'same IR' means across print and re-parse."""
        data = json.loads(self.model_dump_json())
        for node in data["nodes"]:
            node.pop("span", None)
        for scope in data["scopes"].values():
            scope.pop("span", None)
        for guard in data["guards"]:
            guard.pop("span", None)
        return data

    # -- queries --------------------------------------------------------------------------------
    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs}

    def users(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {v: [] for v in self.values}
        for n in self.nodes:
            for i in n.inputs:
                users.setdefault(i, []).append(n)
        return users

    def param_count(self, trainable_only: bool = True) -> int:
        return sum(p.numel for p in self.params.values() if p.trainable or not trainable_only)
