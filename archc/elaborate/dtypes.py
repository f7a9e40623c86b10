"""The build's dtype: `dtype=` / `--dtype` / `@dtype("bf16")`; what it decides is the op rule in
archc/ops/dtypes.py, restated here:

An op's floating-point parameters take the dtype of its first floating-point input (a linear on
`bf16[B, T, D]` has a bf16 weight). An op with no floating-point input (an embedding of integer
tokens, a `parameter`, a `buffer`) has parameters of the build's dtype (f32 unless
`archc.compile(..., dtype="bf16")` or `--dtype bf16` says otherwise), and its floating-point results
are of that dtype too. `@dtype("bf16")` on a statement or a block sets the build's dtype for the ops
made inside (the printed IR writes it on such ops, so it compiles back the same). Integer and bool tensors (a BatchNorm's step count, a sparsity mask) and a
dtype an op's attributes name (`buffer(..., dtype="i64")`) keep theirs.
"""

from __future__ import annotations

from typing import Any

from archc.errors import ArchError
from archc.frontend import ast as A
from archc.ir.types import FLOAT_DTYPES
from archc.ops.dtypes import follow_dtype

BUILD_DTYPES = ("f32", "bf16", "f16", "f64")  # what `dtype=` may be: the floating-point dtypes


def check_build_dtype(dtype: str) -> str:
    if dtype not in BUILD_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(BUILD_DTYPES)}, got {dtype!r}")
    return dtype


def dtype_rule(written: A.Annotation, args: list[Any], has_kwargs: bool) -> dict[str, Any]:
    """What `@dtype("bf16")` says, checked where it is written."""
    if has_kwargs or len(args) != 1 or args[0] not in BUILD_DTYPES:
        raise ArchError(f"@dtype takes one of {', '.join(repr(d) for d in BUILD_DTYPES)}", written.span)
    return {"dtype": args[0]}


def build_dtype(written: tuple[A.Annotation, ...], rules: dict[int, Any], default: str) -> str:
    """The build's dtype where an op is made: the innermost `@dtype(...)`, else `default`."""
    for a in reversed(written):
        if a.name == "dtype" and id(a) in rules:
            return str(rules[id(a)]["dtype"])
    return default


__all__ = ["BUILD_DTYPES", "FLOAT_DTYPES", "build_dtype", "check_build_dtype", "dtype_rule", "follow_dtype"]
