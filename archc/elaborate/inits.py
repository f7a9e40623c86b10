"""Initializers written in a spec: the values `normal(0.02)`, `trunc_normal(0.02)`, `zeros`, ...,
and the `init=` / `<role>_init=` keywords of any op that owns parameters.

    linear(D, init=normal(0.02))                 weight N(0, 0.02^2), bias zeros (as HF's _init_weights)
    linear(D, weight_init=normal(0.02))          the weight only; the bias keeps torch's default
    conv2d(C, 3, bias_init=zeros)                one role, by its parameter name
    conv2d(C, 3, init=kaiming_normal)            He init, fan-out mode (timm's ResNet)
    batchnorm(weight_init=zeros)                 zero-init of a branch's last norm (timm zero_init_last)
    linear(D, init=normal(0.02 / (2 * depth) ** 0.5))   GPT-2's scaled residual projection

An initializer is its canonical string (`"normal(0.02)"`, what archc.ops.registry.INITIALIZERS
reads and the IR's ParamDecl.init holds), so a string written in a spec works the same.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from archc.elaborate.values import Builtin
from archc.errors import ArchError, Span, did_you_mean
from archc.frontend import ast as A
from archc.ops.registry import INITIALIZERS, Op, ParamSpec, check_init, init_text

# the initializers a spec may call, with their arguments by name (INITIALIZERS has their defaults)
ARGS: dict[str, tuple[str, ...]] = {
    "zeros": (), "ones": (), "eye": (), "const": ("value",), "normal": ("std", "mean"),
    "trunc_normal": ("std", "a", "b"), "uniform": ("bound",), "kaiming_normal": (), "xavier_uniform": ()}

Inits = tuple[tuple[str, str, bool, "Span | None"], ...]  # (role, init, must the role exist, where written)


def make_init(name: str, args: list[Any], kwargs: dict[str, Any], span: Span) -> str:
    """`normal(0.02)`, `trunc_normal(0.02, a=-0.04, b=0.04)`: the canonical initializer string."""
    names = ARGS[name]
    usage = f"{name}({', '.join(names)})" if names else name
    if len(args) > len(names):
        raise ArchError(f"{name}() takes at most {len(names)} argument(s): {usage}", span)
    values: dict[str, Any] = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names or key in values:
            raise ArchError(f"{name}() has no argument '{key}' here: {usage}", span)
        values[key] = value
    defaults = INITIALIZERS[name]
    out: list[float] = []
    for arg, default in zip(names, defaults):
        value = values.get(arg, default)
        if value is None:
            raise ArchError(f"{name}() needs its argument '{arg}': {usage}", span)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArchError(f"{name}() argument '{arg}' must be a number, got {value!r}", span)
        out.append(float(value))
    text = init_text(name, out)
    try:
        return check_init(text)
    except ValueError as err:
        raise ArchError(str(err), span) from None


def as_init(value: Any, span: Span, what: str) -> str:
    """An initializer from what a spec wrote: `normal(0.02)`, `zeros`, a string, or a number
    (the constant)."""
    if isinstance(value, Builtin) and value.name in ARGS:
        return make_init(value.name, [], {}, span)
    if isinstance(value, str):
        try:
            return check_init(value)
        except ValueError as err:
            raise ArchError(f"{what}: {err}", span) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return make_init("const", [value], {}, span)
    raise ArchError(f"{what} takes an initializer (normal(0.02), trunc_normal(0.02), kaiming_normal, zeros, "
                    f"ones, uniform(b), const(v) or a number), got {value!r}", span)


def owns_params(op: Op) -> bool:
    return type(op).params is not Op.params


def is_init_key(op: Op, key: str) -> bool:
    """Is `key` an init keyword of `op` (not one of its own attributes)?"""
    return owns_params(op) and key not in op.attr_names() and (key == "init" or key.endswith("_init"))


def init_keyword(key: str, value: str, span: Span | None) -> Inits:
    """`init=X` is the weight's initializer, with the bias zero (Hugging Face's and timm's
    `_init_weights`); `<role>_init=X` names one parameter."""
    if key == "init":
        return (("weight", value, True, span), ("bias", "zeros", False, span))
    return ((key.removesuffix("_init"), value, True, span),)


def with_inits(op: Op, specs: dict[str, ParamSpec], inits: Inits, span: Span | None) -> dict[str, ParamSpec]:
    """The op's parameters with the initializers the spec chose; a role the op does not have is an
    error (`bias_init` on `linear(bias=false)`)."""
    out = dict(specs)
    for role, init, required, at in inits:
        if role not in out:
            if required:
                have = ", ".join(f"{r}_init" for r in specs if r) or "none"
                raise ArchError(f"{op.name}() has no parameter '{role}' here, so no '{role}_init' "
                                f"(its parameters' keywords: {have})", at or span)
            continue
        if not out[role].trainable:
            raise ArchError(f"{op.name}(): '{role}' is a buffer, not a learned parameter; "
                            f"its initial value is not a choice", at or span)
        out[role] = replace(out[role], init=init)
    return out


Rules = dict[str, Inits]  # `@init(linear=normal(0.02))`: op name -> what `init=` would give it


def annotation_rules(written: A.Annotation, values: dict[str, Any]) -> Rules:
    """The rules of one `@init(...)` annotation, from its evaluated keywords: `linear=X` gives every
    linear inside `init=X` (weight X, bias zeros), `batchnorm_weight=X` one role of an op. They
    reach every op the statement (or block) makes, blocks within included, as timm's and Hugging
    Face's `_init_weights` reach every module of a type; an op's own `init=` keywords win, and an
    inner `@init` wins over an outer one."""
    from archc.ops import registry

    if written.args or not values:
        raise ArchError("@init takes keywords: an op name and its initializer, e.g. "
                        "@init(linear=trunc_normal(0.02), conv2d=kaiming_normal)", written.span)
    rules: Rules = {}
    for key, value in values.items():
        span = next((k.span for k in written.kwargs if k.name == key), written.span)
        init = as_init(value, span, f"@init({key}=...)")
        if registry.has(key) and owns_params(registry.get(key)):
            rules[key] = tuple((role, i, False, span) for role, i, _, _ in init_keyword("init", init, span))
            continue
        op = next((n for n in registry.names() if key.startswith(n + "_") and owns_params(registry.get(n))), None)
        if op is None:
            raise ArchError(f"@init: '{key}' is not an op with parameters (nor op_role, as batchnorm_weight)",
                            span, did_you_mean(key, [n for n in registry.names() if owns_params(registry.get(n))]))
        rules[op] = rules.get(op, ()) + ((key[len(op) + 1:], init, False, span),)
    return rules


def annotation_inits(op: str, written: tuple[A.Annotation, ...], rules: dict[int, Rules],
                     used: set[int] | None = None) -> Inits:
    """What the `@init` annotations in force say about an op, outermost first (so inner ones win);
    `used` collects the annotations (by id) that said something."""
    out: Inits = ()
    for a in written:
        if a.name == "init" and op in rules.get(id(a), {}):
            out += rules[id(a)][op]
            if used is not None:
                used.add(id(a))
    return out


def check_used(written: tuple[A.Annotation, ...], used: set[int], what: str) -> None:
    """Every `@init` of a statement or block reached at least one op it names."""
    for a in written:
        if a.name == "init" and id(a) not in used:
            names = ", ".join(k.name for k in a.kwargs)
            raise ArchError(f"@init({names}=...) on this {what} reaches no op it names: nothing made here is "
                            "initialized by it", a.span, "an op's kind is its name: linear, conv2d, embedding, ...")


__all__ = ["ARGS", "Inits", "Rules", "annotation_inits", "annotation_rules", "as_init", "check_used", "init_keyword",
           "is_init_key", "make_init", "owns_params", "with_inits"]
