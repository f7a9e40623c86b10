"""Ops that own parameters: linear, convolutions, normalizations, embeddings, learned tensors,
and attention. Shapes follow PyTorch's layouts (channels first for convs and batchnorm)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from archc import guards
from archc.ir.types import Dim, TensorType
from archc.ops.registry import (Op, OpError, ParamSpec, check_init, known, need_float, need_rank, norm_dim,
                                register)
from archc.sizes import Size


# a normalization's epsilon: a positive, finite number (a negative or NaN one makes NaNs at run time)
Eps = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


MAX_GEOMETRY = 2**31 - 1  # a kernel, stride, padding or dilation past this overflows torch's int32 kernels


class _Attrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _fan_in_uniform(fan_in: int) -> str:
    return f"uniform({1 / math.sqrt(max(fan_in, 1)):.10g})"  # torch's default for linear and conv


class LinearAttrs(_Attrs):
    features: int
    bias: bool = True

    @field_validator("features")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be positive")
        return v


@register
class Linear(Op):
    name = "linear"
    Attrs = LinearAttrs
    linear = True
    fresh = True
    torch = "F.linear({x}, {weight}, {bias})"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        if t.rank == 0:
            raise OpError("linear needs at least one axis")
        known(t.sizes[-1], "linear's input features (the last axis)")
        return [TensorType(dtype=t.dtype, shape=t.shape[:-1] + (Dim(size=Size.of(a.features)),))]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        fan_in = known(ins[0].sizes[-1], "linear's input features")
        out = {"weight": ParamSpec((a.features, fan_in), _fan_in_uniform(fan_in))}
        if a.bias:
            out["bias"] = ParamSpec((a.features,), _fan_in_uniform(fan_in))
        return out

    def flops(self, a: Any, ins: list[TensorType], outs: list[TensorType]) -> Size:
        return outs[0].numel() * (2 * known(ins[0].sizes[-1], "features"))

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return f"F.linear({ins[0]}, {params['weight']}, {params.get('bias', 'None')})"

    def torch_module(self, a: Any, roles: frozenset[str], types: list[TensorType]) -> str | None:
        if roles - {"weight", "bias"} or "weight" not in roles:
            return None
        fan_in = known(types[0].sizes[-1], "features")
        return f"nn.Linear({fan_in}, {a.features}, bias={'bias' in roles})"


def _pair(v: int | tuple[int, ...], n: int, what: str) -> tuple[int, ...]:
    out = (v,) * n if isinstance(v, int) else tuple(v)
    if len(out) != n:
        raise OpError(f"{what} needs {n} values, got {list(out)}")
    return out


class ConvAttrs(_Attrs):
    channels: PositiveInt
    kernel: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: int | tuple[int, ...] | Literal["same"] = 0
    dilation: int | tuple[int, ...] = 1
    groups: PositiveInt = 1
    bias: bool = True


class _Conv(Op):
    Attrs = ConvAttrs
    linear = True
    fresh = True
    ndim = 2

    def _geometry(self, a: Any) -> tuple[tuple[int, ...], ...]:
        n = self.ndim
        k, s, d = (_pair(v, n, f"{self.name} {w}") for v, w in
                   ((a.kernel, "kernel"), (a.stride, "stride"), (a.dilation, "dilation")))
        if a.padding == "same":
            if any(x != 1 for x in s):
                raise OpError(f"{self.name}: padding='same' needs stride 1")
            p = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
            if any((dd * (kk - 1)) % 2 for kk, dd in zip(k, d)):
                raise OpError(f"{self.name}: padding='same' needs an odd effective kernel size")
        else:
            p = _pair(a.padding, n, f"{self.name} padding")
        if min(k + s + d) <= 0 or min(p) < 0:
            raise OpError(f"{self.name}: kernel, stride and dilation must be positive, padding non-negative")
        if max(k + s + d + p) > MAX_GEOMETRY:
            raise OpError(f"{self.name}: kernel, stride, padding and dilation must be at most {MAX_GEOMETRY}")
        return k, s, p, d

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        layout = "[B, C, L]" if self.ndim == 1 else "[B, C, H, W]"
        need_rank(t, self.ndim + 2, self.name, layout)
        cin = known(t.sizes[1], f"{self.name}'s input channels (axis 2)")
        if a.groups <= 0 or cin % a.groups or a.channels % a.groups:
            raise OpError(f"{self.name}: groups={a.groups} must divide input channels {cin} "
                          f"and output channels {a.channels}")
        k, s, p, d = self._geometry(a)
        spatial = []
        for size, kk, ss, pp, dd in zip(t.sizes[2:], k, s, p, d):
            out = (size + (2 * pp - dd * (kk - 1) - 1)) // ss + 1
            if out.is_const and out.value <= 0:
                raise OpError(f"{self.name}: kernel {kk} (dilation {dd}) does not fit an axis of size {size} "
                              f"with padding {pp}")
            spatial.append(Dim(size=out))
        return [TensorType(dtype=t.dtype, shape=(t.shape[0], Dim(size=Size.of(a.channels))) + tuple(spatial))]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        cin = known(ins[0].sizes[1], "input channels")
        k = _pair(a.kernel, self.ndim, "kernel")
        fan_in = cin // a.groups * math.prod(k)
        out = {"weight": ParamSpec((a.channels, cin // a.groups) + k, _fan_in_uniform(fan_in))}
        if a.bias:
            out["bias"] = ParamSpec((a.channels,), _fan_in_uniform(fan_in))
        return out

    def flops(self, a: Any, ins: list[TensorType], outs: list[TensorType]) -> Size:
        cin = known(ins[0].sizes[1], "input channels")
        k = _pair(a.kernel, self.ndim, "kernel")
        return outs[0].numel() * (2 * cin // a.groups * math.prod(k))

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        k, s, p, d = self._geometry(a)
        one = lambda v: v[0] if len(set(v)) == 1 else v  # noqa: E731
        return (f"F.conv{self.ndim}d({ins[0]}, {params['weight']}, {params.get('bias', 'None')}, "
                f"stride={one(s)}, padding={one(p)}, dilation={one(d)}, groups={a.groups})")

    def torch_module(self, a: Any, roles: frozenset[str], types: list[TensorType]) -> str | None:
        if roles - {"weight", "bias"} or "weight" not in roles:
            return None
        k, s, p, d = self._geometry(a)
        one = lambda v: v[0] if len(set(v)) == 1 else v  # noqa: E731
        cin = known(types[0].sizes[1], "input channels")
        return (f"nn.Conv{self.ndim}d({cin}, {a.channels}, {one(k)}, stride={one(s)}, padding={one(p)}, "
                f"dilation={one(d)}, groups={a.groups}, bias={'bias' in roles})")


@register
class Conv1d(_Conv):
    name = "conv1d"
    ndim = 1


@register
class Conv2d(_Conv):
    name = "conv2d"
    ndim = 2


class StdConvAttrs(ConvAttrs):
    gamma: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    eps: Eps = 1e-6


@register
class StdConv2d(_Conv):
    """Conv2d with Scaled Weight Standardization (Brock et al. 2021, NF-ResNets; timm's
    ScaledStdConv2d): each output channel's weight is standardized in the forward,
    ŵ = gain · gamma · (w - mean) / (sqrt(var + eps) · sqrt(fan_in)) (mean and the biased variance
    over the channel's fan_in = C / groups · kh · kw values), then convolved as conv2d. Params: weight,
    bias, gain [channels, 1, 1, 1] (ones), as timm's state_dict."""

    name = "std_conv2d"
    Attrs = StdConvAttrs
    linear = False  # the weight enters non-linearly: no pass may fold an affine op into it

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        return {**super().params(a, ins), "gain": ParamSpec((a.channels, 1, 1, 1), "ones")}

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        k = _pair(a.kernel, self.ndim, "kernel")
        fan_in = known(types[0].sizes[1], "input channels") // a.groups * math.prod(k)
        w = params["weight"]
        std = (f"F.batch_norm({w}.reshape(1, {a.channels}, -1), None, None, "
               f"weight=({params['gain']} * {a.gamma * fan_in ** -0.5!r}).view(-1), training=True, momentum=0.0, "
               f"eps={a.eps!r}).reshape_as({w})")
        return super().torch_expr(a, ins, {**params, "weight": std}, types)

    def torch_module(self, a: Any, roles: frozenset[str], types: list[TensorType]) -> str | None:
        return None  # the parameters live on the instance's module under timm's names; the forward is torch_expr


class ConvTransposeAttrs(_Attrs):
    channels: PositiveInt
    kernel: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: int | tuple[int, ...] = 0
    output_padding: int | tuple[int, ...] = 0
    groups: PositiveInt = 1
    bias: bool = True
    dilation: int | tuple[int, ...] = 1


@register
class ConvTranspose2d(Op):
    """Transposed convolution (the gradient of conv2d; "deconvolution", Zeiler et al. 2010) as
    torch's conv_transpose2d: [B, C, H, W] -> [B, channels, (H-1)·s - 2p + d·(k-1) + op + 1, ...];
    its weight is [C, channels / groups, kh, kw], as nn.ConvTranspose2d's."""

    name = "conv_transpose2d"
    Attrs = ConvTransposeAttrs
    linear = True
    fresh = True

    def _geometry(self, a: Any) -> tuple[tuple[int, ...], ...]:
        k, s, p, op, d = (_pair(v, 2, f"{self.name} {w}") for v, w in
                          ((a.kernel, "kernel"), (a.stride, "stride"), (a.padding, "padding"),
                           (a.output_padding, "output_padding"), (a.dilation, "dilation")))
        if min(k + s + d) <= 0 or min(p + op) < 0:
            raise OpError(f"{self.name}: kernel, stride and dilation must be positive, padding non-negative")
        if max(k + s + d + p) > MAX_GEOMETRY:
            raise OpError(f"{self.name}: kernel, stride, padding and dilation must be at most {MAX_GEOMETRY}")
        if any(o >= max(ss, dd) for o, ss, dd in zip(op, s, d)):
            raise OpError(f"{self.name}: output_padding {list(op)} must be smaller than the stride or the dilation")
        return k, s, p, op, d

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        need_rank(t, 4, self.name, "[B, C, H, W]")
        cin = known(t.sizes[1], f"{self.name}'s input channels (axis 2)")
        if cin % a.groups or a.channels % a.groups:
            raise OpError(f"{self.name}: groups={a.groups} must divide input channels {cin} "
                          f"and output channels {a.channels}")
        k, s, p, op, d = self._geometry(a)
        spatial = []
        for size, kk, ss, pp, oo, dd in zip(t.sizes[2:], k, s, p, op, d):
            out = (size - 1) * ss + (dd * (kk - 1) + oo + 1 - 2 * pp)
            if out.is_const and out.value <= 0:
                raise OpError(f"{self.name}: padding {pp} leaves no output for an axis of size {size}")
            spatial.append(Dim(size=out))
        return [TensorType(dtype=t.dtype, shape=(t.shape[0], Dim(size=Size.of(a.channels))) + tuple(spatial))]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        cin = known(ins[0].sizes[1], "input channels")
        k = _pair(a.kernel, 2, "kernel")
        fan_in = a.channels // a.groups * math.prod(k)  # torch reads the weight's axis 1 as fan-in
        out = {"weight": ParamSpec((cin, a.channels // a.groups) + k, _fan_in_uniform(fan_in))}
        if a.bias:
            out["bias"] = ParamSpec((a.channels,), _fan_in_uniform(fan_in))
        return out

    def flops(self, a: Any, ins: list[TensorType], outs: list[TensorType]) -> Size:
        # FlopCounterMode: 2 · B · (input positions) · kh · kw · C · channels / groups
        k = _pair(a.kernel, 2, "kernel")
        return ins[0].numel() * (2 * math.prod(k) * (a.channels // a.groups))

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        k, s, p, op, d = self._geometry(a)
        one = lambda v: v[0] if len(set(v)) == 1 else v  # noqa: E731
        return (f"F.conv_transpose2d({ins[0]}, {params['weight']}, {params.get('bias', 'None')}, "
                f"stride={one(s)}, padding={one(p)}, output_padding={one(op)}, groups={a.groups}, "
                f"dilation={one(d)})")

    def torch_module(self, a: Any, roles: frozenset[str], types: list[TensorType]) -> str | None:
        if roles - {"weight", "bias"} or "weight" not in roles:
            return None
        k, s, p, op, d = self._geometry(a)
        one = lambda v: v[0] if len(set(v)) == 1 else v  # noqa: E731
        cin = known(types[0].sizes[1], "input channels")
        return (f"nn.ConvTranspose2d({cin}, {a.channels}, {one(k)}, stride={one(s)}, padding={one(p)}, "
                f"output_padding={one(op)}, groups={a.groups}, bias={'bias' in roles}, dilation={one(d)})")


class BatchNormAttrs(_Attrs):
    eps: Eps = 1e-5
    momentum: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.1
    affine: bool = True


@register
class BatchNorm(Op):
    """Batch normalization (Ioffe & Szegedy 2015) over axis 2 (channels); linear in eval mode."""

    name = "batchnorm"
    Attrs = BatchNormAttrs
    linear = True
    fresh = True  # F.batch_norm's backward reads its input and statistics, not its output

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        if t.rank < 2:
            raise OpError(f"batchnorm expects [B, C, ...], got {t}")
        known(t.sizes[1], "batchnorm's channels (axis 2)")
        return [t]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        c = known(ins[0].sizes[1], "channels")
        out = {}
        if a.affine:
            out = {"weight": ParamSpec((c,), "ones"), "bias": ParamSpec((c,), "zeros")}
        out.update({"running_mean": ParamSpec((c,), "zeros", trainable=False),
                    "running_var": ParamSpec((c,), "ones", trainable=False),
                    "num_batches_tracked": ParamSpec((), "zeros", trainable=False, dtype="i64")})
        return out

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return (f"F.batch_norm({ins[0]}, {params['running_mean']}, {params['running_var']}, "
                f"{params.get('weight', 'None')}, {params.get('bias', 'None')}, "
                f"self.training, {a.momentum}, {a.eps})")

    def torch_module(self, a: Any, roles: frozenset[str], types: list[TensorType]) -> str | None:
        stats = {"running_mean", "running_var", "num_batches_tracked"}
        if roles not in (stats, stats | {"weight", "bias"}) or types[0].rank > 5:
            return None
        c = known(types[0].sizes[1], "channels")
        kind = {2: 1, 3: 1, 4: 2, 5: 3}[types[0].rank]
        return f"nn.BatchNorm{kind}d({c}, eps={a.eps}, momentum={a.momentum}, affine={'weight' in roles})"


class LayerNormAttrs(_Attrs):
    eps: Eps = 1e-5
    affine: bool = True
    bias: bool = True
    dim: int = -1  # the normalized axis: -1 (channels last) or 1 (channels first, as LayerNorm2d)


@register
class LayerNorm(Op):
    """Layer normalization (Ba et al. 2016) over one axis."""

    name = "layernorm"
    Attrs = LayerNormAttrs

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        if t.rank == 0:
            raise OpError(f"{self.name} needs at least one axis")
        d = norm_dim(a.dim, t.rank, self.name)
        known(t.sizes[d], f"{self.name}'s normalized axis")
        return [t]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        c = known(ins[0].sizes[norm_dim(a.dim, ins[0].rank, self.name)], "normalized axis")
        out = {}
        if a.affine:
            out["weight"] = ParamSpec((c,), "ones")
            if a.bias:
                out["bias"] = ParamSpec((c,), "zeros")
        return out

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        t = types[0]
        d = norm_dim(a.dim, t.rank, self.name)
        c = known(t.sizes[d], "normalized axis")
        def call(x: str) -> str:
            return f"F.layer_norm({x}, ({c},), {params.get('weight', 'None')}, {params.get('bias', 'None')}, {a.eps})"

        if d == t.rank - 1:
            return call(ins[0])
        to_last = list(range(t.rank))
        to_last.append(to_last.pop(d))
        back = [to_last.index(i) for i in range(t.rank)]
        return call(f"{ins[0]}.permute({', '.join(map(str, to_last))})") + f".permute({', '.join(map(str, back))})"

    def torch_module(self, a: Any, roles: frozenset[str], types: list[TensorType]) -> str | None:
        if norm_dim(a.dim, types[0].rank, self.name) != types[0].rank - 1 or \
                roles not in (frozenset(), {"weight"}, {"weight", "bias"}):
            return None
        c = known(types[0].sizes[-1], "normalized axis")
        return f"nn.LayerNorm({c}, eps={a.eps}, elementwise_affine={bool(roles)}, bias={'bias' in roles})"


class RmsNormAttrs(_Attrs):
    eps: Eps = 1e-6
    affine: bool = True


@register
class RmsNorm(Op):
    """Root-mean-square normalization (Zhang & Sennrich 2019) over the last axis."""

    name = "rmsnorm"
    Attrs = RmsNormAttrs

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        need_float(ins[0], self.name)
        if ins[0].rank == 0:
            raise OpError("rmsnorm needs at least one axis")
        known(ins[0].sizes[-1], "rmsnorm's normalized axis")
        return [ins[0]]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        return {"weight": ParamSpec((known(ins[0].sizes[-1], "axis"),), "ones")} if a.affine else {}

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        c = known(types[0].sizes[-1], "axis")
        return f"F.rms_norm({ins[0]}, ({c},), {params.get('weight', 'None')}, {a.eps})"

    def torch_module(self, a: Any, roles: frozenset[str], types: list[TensorType]) -> str | None:
        if roles not in (frozenset(), {"weight"}):
            return None
        c = known(types[0].sizes[-1], "axis")
        return f"nn.RMSNorm({c}, eps={a.eps}, elementwise_affine={bool(roles)})"


class GroupNormAttrs(_Attrs):
    groups: PositiveInt
    eps: Eps = 1e-5
    affine: bool = True


@register
class GroupNorm(Op):
    """Group normalization (Wu & He 2018) over [B, C, ...]; groups=1 normalizes C, H, W together."""

    name = "groupnorm"
    Attrs = GroupNormAttrs

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        need_float(t, self.name)
        if t.rank < 2:
            raise OpError(f"groupnorm expects [B, C, ...], got {t}")
        c = known(t.sizes[1], "groupnorm's channels (axis 2)")
        if a.groups <= 0 or c % a.groups:
            raise OpError(f"groupnorm: groups={a.groups} must divide the {c} channels")
        return [t]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        c = known(ins[0].sizes[1], "channels")
        return {"weight": ParamSpec((c,), "ones"), "bias": ParamSpec((c,), "zeros")} if a.affine else {}

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return f"F.group_norm({ins[0]}, {a.groups}, {params.get('weight', 'None')}, {params.get('bias', 'None')}, {a.eps})"

    def torch_module(self, a: Any, roles: frozenset[str], types: list[TensorType]) -> str | None:
        if roles not in (frozenset(), {"weight", "bias"}):
            return None
        c = known(types[0].sizes[1], "channels")
        return f"nn.GroupNorm({a.groups}, {c}, eps={a.eps}, affine={bool(roles)})"


class EmbeddingAttrs(_Attrs):
    num: PositiveInt
    dim: PositiveInt


@register
class Embedding(Op):
    name = "embedding"
    Attrs = EmbeddingAttrs

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        if t.dtype not in ("i64", "i32"):
            raise OpError(f"embedding expects integer indices (i64), got {t}")
        return [TensorType(dtype="f32", shape=t.shape + (Dim(size=Size.of(a.dim)),))]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        return {"weight": ParamSpec((a.num, a.dim), "normal(1.0)")}

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return f"F.embedding({ins[0]}, {params['weight']})"

    def torch_module(self, a: Any, roles: frozenset[str], types: list[TensorType]) -> str | None:
        return f"nn.Embedding({a.num}, {a.dim})" if roles == {"weight"} else None


class PositionsAttrs(_Attrs):
    max_len: PositiveInt
    dim: PositiveInt


@register
class Positions(Op):
    """Learned absolute positions: the first T rows of a [max_len, dim] table, for input [..., T]."""

    name = "positions"
    Attrs = PositionsAttrs
    returns_param = True

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        t = ins[0]
        if t.rank == 0:
            raise OpError("positions needs an input with a sequence axis")
        length = t.sizes[-1]
        if length.is_const and length.value > a.max_len:
            raise OpError(f"positions: sequence length {length} exceeds max_len={a.max_len}")
        if not length.is_const and not guards.require(length, "at_most", a.max_len, f"positions(max_len={a.max_len})"):
            raise OpError(f"positions: the sequence length {length} must be at most max_len={a.max_len}, "
                          "which archc cannot check")
        return [TensorType(dtype="f32", shape=(t.shape[-1], Dim(size=Size.of(a.dim))))]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        return {"weight": ParamSpec((a.max_len, a.dim), "normal(1.0)")}

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return f"{params['weight']}[:{ins[0]}.shape[-1]]"


class ParameterAttrs(_Attrs):
    shape: tuple[int, ...]
    init: str | float = "zeros"

    @field_validator("init")
    @classmethod
    def _known(cls, v: str | float) -> str | float:
        return check_init(v) if isinstance(v, str) else v


@register
class Parameter(Op):
    """A learned tensor owned by the enclosing instance (a class token, a LayerScale gamma)."""

    name = "parameter"
    returns_param = True
    inputs = ()
    Attrs = ParameterAttrs

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        if any(s <= 0 for s in a.shape):
            raise OpError(f"parameter shape {list(a.shape)} must be positive")
        return [TensorType.of("f32", list(a.shape))]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        init = f"const({a.init})" if isinstance(a.init, float) else a.init
        return {"": ParamSpec(tuple(a.shape), init)}

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return params[""]


class BufferAttrs(_Attrs):
    shape: tuple[int, ...]
    init: str | float = "zeros"
    dtype: Literal["f32", "f16", "bf16", "f64", "i64", "i32", "i8", "u8", "bool"] | None = None

    @field_validator("init")
    @classmethod
    def _known(cls, v: str | float) -> str | float:
        return check_init(v) if isinstance(v, str) else v


_INT_INITS = ("zeros", "ones", "const")  # what an integer or bool tensor can start as


@register
class Buffer(Op):
    """A tensor the instance owns that training does not change (a step counter, a fixed table):
    in the state_dict, not among the parameters. `dtype` defaults to the build's float dtype."""

    name = "buffer"
    returns_param = True
    inputs = ()
    Attrs = BufferAttrs

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        if any(s <= 0 for s in a.shape):
            raise OpError(f"buffer shape {list(a.shape)} must be positive")
        init = a.init if isinstance(a.init, str) else "const"
        if a.dtype is not None and a.dtype not in ("f32", "f16", "bf16", "f64") and \
                init.split("(")[0].strip() not in _INT_INITS:
            article = "an" if a.dtype.startswith("i") else "a"
            raise OpError(f"{article} {a.dtype} buffer starts as zeros, ones or a constant, not {init}")
        return [TensorType.of(a.dtype or "f32", list(a.shape))]

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        init = f"const({a.init})" if isinstance(a.init, (int, float)) else a.init
        return {"": ParamSpec(tuple(a.shape), init, trainable=False, dtype=a.dtype or "f32")}

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        return params[""]


class AttentionAttrs(_Attrs):
    causal: bool = False
    scale: float | None = None
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


    @field_validator("scale")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


def kv_groups(q: TensorType, k: TensorType) -> int:
    """How many query heads share one key/value head: 1, or H / Hkv for grouped-query attention
    (Ainslie et al. 2023), where k and v have Hkv heads (axis -3) and q has H, a multiple."""
    if q.sizes[:-2] == k.sizes[:-2]:
        return 1
    if q.rank >= 3 and k.rank == q.rank and q.sizes[:-3] == k.sizes[:-3]:
        hq, hk = q.sizes[-3], k.sizes[-3]
        if hq.is_const and hk.is_const and hk.value > 0 and hq.value % hk.value == 0:
            return hq.value // hk.value
        raise OpError(f"attention: q has {hq} heads and k, v have {hk}; grouped-query attention needs "
                      "known head counts, the query heads a multiple of the key/value heads")
    raise OpError(f"attention: q, k and v must share their leading axes, got {q} and {k}")


@register
class Attention(Op):
    """Scaled dot-product attention (Vaswani et al. 2017): q [*, H, T, d], k/v [*, H, S, d|e].
    k and v may have fewer heads (grouped-query attention): each key/value head serves H / Hkv
    consecutive query heads, as Hugging Face's `repeat_kv` and torch's `enable_gqa`."""

    name = "attention"
    inputs = ("q", "k", "v")
    Attrs = AttentionAttrs

    def stochastic(self, a: Any) -> bool:
        return a.dropout > 0.0

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        q, k, v = ins
        for name, t in zip("qkv", ins):
            need_float(t, "attention")
            if t.rank < 2:
                raise OpError(f"attention: {name} needs at least [T, d], got {t}")
        if k.sizes[:-2] != v.sizes[:-2]:
            raise OpError(f"attention: q, k and v must share their leading axes, got {q}, {k}, {v}")
        kv_groups(q, k)
        if q.sizes[-1] != k.sizes[-1]:
            raise OpError(f"attention: q and k need the same head size, got {q.sizes[-1]} and {k.sizes[-1]}")
        if k.sizes[-2] != v.sizes[-2]:
            raise OpError(f"attention: k and v need the same length, got {k.sizes[-2]} and {v.sizes[-2]}")
        return [TensorType(dtype=q.dtype, shape=q.shape[:-1] + (v.shape[-1],))]

    def flops(self, a: Any, ins: list[TensorType], outs: list[TensorType]) -> Size:
        q, k, v = ins
        lead = Size.of(1)
        for s in q.sizes[:-2]:
            lead = lead * s
        scores = lead * q.sizes[-2] * k.sizes[-2]
        return scores * q.sizes[-1] * 2 + scores * v.sizes[-1] * 2

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        extra = f", scale={a.scale}" if a.scale is not None else ""
        # `p * self.training`, not `p if self.training else 0.0`: no Python branch on the mode, so the
        # fx backend can read `self.training` when the GraphModule runs
        drop = f", dropout_p={a.dropout} * self.training" if a.dropout else ""
        q, k, v = ins
        n = kv_groups(types[0], types[1])
        if n > 1:  # repeated here rather than enable_gqa: ONNX export and FlopCounterMode know this form
            k, v = f"{k}.repeat_interleave({n}, dim=-3)", f"{v}.repeat_interleave({n}, dim=-3)"
        return f"F.scaled_dot_product_attention({q}, {k}, {v}, is_causal={a.causal}{drop}{extra})"
