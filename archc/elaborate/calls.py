"""Calls: what a call means (a block made, an op's arguments bound, a builtin), and applying any
callable to tensors, with the names of its anonymous instances."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from archc.elaborate.builtins import call_builtin
from archc.elaborate.consteval import plain
from archc.elaborate.inits import as_init, init_keyword, is_init_key
from archc.elaborate.stacks import STACK_APPLIED
from archc.elaborate.state import State
from archc.elaborate.values import (CALLABLES, BlockFn, BlockTemplate, Builtin, Callable, Frame, InterfaceRef, MoeFn, OpFn,
                                    PipeFn, ResidualFn, SlotFn, StackFn, Tensor, describe, join_scope, named, snake)
from archc.errors import ArchError, Span, did_you_mean
from archc.frontend import ast as A
from archc.ops.registry import Op, OpError


class Calls(State):
    """Calls, and the application of any callable to tensors."""

    def call(self, e: A.Call, frame: Frame) -> Any:
        func = self.eval(e.func, frame)
        args = [self.eval(a, frame) for a in e.args]
        kwargs = {k.name: self.eval(k.value, frame) for k in e.kwargs}
        if isinstance(func, Builtin):
            return self.builtin(func.name, args, kwargs, frame, e)
        n_tensors = 0
        while n_tensors < len(args) and isinstance(args[n_tensors], Tensor):
            n_tensors += 1
        tensors, rest = args[:n_tensors], args[n_tensors:]
        for a, expr in zip(rest, e.args[n_tensors:]):
            if isinstance(a, Tensor):
                raise ArchError("tensor inputs come before the other arguments", expr.span)
        if isinstance(func, BlockTemplate):
            fn: Any = self.construct(func, tuple(rest), kwargs, e.span, arg_spans=_arg_spans(e, n_tensors))
            return self.apply(fn, tensors, frame, e.span) if tensors else fn
        if isinstance(func, OpFn):
            return self.call_op(func, tensors, rest, kwargs, frame, e)
        if isinstance(func, BlockFn) and (rest or kwargs):
            fn = self.construct(func.template, tuple(rest), kwargs, e.span, base=func.params,
                                arg_spans=_arg_spans(e, n_tensors))
            return self.apply(fn, tensors, frame, e.span) if tensors else fn
        if isinstance(func, CALLABLES):
            if rest or kwargs:
                raise ArchError(f"{describe(func)} takes only tensor inputs here", e.span)
            if not tensors:
                return func
            return self.apply(func, tensors, frame, e.span)  # type: ignore[arg-type]
        if isinstance(func, InterfaceRef):
            raise ArchError(f"the interface '{func.definition.name}' cannot be called",
                            e.func.span, "pass a block that implements it as a parameter")
        raise ArchError(f"{describe(func)} is not callable", e.func.span)

    def call_op(self, fn: OpFn, tensors: list[Tensor], rest: list[Any], kwargs: dict[str, Any],
                frame: Frame, e: A.Call) -> Any:
        op = fn.op
        names = [n for n in op.attr_names() if n not in fn.kwargs and n != getattr(op, "kwargs_field", None)]
        if len(rest) > len(names):
            raise ArchError(f"{op.name}() takes at most {len(names)} argument{'s' if len(names) != 1 else ''} "
                            f"besides its tensor inputs ({', '.join(names) or 'none'}), got {len(rest)}", e.span)
        attrs = dict(fn.kwargs)
        attrs.update(zip(names, rest))
        extra_field = getattr(op, "kwargs_field", None)
        tied = fn.tied
        if "tied" in kwargs:
            tied = self.tie_target(kwargs.pop("tied"), op, _kw_span(e, "tied"))
        inits = fn.inits
        for key in [k for k in kwargs if k == "init" or k.endswith("_init")]:
            if is_init_key(op, key):
                inits += init_keyword(key, as_init(kwargs.pop(key), _kw_span(e, key), f"{op.name}({key}=...)"),
                                      _kw_span(e, key))
            elif key in op.attr_names() and isinstance(kwargs[key], Builtin):  # parameter(init=zeros)
                kwargs[key] = as_init(kwargs[key], _kw_span(e, key), f"{op.name}({key}=...)")
        for key, value in kwargs.items():
            if key in op.attr_names() and key != extra_field:
                attrs[key] = value
            elif extra_field:
                attrs.setdefault(extra_field, {})
                attrs[extra_field] = {**attrs[extra_field], key: value}
            else:
                raise ArchError(f"{op.name}() has no argument '{key}'", _kw_span(e, key),
                                did_you_mean(key, op.attr_names()))
        bound = fn.bound + tuple(tensors)
        new = replace(fn, kwargs=attrs, bound=bound, span=e.span, scope=None if not fn.scope else fn.scope, tied=tied,
                      inits=inits)
        spans = {name: a.span for name, a in zip(names, e.args[len(tensors):])}
        spans.update({k.name: k.span for k in e.kwargs})
        self.check_attrs(op, attrs, e.span, spans)
        if tensors or op.min_inputs == 0:
            return self.apply(replace(new, bound=()), list(bound), frame, e.span)
        return new

    def tie_target(self, value: Any, op: Op, span: Span) -> str:
        """`tied=wte` (a named instance) or `tied="transformer.wte"` (a scope path)."""
        if isinstance(value, str):
            return value
        if isinstance(value, CALLABLES) and value.scope:
            return value.scope
        raise ArchError(f"{op.name}(tied=...) takes a named instance or its scope path, got {describe(value)}",
                        span, "name the instance first, e.g. wte = embedding(vocab, D), then tied=wte")

    def check_attrs(self, op: Op, attrs: dict[str, Any], span: Span, arg_spans: dict[str, Span] | None = None) -> None:
        """Validate an op's arguments once all are given; an error points at the argument at fault."""
        try:
            op.make_attrs({k: plain(v) for k, v in attrs.items()}, strict=True) if _all_given(op, attrs) else None
        except OpError as err:
            spans = arg_spans or {}
            at = next((spans[w] for w in reversed(err.where) if w in spans), span)
            raise ArchError(err.message, at, err.hint) from None

    def builtin(self, name: str, args: list[Any], kwargs: dict[str, Any], frame: Frame, e: A.Call) -> Any:
        return call_builtin(self, name, args, kwargs, frame, e)

    def apply(self, fn: Callable, inputs: list[Tensor], frame: Frame, span: Span | None,
              prefix: str | None = None) -> Any:
        """Apply a callable to tensors. Anonymous instances are named under `prefix`."""
        self.tick(span)
        prefix = frame.scope if prefix is None else prefix
        if isinstance(fn, OpFn):
            return self.apply_op_fn(fn, inputs, frame, span, prefix)
        if isinstance(fn, BlockFn):
            scope = fn.scope if fn.scope is not None else (
                frame.forced_scope if frame.forced_scope is not None
                else self.fresh(prefix, snake(fn.template.definition.name)))
            self.restart(scope)
            try:
                outs = self.apply_block(fn, inputs, span, scope, frame.annotations)
            except ArchError as err:
                raise applied_here(err, fn.template.definition.name, span) from None
            return outs[0] if len(outs) == 1 else tuple(outs)
        if isinstance(fn, PipeFn):
            self.restart(fn.scope or "")
            inner = fn.scope if fn.scope is not None else (
                self.fresh(prefix, "sequential") if fn.numbered else prefix)
            value: Any = inputs
            stages = [named(st, join_scope(inner, str(k))) for k, st in enumerate(fn.stages)] if fn.numbered \
                else fn.stages
            for stage in stages:
                value = self.apply(stage, list(value) if isinstance(value, (tuple, list)) else [value],
                                   frame, span, inner)
            return value
        if isinstance(fn, StackFn):
            out = self.apply_stack(fn, inputs, frame, span, prefix)
            watch = STACK_APPLIED.get()
            if watch is not None:  # a search space's probe (archc/space_probe.py)
                watch(fn.span, None, inputs, out)
            return out
        if isinstance(fn, SlotFn):
            return self.apply_slot(fn, inputs, frame, span, prefix)
        if isinstance(fn, MoeFn):
            return self.apply_moe(fn, inputs, frame, span, prefix)
        if isinstance(fn, ResidualFn):
            if len(inputs) != 1:
                raise ArchError("residual() takes one tensor", span)
            self.restart(fn.scope or "")
            inner = fn.scope if fn.scope is not None else prefix
            return self.residual_add(inputs[0], fn.inner, frame, span, inner)
        raise AssertionError(fn)

    def restart(self, scope: str) -> None:
        """Applying the instance `scope` again: its anonymous parts get the same names as the
        first time, so they are the same weights (a named instance applied twice is shared).
        Costs the number of counters below `scope`, never a scan of all of them."""
        if scope:
            for prefix in self.under.pop(scope, ()):
                self.counters.pop(prefix, None)

    def fresh(self, prefix: str, base: str) -> str:
        table = self.counters.get(prefix)
        if table is None:
            table = self.counters[prefix] = {}
            if prefix:  # index the new prefix under itself and each enclosing scope
                parts = prefix.split(".")
                for i in range(1, len(parts) + 1):
                    self.under.setdefault(".".join(parts[:i]), set()).add(prefix)
        n = table.get(base, 0)
        table[base] = n + 1
        return join_scope(prefix, base if n == 0 else f"{base}_{n}")


def applied_here(err: ArchError, block: str, span: Span | None) -> ArchError:
    """An error from inside a block that another file defines (the standard library, an import),
    with a note at the application that led there, so the user sees their own line too."""
    last = next((at for text, at in reversed(err.notes) if text.endswith("applied here")), err.span)
    if span is not None and last is not None and last.file != span.file:
        err.notes.append((f"in '{block}', applied here", span))
    return err


def _all_given(op: Op, attrs: dict[str, Any]) -> bool:
    required = [n for n, f in op.Attrs.model_fields.items() if f.is_required()]
    return all(n in attrs for n in required)


def _arg_spans(e: A.Call, skip: int) -> dict[str | int, Span]:
    """Where each non-tensor argument of a call is written: by position (after `skip` tensors) and name."""
    spans: dict[str | int, Span] = {i: a.span for i, a in enumerate(e.args[skip:])}
    spans.update({k.name: k.span for k in e.kwargs})
    return spans


def _kw_span(e: A.Call, key: str) -> Span:
    return next((k.span for k in e.kwargs if k.name == key), e.span)
