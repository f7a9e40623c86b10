"""Elementwise ops: activations, arithmetic, dropout. Each states its scalar expression."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from archc.ir.types import TensorType
from archc.ops.registry import Op, OpError, ParamSpec, broadcast, need_float, norm_dim, promote_scalar, register


class _Attrs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Unary(Op):
    """A float -> float op applied to every element; the shape passes through."""

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        need_float(ins[0], self.name)
        return [ins[0]]


@register
class Identity(Op):
    name = "identity"
    linear = True
    elementwise = "x"
    torch = "{x}"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        return [ins[0]]


@register
class Relu(_Unary):
    name = "relu"
    elementwise = "max(x, 0)"
    onednn = "relu"
    torch = "F.relu({x})"
    torch_inplace = "F.relu({x}, inplace=True)"


class GeluAttrs(_Attrs):
    approximate: Literal["none", "tanh"] = "none"


@register
class Gelu(_Unary):
    name = "gelu"
    Attrs = GeluAttrs
    # the exact form, or the tanh approximation (Hendrycks & Gimpel 2016) that GPT-2 uses
    elementwise = ("0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x ** 3))) if approximate == 'tanh' "
                   "else 0.5 * x * (1 + erf(x / sqrt(2)))")
    torch = "F.gelu({x}, approximate={approximate})"

    def onednn_postop(self, a: GeluAttrs) -> tuple[str, str] | None:
        return ("gelu", a.approximate)


@register
class Silu(_Unary):
    name = "silu"
    elementwise = "x * sigmoid(x)"
    onednn = "swish"
    torch = "F.silu({x})"


class LeakyReluAttrs(_Attrs):
    slope: float = 0.01


@register
class LeakyRelu(_Unary):
    name = "leaky_relu"
    Attrs = LeakyReluAttrs
    elementwise = "max(x, 0) + slope * min(x, 0)"
    torch = "F.leaky_relu({x}, {slope})"


@register
class Relu6(_Unary):
    name = "relu6"
    elementwise = "min(max(x, 0), 6)"
    torch = "F.relu6({x})"


@register
class Hardsigmoid(_Unary):
    name = "hardsigmoid"
    elementwise = "min(max(x + 3, 0), 6) / 6"
    torch = "F.hardsigmoid({x})"


@register
class Hardswish(_Unary):
    name = "hardswish"
    # MobileNetV3's (Howard et al. 2019): x * relu6(x + 3) / 6
    elementwise = "x * min(max(x + 3, 0), 6) / 6"
    torch = "F.hardswish({x})"


@register
class Sigmoid(_Unary):
    name = "sigmoid"
    elementwise = "sigmoid(x)"
    onednn = "sigmoid"
    torch = "torch.sigmoid({x})"


@register
class Tanh(_Unary):
    name = "tanh"
    elementwise = "tanh(x)"
    onednn = "tanh"
    torch = "torch.tanh({x})"


@register
class Sin(_Unary):
    name = "sin"
    elementwise = "sin(x)"
    torch = "torch.sin({x})"


@register
class Cos(_Unary):
    name = "cos"
    elementwise = "cos(x)"
    torch = "torch.cos({x})"


@register
class Exp(_Unary):
    name = "exp"
    elementwise = "exp(x)"
    torch = "torch.exp({x})"


@register
class Sqrt(_Unary):
    name = "sqrt"
    elementwise = "sqrt(x)"
    torch = "torch.sqrt({x})"


@register
class Rsqrt(_Unary):
    name = "rsqrt"
    elementwise = "rsqrt(x)"
    torch = "torch.rsqrt({x})"


class StarReluAttrs(_Attrs):
    scale: float = 1.0
    bias: float = 0.0
    learnable: bool = True


@register
class StarRelu(_Unary):
    """StarReLU, s * relu(x)^2 + b (MetaFormer baselines, Yu et al. 2022)."""

    name = "starrelu"
    Attrs = StarReluAttrs
    elementwise = "scale * max(x, 0) ** 2 + bias"
    torch = "{scale} * F.relu({x}) ** 2 + {bias}"

    def params(self, a: Any, ins: list[TensorType]) -> dict[str, ParamSpec]:
        if not a.learnable:
            return {}
        return {"scale": ParamSpec((1,), f"const({a.scale})"), "bias": ParamSpec((1,), f"const({a.bias})")}

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        scale = params.get("scale", repr(a.scale))
        bias = params.get("bias", repr(a.bias))
        return f"{scale} * F.relu({ins[0]}) ** 2 + {bias}"


class SoftmaxAttrs(_Attrs):
    dim: int = -1


@register
class Softmax(Op):
    name = "softmax"
    Attrs = SoftmaxAttrs
    torch = "F.softmax({x}, dim={dim})"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        need_float(ins[0], self.name)
        norm_dim(a.dim, ins[0].rank, self.name)
        return [ins[0]]


class DropAttrs(_Attrs):
    p: float = 0.0

    def model_post_init(self, _: Any) -> None:
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"drop probability must be in [0, 1), got {self.p}")


@register
class Dropout(_Unary):
    name = "dropout"
    Attrs = DropAttrs
    linear = True  # the identity in eval mode
    elementwise = "x"
    torch = "F.dropout({x}, p={p}, training=self.training)"

    def stochastic(self, a: Any) -> bool:
        return a.p > 0.0


@register
class DropPath(_Unary):
    """Stochastic depth (Huang et al. 2016): drops whole samples of a residual branch."""

    name = "drop_path"
    Attrs = DropAttrs
    linear = True
    elementwise = "x"
    torch = "drop_path({x}, {p}, self.training)"

    def stochastic(self, a: Any) -> bool:
        return a.p > 0.0


class BinaryAttrs(_Attrs):
    other: float | None = None  # a scalar operand when there is no second tensor
    swap: bool = False  # `other - x` rather than `x - other`


class _Binary(Op):
    inputs = ("x", "y?")
    Attrs = BinaryAttrs
    symbol = "+"
    method_inplace = ""  # `x.add_(y)`; only for ops whose backward reads no operand

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        if len(ins) == 2:
            if a.other is not None:
                raise OpError(f"{self.name}() takes a second tensor or a scalar 'other', not both")
            out = broadcast(ins[0], ins[1], self.name)
        elif a.other is None:
            raise OpError(f"{self.name}() needs a second operand")
        else:  # the scalar is written as a float (repr(a.other)) in every backend: torch promotes to it
            out = ins[0].with_dtype(promote_scalar(ins[0].dtype, float(a.other)))
        if self.name == "sub" and any(t.dtype == "bool" for t in ins):
            raise OpError("sub: torch does not subtract bool tensors", hint="use logical ops on masks, or "
                          "declare the operands as a number type")
        if self.name == "div" and not out.is_float:
            out = out.with_dtype("f32")  # true division of integers gives torch's default dtype
        return [out]

    def torch_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str:
        left, right = ins[0], ins[1] if len(ins) == 2 else repr(a.other)
        if a.swap:
            left, right = right, left
        return f"({left} {self.symbol} {right})"

    def torch_inplace_expr(self, a: Any, ins: list[str], params: dict[str, str], types: list[TensorType]) -> str | None:
        if not self.method_inplace or a.swap:
            return None
        return f"{ins[0]}.{self.method_inplace}({ins[1] if len(ins) == 2 else repr(a.other)})"


@register
class Add(_Binary):
    name = "add"
    symbol = "+"
    method_inplace = "add_"
    fresh = True
    linear = True
    elementwise = "x + y"


@register
class Sub(_Binary):
    name = "sub"
    symbol = "-"
    method_inplace = "sub_"
    fresh = True
    linear = True
    elementwise = "x - y"


@register
class Mul(_Binary):
    name = "mul"
    symbol = "*"
    elementwise = "x * y"


@register
class Div(_Binary):
    name = "div"
    symbol = "/"
    elementwise = "x / y"


@register
class Pow(_Binary):
    """x ** y (a tensor or a scalar exponent; `other ** x` with `swap`, as RoPE's theta ** (-2i/d))."""

    name = "pow"
    symbol = "**"
    elementwise = "x ** y"

    def infer(self, a: Any, ins: list[TensorType]) -> list[TensorType]:
        out = super().infer(a, ins)
        if len(ins) == 1 and not ins[0].is_float:
            raise OpError(f"pow: {ins[0]} with a scalar needs a floating-point tensor",
                          hint="declare the tensor as f32, or multiply it by 1.0 first")
        return out
