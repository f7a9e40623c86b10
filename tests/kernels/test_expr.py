"""The expression translator: the registry's scalar forms printed as Triton and CUDA C, constants
folded, attribute conditions decided at compile time; and every elementwise op's expression
agrees with its torch spelling (so a fused kernel computes what the torch target computes)."""

from __future__ import annotations

import pytest
import torch

from archc.backends.kernels import expr
from archc.ops import registry


@pytest.mark.parametrize("text, triton, cuda", [
    ("max(x, 0)", "tl.maximum(a, 0.0)", "fmaxf(a, 0.0f)"),
    ("x * sigmoid(x)", "a * tl.sigmoid(a)", "a * archc_sigmoid(a)"),
    ("0.5 * x * (1 + erf(x / sqrt(2)))", "0.5 * a * (1.0 + tl.math.erf(a / 1.4142135623730951))",
     "0.5f * a * (1.0f + erff(a / 1.4142135623730951f))"),
    ("x - (y - 1)", "a - (b - 1.0)", "a - (b - 1.0f)"),
    ("(x - y) / (x * y)", "(a - b) / (a * b)", "(a - b) / (a * b)"),
    ("-x ** 2", "-(a * a)", "-(a * a)"),
    ("x ** 0.5", "tl.sqrt(a)", "sqrtf(a)"),
    ("tanh(x) if x > 0 else exp(x)", "tl.where(a > 0.0, _tanh(a), tl.exp(a))", "(a > 0.0f ? tanhf(a) : expf(a))"),
])
def test_translate(text: str, triton: str, cuda: str) -> None:
    assert expr.translate(text, {"x": "a", "y": "b"}, {}, expr.TRITON) == triton
    assert expr.translate(text, {"x": "a", "y": "b"}, {}, expr.CUDA) == cuda


def test_attributes_are_constants_and_conditions_are_decided() -> None:
    gelu = registry.get("gelu").elementwise
    assert gelu is not None
    exact = expr.translate(gelu, {"x": "v"}, {"approximate": "none"}, expr.TRITON)
    approx = expr.translate(gelu, {"x": "v"}, {"approximate": "tanh"}, expr.TRITON)
    assert "erf" in exact and "tanh" not in exact
    assert approx == "0.5 * v * (1.0 + _tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))"
    assert expr.translate("scale * x + bias", {"x": "v"}, {"scale": 2.0, "bias": -1.5}, expr.CUDA) == \
        "2.0f * v + -1.5f"


@pytest.mark.parametrize("text, why", [
    ("x.abs()", "Attribute"),
    ("foo(x)", "no triton spelling"),
    ("x ** y", "exponent must be a constant"),
    ("x ** 7", "not supported"),
    ("z + x", "neither a kernel variable nor an attribute"),
    ("lambda: x", "Lambda"),
])
def test_errors(text: str, why: str) -> None:
    with pytest.raises(expr.ExprError, match=why):
        expr.translate(text, {"x": "a", "y": "b"}, {}, expr.TRITON)


def _elementwise_ops() -> list[str]:
    return [n for n in registry.names() if registry.get(n).elementwise is not None]


@pytest.mark.parametrize("name", _elementwise_ops())
def test_registry_expression_matches_torch(name: str) -> None:
    """For every attribute setting worth trying: the scalar form evaluated with torch equals the
    op's torch spelling (gelu's tanh approximation included)."""
    import torch.nn.functional as F  # noqa: F401, N812  (the spellings use F)

    op = registry.get(name)
    settings: list[dict] = [{}]
    if name == "gelu":
        settings = [{"approximate": "none"}, {"approximate": "tanh"}]
    if name == "starrelu":
        settings = [{"scale": 0.8, "bias": -0.3, "learnable": False}]
    if name in ("add", "sub", "mul", "div"):
        settings = [{}, {"other": 2.5}, {"other": 2.5, "swap": True}]
    x, y = torch.randn(64) * 3, torch.rand(64) + 0.5
    if name in ("pow", "sqrt", "rsqrt"):  # defined (not NaN) on positive numbers
        x = x.abs() + 0.1
    if name == "pow":
        settings = [{}, {"other": 2.0}, {"other": 2.5, "swap": True}]
    for attrs in settings:
        a = op.make_attrs(attrs)
        text = op.elementwise
        assert text is not None
        binary = len(op.inputs) > 1 and "other" not in attrs
        ins = ["x", "y"] if binary else ["x"]
        want = eval(op.torch_expr(a, ins, {}, []), {"F": F, "torch": torch, "x": x, "y": y,  # noqa: S307
                                                    "drop_path": lambda t, p, training: t, "self": _Eval()})
        variables = {"x": x, "y": y}
        if "other" in attrs:
            variables = {"x": torch.tensor(attrs["other"]), "y": x} if attrs.get("swap") else {"x": x, "y": attrs["other"]}
        got = expr.evaluate(text, variables, a.model_dump())
        assert torch.allclose(torch.as_tensor(got).float(), want.float(), atol=1e-5), (name, attrs)


class _Eval:
    training = False
