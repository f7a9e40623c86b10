"""The dtype of an op's parameters and, for an op with no floating-point input, of its results: one
rule for every op, used by the elaborator and the IR verifier (docs/language.md, "The dtype of
parameters").

An op's floating-point parameters take the dtype of its first floating-point input; an op with no
floating-point input takes the build's dtype (`build`) for its float parameters and results. A
dtype the op's attributes name (`buffer(..., dtype="i64")`) and integer or bool tensors keep theirs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from archc.ir.types import TensorType
from archc.ops.registry import ParamSpec


def follow_dtype(specs: dict[str, ParamSpec], outs: list[TensorType], ins: list[TensorType], attrs: Any,
                 build: str) -> tuple[dict[str, ParamSpec], list[TensorType]]:
    """The op's parameters and results with the dtype they take here (see the module's docstring)."""
    if not specs or getattr(attrs, "dtype", None) is not None:
        return specs, outs
    floats = [t.dtype for t in ins if t.is_float]
    want = floats[0] if floats else build
    specs = {role: replace(s, dtype=want) if s.dtype == "f32" else s for role, s in specs.items()}
    if not floats and want != "f32":
        outs = [TensorType(dtype=want, shape=t.shape) if t.dtype == "f32" else t for t in outs]
    return specs, outs


__all__ = ["follow_dtype"]
