"""Block application: a block's parameters bound and checked, its inputs matched against its
signature, its body run in a frame of its own, and blocks passed into interface slots."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from archc.elaborate import connect as C
from archc.elaborate import forecast, sparse
from archc.elaborate.inits import Rules
from archc.elaborate.inits import check_used as inits_used
from archc.elaborate.loader import ModuleEnv
from archc.elaborate.state import ANNOTATIONS, PARAM_TYPES, State, jsonable
from archc.elaborate.unify import Pattern
from archc.elaborate.values import (BlockFn, BlockTemplate, Callable, Frame, InterfaceRef, SlotFn, Tensor, describe,
                                    named, snake)
from archc.errors import ArchError, Span, did_you_mean
from archc.frontend import ast as A
from archc.frontend.fmt import type_text
from archc.ir.graph import ScopeInfo, SpanModel
from archc.sizes import Size


class Blocks(State):
    """Binds, checks and applies blocks."""

    def signature(self, b: A.BlockDef, env: ModuleEnv) -> tuple[tuple[A.Formal, ...], tuple[A.TensorTypeExpr, ...]]:
        if b.ports is not None:
            if b.implements:
                self.interface(b.implements, env, b.span)
            return b.ports, b.outs or ()
        iface = self.interface(b.implements or "", env, b.name_span or b.span)
        return iface.definition.ports, iface.definition.outs

    def interface(self, name: str, env: ModuleEnv, span: Span) -> InterfaceRef:
        value = env.names.get(name)
        if not isinstance(value, InterfaceRef):
            what = f"'{name}' is {describe(value)}, not an interface" if value is not None else \
                f"unknown interface '{name}'"
            raise ArchError(what, span,
                            did_you_mean(name, [n for n, v in env.names.items() if isinstance(v, InterfaceRef)]))
        return value

    def construct(self, template: BlockTemplate, args: tuple[Any, ...], kwargs: dict[str, Any],
                  span: Span | None, base: dict[str, Any] | None = None,
                  arg_spans: dict[str | int, Span] | None = None) -> BlockFn:
        """Bind a block's parameters: check names and types, fill in defaults. `arg_spans` locates
        each argument (positional by index, keyword by name) for errors about it."""
        b = template.definition
        given = dict(base or {})
        where = dict(arg_spans or {})
        if len(args) > len(b.params):
            raise ArchError(f"block '{b.name}' takes {len(b.params)} parameter{'s' if len(b.params) != 1 else ''}, "
                            f"got {len(args)} positional", where.get(len(b.params), span))
        for i, (formal, value) in enumerate(zip(b.params, args)):
            given[formal.name] = value
            where[formal.name] = where.get(i, span)  # type: ignore[assignment]
        for key, value in kwargs.items():
            if key not in {p.name for p in b.params}:
                ports = {p.name for p in (b.ports or ())}
                hint = (f"'{key}' is an input of '{b.name}': pass tensors positionally" if key in ports
                        else did_you_mean(key, [p.name for p in b.params]))
                raise ArchError(f"block '{b.name}' has no parameter '{key}'", where.get(key, span), hint)
            given[key] = value
        frame = Frame(module=template.module, scope="", block=b.name)
        params: dict[str, Any] = {}
        for formal in b.params:
            if formal.name in given:
                value = given[formal.name]
            elif formal.default is not None:
                frame.vars.update(params)
                value = self.eval(formal.default, frame)
            else:
                raise ArchError(f"block '{b.name}' needs its parameter '{formal.name}: {type_text(formal.type)}'",
                                span, notes=[("declared here", formal.span)])
            params[formal.name] = self.check_param(formal, value, template.module, b, where.get(formal.name, span))
        return BlockFn(template, params, None, span)

    def check_param(self, formal: A.Formal, value: Any, env: ModuleEnv, b: A.BlockDef, span: Span | None) -> Any:
        t = formal.type
        where = f"parameter '{formal.name}' of '{b.name}'"
        if isinstance(t, A.TensorTypeExpr):
            raise ArchError(f"{where} has a tensor type; tensors are inputs, declared in the second '(...)'",
                            formal.span)
        name = t.name
        bad = ArchError(f"{where} must be {_article(name)}, got {describe(value)}", span,
                        notes=[("declared here", formal.span)])
        if name == "int":
            if isinstance(value, Size) and value.is_const:
                value = value.value
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad
        elif name == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            value = float(value)
        elif name == "bool":
            if not isinstance(value, bool):
                raise bad
        elif name == "str":
            if not isinstance(value, str):
                raise bad
        elif name == "axis":
            if isinstance(value, bool) or not isinstance(value, (int, Size)):
                raise bad
        elif name == "list":
            if isinstance(value, list):
                value = tuple(value)
            if not isinstance(value, tuple):
                raise bad
        elif name == "connection":
            value = self.as_policy(value, span)
            if value is None:
                raise bad
        elif name in ("fn", "block"):
            value = self.as_callable(value, span)
            if value is None:
                raise bad
        else:
            iface = env.names.get(name)
            if not isinstance(iface, InterfaceRef):
                raise ArchError(f"unknown parameter type '{name}'", t.span,
                                did_you_mean(name, list(PARAM_TYPES) + [n for n, v in env.names.items()
                                                                        if isinstance(v, InterfaceRef)]))
            fn = self.as_callable(value, span)
            if fn is None:
                raise bad
            self.conforms(fn, iface, where, span)
            value = SlotFn(iface, fn, formal.name, None, span)
        return value

    def conforms(self, fn: Callable, iface: InterfaceRef, where: str, span: Span | None) -> None:
        """A block passed for an interface must have its number of inputs and outputs, and
        implement it (by declaration, or by a signature of the same ranks)."""
        if not isinstance(fn, BlockFn):
            return  # ops and pipelines are checked when applied
        b = fn.template.definition
        if b.implements == iface.definition.name:
            return
        ports, outs = self.signature(b, fn.template.module)
        i = iface.definition
        same = len(ports) == len(i.ports) and len(outs) == len(i.outs) and all(
            _rank_of(p.type) == _rank_of(q.type) for p, q in zip(ports, i.ports)) and all(
            _rank_of(p) == _rank_of(q) for p, q in zip(outs, i.outs))
        if not same:
            raise ArchError(f"{where}: block '{b.name}' does not fit the interface '{i.name}'", span,
                            f"'{i.name}' is {_formals_text(i.ports)} -> {_outs_text(i.outs)}; "
                            f"'{b.name}' is {_formals_text(ports)} -> {_outs_text(outs)}",
                            notes=[("the interface is declared here", i.span)])

    def block_frame(self, fn: BlockFn, scope: str) -> Frame:
        return Frame(module=fn.template.module, scope=scope, vars=dict(fn.params), block=fn.template.definition.name)

    def apply_block(self, fn: BlockFn, inputs: list[Tensor], span: Span | None, scope: str,
                    annotations: tuple[A.Annotation, ...] = ()) -> list[Tensor]:
        b = fn.template.definition
        ports, _ = self.signature(b, fn.template.module)
        if len(inputs) != len(ports):
            raise ArchError(f"block '{b.name}' takes {len(ports)} input{'s' if len(ports) != 1 else ''} "
                            f"{_formals_text(ports)}, got {len(inputs)}", span)
        frame = self.block_frame(fn, scope)
        frame.annotations = annotations  # `@sparse("2:4") y = Mlp()(x)` marks the ops inside Mlp
        bindings: dict[str, Size] = {}
        stars: dict[str, Any] = {}
        matched = []
        for port, t in zip(ports, inputs):
            pattern = Pattern(port.type, self.size_lookup(frame), fn.template.module.axes)  # type: ignore[arg-type]
            relabelled = pattern.match(t.type, bindings, stars, f"input '{port.name}' of '{b.name}'", span)
            matched.append(replace(t, type=relabelled))
        for axis, size in bindings.items():
            frame.vars.setdefault(axis, size.value if size.is_const else size)
        for port, t in zip(ports, matched):
            frame.vars[port.name] = t
        if scope in self.scopes:  # a named instance applied again: it shares its weights
            info = self.scopes[scope]
            self.scopes[scope] = info.model_copy(update={"applied": info.applied + 1})
        self.record_scope(scope, b.name, fn.params, b.span)
        self.tick(span, forecast.BLOCK_STEPS)
        app = forecast.Application(fn, tuple(t.type for t in inputs), span, scope, annotations, len(self.nodes),
                                   self.steps, self.depth)
        key = id(b)
        if self.applying.get(key):  # the block applies itself: count what it will make first
            self.foresee(app, recursive=True)
        elif self.in_progress and self.steps > self.limits.max_steps // 8 and not self.foreseen:
            self.foreseen = True  # a large expansion: count the outermost application, once
            self.foresee(self.in_progress[0], recursive=False)
        self.applying[key] = self.applying.get(key, 0) + 1
        self.in_progress.append(app)
        try:
            return self.run_block(fn, frame, matched, span, bindings, stars)
        finally:
            self.applying[key] -= 1
            self.in_progress.pop()

    def foresee(self, app: forecast.Application, recursive: bool) -> None:
        forecast.foresee(self, app, recursive)

    def run_block(self, fn: BlockFn, frame: Frame, inputs: list[Tensor], span: Span | None,
                  bindings: dict[str, Size], stars: dict[str, Any] | None = None) -> list[Tensor]:
        b = fn.template.definition
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise ArchError(f"blocks nest more than {self.limits.max_depth} deep (is '{b.name}' recursive?)", span)
        saved_rules: dict[int, Rules] = {}
        try:
            for a in b.annotations:
                if a.name not in ANNOTATIONS or a.name == "scope":
                    raise ArchError(f"unknown annotation '@{a.name}' on a block" if a.name != "scope" else
                                    "@scope names the instances of a statement; it cannot stand on a block",
                                    a.span, did_you_mean(a.name, [n for n in ANNOTATIONS if n != "scope"]))
            frame.annotations = frame.annotations + b.annotations
            saved_rules = self.enter_inits(b.annotations, frame)
            result = self.exec_body(b.body, frame)
        finally:
            self.depth -= 1
            self.init_rules.update(saved_rules)
        sparse.check_used(b.annotations, self.sparse_used, "block")
        inits_used(b.annotations, self.inits_used, "block")
        if result is None:
            raise ArchError(f"block '{b.name}' does not return a value", b.name_span or b.span)
        values, ret_span = result
        _, outs = self.signature(b, fn.template.module)
        if len(values) != len(outs):
            raise ArchError(f"block '{b.name}' returns {len(values)} value{'s' if len(values) != 1 else ''}, "
                            f"its signature says {len(outs)}", ret_span)
        checked = []
        for i, (v, out) in enumerate(zip(values, outs)):
            if not isinstance(v, Tensor):
                raise ArchError(f"block '{b.name}' must return tensors, got {describe(v)}", ret_span)
            pattern = Pattern(out, self.size_lookup(frame), fn.template.module.axes)
            what = f"block '{b.name}' returns" + (f" (output {i + 1})" if len(outs) > 1 else "")
            relabelled = pattern.match(v.type, bindings, stars if stars is not None else {}, what, ret_span)
            if not isinstance(v, C.StreamState):
                self.values[v.id] = relabelled
            checked.append(replace(v, type=relabelled))
        return checked

    def record_scope(self, scope: str, kind: str, args: dict[str, Any], span: Span | None) -> None:
        if scope and scope not in self.scopes:
            self.scopes[scope] = ScopeInfo(path=scope, kind=kind, args={k: jsonable(v) for k, v in args.items()},
                                           span=SpanModel.of(span))

    def apply_slot(self, fn: SlotFn, inputs: list[Tensor], frame: Frame, span: Span | None, prefix: str) -> Any:
        i = fn.interface.definition
        env = fn.interface.module
        look = self.size_lookup(Frame(module=env, scope=""))
        bindings: dict[str, Size] = {}
        stars: dict[str, Any] = {}
        if len(inputs) != len(i.ports):
            raise ArchError(f"the slot '{fn.param}' ({i.name}) takes {len(i.ports)} inputs, got {len(inputs)}", span)
        for port, t in zip(i.ports, inputs):
            Pattern(port.type, look, env.axes).match(t.type, bindings, stars,  # type: ignore[arg-type]
                                                     f"input of the slot '{fn.param}: {i.name}'", span)
        inner = fn.inner if fn.inner.scope is not None or fn.scope is None else named(fn.inner, fn.scope)
        if inner.scope is None and isinstance(inner, BlockFn):
            inner = named(inner, self.fresh(prefix, snake(inner.template.definition.name)))
        out = self.apply(inner, inputs, frame, span, prefix)
        if inner.scope in self.scopes:  # the diagram names the slot the instance fills
            self.scopes[inner.scope] = self.scopes[inner.scope].model_copy(update={"slot": f"{fn.param}: {i.name}"})
        outs = list(out) if isinstance(out, tuple) else [out]
        if len(outs) != len(i.outs):
            raise ArchError(f"the block in slot '{fn.param}' returns {len(outs)} values; {i.name} needs {len(i.outs)}",
                            span)
        for o, t in zip(i.outs, outs):
            Pattern(o, look, env.axes).match(t.type, bindings, stars,
                                             f"the block in slot '{fn.param}: {i.name}' returns", fn.span or span)
        return out


def _article(type_name: str) -> str:
    return {"int": "an int", "float": "a float", "bool": "a bool", "str": "a string", "fn": "a callable",
            "block": "a block", "axis": "an axis size", "list": "a list"}.get(type_name, f"a '{type_name}'")


def _rank_of(t: Any) -> tuple[int, bool] | None:
    if isinstance(t, A.TensorTypeExpr):
        return (sum(1 for d in t.dims if not isinstance(d, A.Star)), any(isinstance(d, A.Star) for d in t.dims))
    return None


def _formals_text(ports: Iterable[A.Formal]) -> str:
    return "(" + ", ".join(f"{p.name}: {type_text(p.type)}" for p in ports) + ")"


def _outs_text(outs: Iterable[A.TensorTypeExpr]) -> str:
    outs = list(outs)
    return type_text(outs[0]) if len(outs) == 1 else "(" + ", ".join(type_text(o) for o in outs) + ")"
