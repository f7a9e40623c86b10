"""The one registry of ops. An op is one class: attributes, shape rule, parameters, FLOPs,
linearity, elementwise form and its torch spelling. Adding an op is one class and its tests.

    @register
    class Relu(Op):
        name = "relu"
        elementwise = "max(x, 0)"
        torch = "F.relu({x})"
        def infer(self, a, ins): return [ins[0]]
"""

from __future__ import annotations

import sys

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from archc.ir.types import TensorType
from archc.sizes import Size, SizeError


class OpError(Exception):
    """A shape, dtype or attribute error raised by an op rule; the elaborator adds the span."""

    def __init__(self, message: str, hint: str | None = None, where: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint
        self.where = where  # the argument at fault, outermost first (`sizes`, `h`), when one is


# The initializers a parameter may name, with their arguments in order: None where one must be
# given, else its default. `normal(0.02)` is N(0, 0.02^2); `normal(0.1, 0.1)` is N(0.1, 0.1^2);
# `trunc_normal(std, a, b)` is torch's and timm's trunc_normal_ (cut at a and b, -2 and 2 unless
# given: absolute values, not multiples of std); `kaiming_normal` is He et al.'s N(0, 2 / fan_out)
# with torch's fan_out (out channels x kernel elements), as timm's and torchvision's ResNet.
# Backends spell each one (backends/torch/inits.py).
INITIALIZERS: dict[str, tuple[float | None, ...]] = {
    "zeros": (), "ones": (), "const": (None,), "normal": (None, 0.0), "trunc_normal": (None, -2.0, 2.0),
    "uniform": (None,), "kaiming_normal": (), "xavier_uniform": (), "eye": (), "onehot": (None,), "hc_alpha": (None,), "lastcol": (),
    # a `weight_mask` (@sparse, archc/ir/sparsity.py), computed from the weight beside it
    "nm_mask": (None, None), "magnitude_mask": (None,), "block_mask": (None, None, None)}


def init_args(init: str) -> tuple[str, list[float]]:
    """The name and the arguments (defaults filled in) of an initializer string; ValueError unless
    it is `name` or `name(number, ...)` with a known name and a number of arguments it takes."""
    import re

    m = re.fullmatch(r"\s*([a-z_]+)\s*(?:\((.*)\))?\s*", init)
    if not m or m.group(1) not in INITIALIZERS:
        raise ValueError(f"unknown initializer '{init}'; the initializers are {', '.join(INITIALIZERS)}")
    name, defaults = m.group(1), INITIALIZERS[m.group(1)]
    args = [a for a in (m.group(2) or "").split(",") if a.strip()]
    need = sum(1 for d in defaults if d is None)
    if not need <= len(args) <= len(defaults):
        count = f"{need}" if need == len(defaults) else f"{need} to {len(defaults)}"
        raise ValueError(f"initializer '{name}' takes {count} argument(s), got '{init}'")
    try:
        values = [float(a) for a in args]
    except ValueError:
        raise ValueError(f"initializer '{name}' takes numbers, got '{init}'") from None
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise ValueError(f"initializer '{name}' takes finite numbers, got '{init}'")
    full = values + [d for d in defaults[len(values):] if d is not None]
    if name in ("normal", "trunc_normal", "uniform") and full[0] < 0:  # torch refuses them when it runs
        raise ValueError(f"initializer '{name}': its {'bound' if name == 'uniform' else 'std'} must be >= 0, "
                         f"got '{init}'")
    if name == "trunc_normal" and full[0] == 0:  # torch divides by it
        raise ValueError(f"initializer 'trunc_normal': its std must be > 0 (zeros is 'zeros'), got '{init}'")
    if name == "trunc_normal" and full[1] >= full[2]:
        raise ValueError(f"initializer 'trunc_normal': its bounds must have a < b, got '{init}'")
    return name, full


def check_init(init: str) -> str:
    """Raise ValueError unless `init` is a known initializer with arguments it takes."""
    init_args(init)
    return init


def init_text(name: str, args: list[float]) -> str:
    """The canonical initializer string: `normal(0.02)`, `zeros`; trailing defaults left out."""
    defaults = INITIALIZERS[name]
    while args and len(args) > sum(1 for d in defaults if d is None) and args[-1] == defaults[len(args) - 1]:
        args = args[:-1]
    return f"{name}({', '.join(repr(float(a)) for a in args)})" if args else name


class NoAttrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class ParamSpec:
    """A tensor an op owns: trainable parameter or buffer, with its initializer."""

    shape: tuple[int, ...]
    init: str = "zeros"
    trainable: bool = True
    dtype: str = "f32"


class Op:
    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ("x",)  # tensor inputs; "*xs" variadic, "y?" optional
    Attrs: ClassVar[type[BaseModel]] = NoAttrs
    linear: ClassVar[bool] = False  # linear in its input (for re-parameterization)
    elementwise: ClassVar[str | None] = None  # scalar expression in x (and y), for fusion
    torch: ClassVar[str] = ""  # python expression; {x} {y} inputs, {weight} params, {attr} attrs
    torch_inplace: ClassVar[str] = ""  # the same, overwriting its first input {x} (see torch_inplace_expr)
    fresh: ClassVar[bool] = False  # returns a new tensor that its backward never reads (may be overwritten)
    shape_only: ClassVar[bool] = False  # reads of its inputs only their device and sizes (arange, full)
    returns_param: ClassVar[bool] = False  # returns (a view of) its own parameter: no module of its own
    onednn: ClassVar[str] = ""  # its name as a oneDNN post-op of a convolution or linear (CPU -O2), "" if none
    doc: ClassVar[str] = ""

    # -- the rules each op states ---------------------------------------------------------------
    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        raise NotImplementedError

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        return {}

    def stochastic(self, a: Any) -> bool:
        """Does the op draw random numbers (dropout in training)? Such an op is never hoisted."""
        return False

    def active_params(self, a: Any, ins: list[TensorType]) -> int | None:
        """The parameter elements one input row uses, for an op that uses a part of its weights per
        input (a mixture of experts, a fast feedforward tree); None: all of them."""
        return None

    def buffer_elements(self, a: Any, ins: list[TensorType]) -> Size | None:
        """Elements of a working buffer the op's lowering allocates besides its inputs and outputs
        (the batched mixture of experts' [E, C, D] dispatch buffer); None: none worth stating."""
        return None

    def flops(self, a: Any, ins: list[TensorType], outs: list[TensorType]) -> Size:
        """FLOPs as torch.utils.flop_counter counts them (matmuls and convs; 0 elsewhere)."""
        return Size.of(0)

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        """The op as a torch expression over input and parameter expressions."""
        names = [i.strip("*?") for i in self.inputs]
        fields = {k: repr(v) for k, v in a.model_dump().items()}
        if self.variadic:
            return self.torch.format(xs="[" + ", ".join(ins) + "]", **params, **fields)
        values = dict(zip(names, ins))
        return self.torch.format(**values, **params, **fields)

    def torch_module(self, a: Any, roles: frozenset[str], types: list[TensorType]) -> str | None:
        """The torch module that computes this op on its one input with parameters of the same
        names (`nn.Linear(768, 2304, bias=True)`), or None. `roles` are the parameters the node
        has (a pass may have added a bias). The module's forward must equal `torch_expr` bit for
        bit: the torch backend calls it instead, so hooks, PEFT and tensor parallelism see it."""
        return None

    def onednn_postop(self, a: Any) -> tuple[str, str] | None:
        """(post-op, algorithm) of this op as a oneDNN eltwise post-op (`("gelu", "tanh")`), or None."""
        return (self.onednn, "") if self.onednn else None

    def torch_inplace_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str | None:
        """The op overwriting its first input (`F.relu(x, inplace=True)`), or None if it has no
        such spelling. Bit-identical to `torch_expr`; the torch emitter uses it only where that
        input is dead afterwards, `fresh`, read by nothing else and of the output's type."""
        if not self.torch_inplace:
            return None
        names = [i.strip("*?") for i in self.inputs]
        fields = {k: repr(v) for k, v in a.model_dump().items()}
        return self.torch_inplace.format(**dict(zip(names, ins)), **params, **fields)

    # -- shared machinery -----------------------------------------------------------------------
    @property
    def variadic(self) -> bool:
        return any(i.startswith("*") for i in self.inputs)

    @property
    def min_inputs(self) -> int:
        return sum(1 for i in self.inputs if not i.endswith("?") and not i.startswith("*")) + (
            1 if self.variadic else 0)

    @property
    def max_inputs(self) -> int | None:
        return None if self.variadic else len(self.inputs)

    def attr_names(self) -> list[str]:
        return list(self.Attrs.model_fields)

    def make_attrs(self, values: dict[str, Any], strict: bool = False) -> BaseModel:
        """Validate attributes. `strict` (for values written in a spec) refuses conversions such
        as "64" -> 64 or 1 -> True; IR loaded from JSON is validated leniently."""
        try:
            return self.Attrs.model_validate(values, strict=strict)
        except ValidationError as e:
            where = tuple(str(p) for p in (e.errors()[0]["loc"] if e.errors() else ()))
            raise OpError(_validation_message(self.name, e), where=where) from None

    def canonical_attrs(self, values: dict[str, Any]) -> dict[str, Any]:
        return self.make_attrs(values).model_dump(mode="json")


_KINDS = {"int": "an int", "float": "a number", "str": "a string", "bool": "a bool", "none": "none",
          "tuple[int, ...]": "a list of ints"}


def _validation_message(op: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "arguments"
    if first["type"] == "extra_forbidden":
        return f"{op}() has no argument '{loc}'"
    if first["type"] == "missing":
        return f"{op}() is missing its argument '{loc}'"
    value = first.get("input")
    if not first["loc"]:  # a check across arguments (a model validator)
        return f"{op}(): {first['msg'].removeprefix('Value error, ')}"
    name = str(first["loc"][0]) + "".join(f"[{p}]" for p in first["loc"][1:] if isinstance(p, int))
    if isinstance(value, Size):
        return f"{op}() argument '{name}' must be a known integer, got the symbolic size '{value}'"
    same = [e for e in err.errors() if e["loc"][:1] == first["loc"][:1]]
    if len(same) > 1:  # a union: name the kinds of value it takes
        kinds = [_KINDS.get(str(e["loc"][1]), str(e["loc"][1]).removeprefix("literal[").removesuffix("]"))
                 for e in same if len(e["loc"]) > 1]
        return f"{op}() argument '{name}' must be {' or '.join(dict.fromkeys(kinds))}, got {value!r}"
    return f"{op}() argument '{name}': {first['msg'].lower().removeprefix('value error, ')} (got {value!r})"


_REGISTRY: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"op '{cls.name}' is defined twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Op:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(name) from None


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def has(name: str) -> bool:
    _load()
    return name in _REGISTRY


def _load() -> None:
    # every family, once: not "while the registry is empty", since importing one family first
    # (`from archc.ops.conditional import ...`) registers its ops alone
    if "archc.ops.defs" not in sys.modules:
        import archc.ops.defs  # noqa: F401  (registers every op)


# -- helpers the op rules share -----------------------------------------------------------------
def known(size: Size, what: str) -> int:
    """The integer value of a size an op needs to know at compile time."""
    try:
        return size.value
    except SizeError:
        raise OpError(f"{what} must be a known size, got '{size}'") from None


def norm_dim(dim: int, rank: int, op: str) -> int:
    if not -rank <= dim < rank:
        raise OpError(f"{op}: dim {dim} is out of range for a tensor of rank {rank}")
    return dim % rank


def need_rank(t: TensorType, rank: int, op: str, layout: str) -> None:
    if t.rank != rank:
        raise OpError(f"{op} expects a rank-{rank} tensor {layout}, got {t}")


def need_float(t: TensorType, op: str) -> None:
    if not t.is_float:
        raise OpError(f"{op} expects a floating-point tensor, got {t}")


def broadcast(a: TensorType, b: TensorType, op: str) -> TensorType:
    """numpy broadcasting over sizes; names follow the operand that carries the axis."""
    ra, rb = a.rank, b.rank
    out_dims = []
    for i in range(max(ra, rb)):
        da = a.shape[ra - 1 - i] if i < ra else None
        db = b.shape[rb - 1 - i] if i < rb else None
        if da is None:
            out_dims.append(db)
        elif db is None:
            out_dims.append(da)
        elif da.size == db.size:
            out_dims.append(da if da.name else db)  # equal sizes: keep whichever axis has a name
        elif db.size == 1:
            out_dims.append(da)
        elif da.size == 1:
            out_dims.append(db)
        else:
            raise OpError(f"{op}: cannot broadcast {a} with {b} "
                          f"(axis {max(ra, rb) - i}: {da.size} vs {db.size})")
    return TensorType(dtype=promote(a.dtype, b.dtype, op), shape=tuple(reversed(out_dims)))  # type: ignore[arg-type]


# torch's type promotion (torch.promote_types) over archc's dtypes: bool < integers < floats; within
# a kind, the wider type. Pairs whose result archc has no name for (u8 with i8 gives int16) are errors.
_KIND = {"bool": 0, "u8": 1, "i8": 1, "i32": 1, "i64": 1, "f16": 2, "bf16": 2, "f32": 2, "f64": 2}
_SAME_KIND = {frozenset(("u8", "i32")): "i32", frozenset(("u8", "i64")): "i64", frozenset(("i8", "i32")): "i32",
              frozenset(("i8", "i64")): "i64", frozenset(("i32", "i64")): "i64", frozenset(("f16", "bf16")): "f32",
              frozenset(("f16", "f32")): "f32", frozenset(("bf16", "f32")): "f32", frozenset(("f16", "f64")): "f64",
              frozenset(("bf16", "f64")): "f64", frozenset(("f32", "f64")): "f64"}


def promote(a: str, b: str, op: str) -> str:
    """The dtype torch gives an elementwise op on tensors of dtypes `a` and `b`."""
    if a == b:
        return a
    ka, kb = _KIND[a], _KIND[b]
    if ka != kb:
        return a if ka > kb else b
    out = _SAME_KIND.get(frozenset((a, b)))
    if out is None:
        raise OpError(f"{op}: {a} with {b} gives torch's int16, which archc has no dtype for",
                      hint="give both operands the same dtype")
    return out


def promote_scalar(dtype: str, scalar: float | int | bool) -> str:
    """The dtype torch gives a tensor of `dtype` with a Python scalar: the tensor's, unless the
    scalar is of a higher kind (an int tensor with a float gives torch's default dtype, f32)."""
    kind = 2 if isinstance(scalar, float) else 0 if isinstance(scalar, bool) else 1
    if kind <= _KIND[dtype]:
        return dtype
    return "f32" if kind == 2 else "i64"


def numel(t: TensorType, what: str = "tensor") -> int:
    return known(t.numel(), what)
