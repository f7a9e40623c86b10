"""`@sparse` on the ops a statement or block makes: which ops take it, and the mask buffer they get.

A statement's annotations reach every op it makes, including the ops of the blocks it calls
(`@sparse("2:4") y = Mlp()(x)` makes Mlp's linears 2:4). `@sparse` is kept only on the ops that
own a weight with a reduction axis (archc/ir/sparsity.py), each of which gets the boolean buffer
`weight_mask`; on the others (an activation, a norm) it is dropped. An annotation that reaches
no such op at all, or a weight that cannot hold its pattern, is an error at the annotation.
"""

from __future__ import annotations

from typing import Any

from archc.errors import ArchError, Span
from archc.frontend import ast as A
from archc.ir import sparsity
from archc.ir.graph import AnnotationIR
from archc.ops.registry import ParamSpec


def attach(op: str, written: tuple[A.Annotation, ...], made: tuple[AnnotationIR, ...],
           specs: dict[str, ParamSpec], tied: str | None, used: set[int], span: Span | None
           ) -> tuple[tuple[AnnotationIR, ...], dict[str, Any]]:
    """The node's annotations and parameters once its `@sparse` (the innermost one) is applied.
    `written` are the annotations as written (for their spans), `made` the same evaluated; `used`
    collects the annotations that reached an op that takes them."""
    found = [(w, m) for w, m in zip(written, made) if m.name == "sparse"]
    if not found:
        return made, specs
    keep = tuple(m for m in made if m.name != "sparse")
    w, m = found[-1]
    try:
        s = sparsity.parse(m)
    except ValueError as e:
        raise ArchError(str(e), w.span) from None
    if op not in sparsity.SPARSE_OPS or "weight" not in specs:
        return keep, specs
    if tied:
        raise ArchError(f"@sparse: this {op} uses the weight of '{tied}' (tied=); a shared weight cannot take "
                        "its own mask", w.span, notes=[("the op is here", span)] if span else [])
    weight = specs["weight"]
    try:
        sparsity.check_weight(s, op, weight.shape)
    except ValueError as e:
        raise ArchError(f"@sparse({_arg_text(m)}): {e}", w.span,
                        notes=[("the op is here", span)] if span else []) from None
    for x in written:
        if x.name == "sparse":
            used.add(id(x))
    mask = ParamSpec(weight.shape, s.init, trainable=False, dtype="bool")
    return keep + (m,), {**specs, sparsity.MASK: mask}


def check_used(annotations: tuple[A.Annotation, ...], used: set[int], what: str) -> None:
    """Every `@sparse` of a statement or block reached at least one op that can be sparse."""
    for a in annotations:
        if a.name == "sparse" and id(a) not in used:
            raise ArchError(f"@sparse on this {what} reaches no op with a weight to make sparse", a.span,
                            f"ops that can be sparse: {', '.join(sparsity.SPARSE_OPS)}")


def _arg_text(m: AnnotationIR) -> str:
    parts = [repr(a) if not isinstance(a, str) else f'"{a}"' for a in m.args]
    parts += [f"{k}={v!r}" for k, v in m.kwargs.items()]
    return ", ".join(parts)
