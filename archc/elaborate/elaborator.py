"""Elaborate a model: evaluate its body, instantiating blocks and emitting typed op nodes.

Blocks are instantiated where they are applied, with the real types of their inputs, so every
shape is known (or symbolic, for axes such as B and T) before anything runs. Expansion is bounded:
a spec that would unroll past `Limits` fails with an error at the statement that did it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from archc.elaborate import connect as C
from archc import guards
from archc.elaborate import forecast
from archc.elaborate import sparse
from archc.elaborate.builtins import NAMES, call_builtin
from archc.elaborate.consteval import ConstError, is_num, numeric, plain
from archc.elaborate.dtypes import build_dtype, check_build_dtype, dtype_rule, follow_dtype
from archc.elaborate.inits import (Rules, annotation_inits, annotation_rules, as_init, init_keyword, is_init_key,
                                  with_inits)
from archc.elaborate.inits import check_used as inits_used
from archc.elaborate.loader import LazyLet, Loader, ModuleEnv
from archc.elaborate.unify import Pattern
from archc.elaborate.values import (CALLABLES, BlockFn, BlockTemplate, Builtin, Callable, Frame,
                                    InterfaceRef, ModuleRef, OpFn, PipeFn, ResidualFn, SlotFn,
                                    StackFn, Tensor, describe, join_scope, named)
from archc.errors import ArchError, Span, did_you_mean
from archc.frontend import ast as A
from archc.frontend.fmt import expr_text, type_text
from archc.frontend.parser import MAX_STRING
from archc.ir.blocks import annotate, within
from archc.ir.names import bad_scope_segment, is_identifier
from archc.ir.graph import AnnotationIR, Graph, Guard, Node, ParamDecl, Port, ScopeInfo, SpanModel
from archc.ir.types import FLOAT_DTYPES, TensorType
from archc.ir.verify import MAX_NODES
from archc.ops import registry
from archc.ops.registry import Op, OpError
from archc.recursion import headroom
from archc.sizes import Size, SizeError, parse_size

PARAM_TYPES = ("int", "float", "bool", "str", "fn", "block", "axis", "list", "connection")
BUILTINS = NAMES
ANNOTATIONS = ("scope", "init", "dtype", "no_fuse", "sparse", "deploy", "name", "fused")  # fused: set by mark_epilogues


# Levels of evaluation in progress at once: each nested expression and each block applied inside
# another adds one or a few. The spec library needs under 100; the Python frames they use are
# reserved by headroom() whatever Python's recursion limit is.
MAX_NESTING = 1000
_FRAMES_PER_NESTING = 16


@dataclass(frozen=True)
class Limits:
    max_nodes: int = MAX_NODES
    max_steps: int = 2_000_000
    max_depth: int = 64
    max_params: int = 10**11  # parameter elements


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


class Elaborator:
    def __init__(self, limits: Limits | None = None, dtype: str = "f32") -> None:
        self.limits = limits or Limits()
        self.dtype = dtype  # the build's floating-point dtype (archc/elaborate/dtypes.py)
        self.nodes: list[Node] = []
        self.values: dict[str, TensorType] = {}
        self.params: dict[str, ParamDecl] = {}
        self.param_owner: dict[str, Span | None] = {}
        self.scopes: dict[str, ScopeInfo] = {}
        self.counters: dict[str, dict[str, int]] = {}  # prefix -> base -> instances named so far
        self.applying: dict[int, int] = {}  # block definition (by id) -> its applications in progress
        self.forecasts: dict[Any, forecast.Cost] = {}  # see archc.elaborate.forecast
        self.in_progress: list[forecast.Application] = []  # block applications, outermost first
        self.guards: dict[tuple[str, str, int], Guard] = {}  # what the run time must check (archc.guards)
        self.foreseen = False
        self.init_rules: dict[int, Rules] = {}  # the `@init` annotations being elaborated (by id), evaluated
        self.sparse_used: set[int] = set()  # the @sparse annotations (by id) that reached a weight
        self.inits_used: set[int] = set()  # the @init annotations (by id) that initialized something
        self.under: dict[str, set[str]] = {}  # scope -> the counter prefixes at or below it
        self.steps = 0
        self.depth = 0
        self.nesting = 0  # expressions being evaluated, across all blocks being applied
        self.param_elems = 0
        self.span: Span | None = None  # the statement being elaborated, for limit errors
        self.connect: list[C.Context] = []  # stacks being wired by a connection policy

    # ==== entry ===================================================================================
    def model(self, env: ModuleEnv, name: str | None, overrides: dict[str, Any]) -> Graph:
        models = [b for b in env.blocks() if b.kind == "model"]
        if name is not None:
            chosen = next((b for b in env.blocks() if b.name == name), None)
            if chosen is None:
                close = did_you_mean(name, [b.name for b in env.blocks()])
                near = next((b.name_span for b in env.blocks() if close and f"'{b.name}'" in close), None)
                raise ArchError(f"this file defines no model or block '{name}'", near or Span(env.file, 1, 1),
                                close)
        elif len(models) == 1:
            chosen = models[0]
        elif not models:
            first = env.blocks()[0].name_span if env.blocks() else None
            raise ArchError("this file defines no model", first or Span(env.file, 1, 1),
                            "declare the entry point with 'model Name(...) (inputs) -> outputs { ... }'")
        else:
            raise ArchError(f"this file defines {len(models)} models ({', '.join(m.name for m in models)})",
                            models[1].name_span, "choose one with --model NAME",
                            notes=[("the first model is here", models[0].name_span)])
        template = BlockTemplate(chosen, env)
        unknown = set(overrides) - {p.name for p in chosen.params}
        if unknown:
            bad = sorted(unknown)[0]
            raise ArchError(f"model '{chosen.name}' has no parameter '{bad}'", chosen.name_span,
                            did_you_mean(bad, [p.name for p in chosen.params]))
        root = Frame(module=env, scope="")
        types = {f.name: getattr(f.type, "name", "") for f in chosen.params}
        overrides = {k: self.eval(_as_expr(v, types.get(k, "")), root) for k, v in overrides.items()}
        fn = self.construct(template, (), overrides, chosen.name_span or chosen.span)
        frame = self.block_frame(fn, "")
        ports, outs = self.signature(chosen, env)
        bindings: dict[str, Size] = {}
        inputs: list[Tensor] = []
        for port in ports:
            t = Pattern(port.type, self.size_lookup(frame), env.axes).fresh(bindings)  # type: ignore[arg-type]
            if port.type.dtype is None:  # type: ignore[union-attr]
                t = TensorType(dtype=self.dtype, shape=t.shape)  # an input without a dtype: the build's
            try:
                _check_tensor_type(t, f"input '{port.name}'")
            except OpError as err:
                raise ArchError(err.message, port.span, err.hint) from None
            tensor = self.new_value(t)
            inputs.append(tensor)
            frame.vars[port.name] = tensor
        for axis, size in bindings.items():
            frame.vars.setdefault(axis, size.value if size.is_const else size)
        results = self.run_block(fn, frame, inputs, chosen.span, bindings)
        _check_guards(self.guards.values(), [t.type for t in inputs])
        return annotate(Graph(
            name=chosen.name,
            axes=tuple(sorted({a for t in (self.values[i.id] for i in inputs) for s in t.sizes for a in s.atoms()})),
            model_args={k: _jsonable(v) for k, v in fn.params.items()},
            inputs=tuple(Port(name=p.name, value=t.id, type=t.type) for p, t in zip(ports, inputs)),
            outputs=tuple(Port(name=f"out{i}" if len(results) > 1 else "out", value=t.id, type=t.type)
                          for i, t in enumerate(results)),
            values=self.values, nodes=tuple(self.nodes), params=self.params, scopes=self.scopes,
            guards=tuple(self.guards.values())))

    # ==== values ==================================================================================
    def new_value(self, t: TensorType) -> Tensor:
        vid = f"%{len(self.values)}"
        self.values[vid] = t
        return Tensor(vid, t)

    def tick(self, span: Span | None, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > self.limits.max_steps:
            raise ArchError(f"elaboration takes more than {self.limits.max_steps} steps "
                            "(a loop or stack is too large)", span or self.span)

    # ==== blocks ==================================================================================
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
            self.scopes[scope] = ScopeInfo(path=scope, kind=kind, args={k: _jsonable(v) for k, v in args.items()},
                                           span=SpanModel.of(span))

    # ==== statements ==============================================================================
    def exec_body(self, stmts: tuple[A.Stmt, ...], frame: Frame) -> tuple[list[Any], Span] | None:
        for s in stmts:  # the parser refuses statements after a `return`
            result = self.exec_stmt(s, frame)
            if result is not None:
                return result  # a `return`, or an `if`/`for` whose body returned
        return None

    def exec_stmt(self, s: A.Stmt, frame: Frame) -> tuple[list[Any], Span] | None:
        self.tick(s.span)
        self.span = s.span
        saved = (frame.annotations, frame.forced_scope)
        for a in s.annotations:
            if a.name not in ANNOTATIONS:
                raise ArchError(f"unknown annotation '@{a.name}'", a.span, did_you_mean(a.name, ANNOTATIONS))
            if a.name == "scope":
                path = self.eval(a.args[0], frame) if len(a.args) == 1 else None
                if not isinstance(path, str):
                    raise ArchError("@scope takes one string, the scope path", a.span)
                bad = bad_scope_segment(path)
                if bad is not None:
                    raise ArchError(f"@scope path {json.dumps(path)}: segment {json.dumps(bad)} is not a name or an "
                                    "index", a.span, "each segment of a scope path is made of ASCII letters, digits "
                                    "and '_', as in \"h.0.attn\"")
                frame.forced_scope = join_scope(frame.scope, path)  # relative to the block's instance
        frame.annotations = frame.annotations + tuple(a for a in s.annotations if a.name != "scope")
        saved_rules: dict[int, Rules] = {}
        made, frame.scope_used, forced = len(self.nodes), False, frame.forced_scope
        try:
            saved_rules = self.enter_inits(s.annotations, frame)
            result = self._exec(s, frame)
        finally:
            frame.annotations, frame.forced_scope = saved
            self.init_rules.update(saved_rules)
        scoped = next((a for a in s.annotations if a.name == "scope"), None)
        if scoped is not None and not frame.scope_used and \
                not any(within(n.scope, forced or "") for n in self.nodes[made:]):
            raise ArchError("@scope names nothing here: the statement makes no op and no instance under it (an "
                            "instance named before keeps its name)", scoped.span,
                            "put @scope on the statement that makes the instance, as in @scope('p') f = Block()")
        sparse.check_used(s.annotations, self.sparse_used, "statement")
        inits_used(s.annotations, self.inits_used, "statement")
        return result

    def enter_inits(self, written: tuple[A.Annotation, ...], frame: Frame) -> dict[int, Rules]:
        """Evaluate the `@init(...)` annotations of a statement or block where they are written (so
        they may use its parameters); returns what to restore when it ends."""
        saved: dict[int, Rules] = {}
        for a in written:
            if a.name == "init":
                saved[id(a)] = self.init_rules.get(id(a), {})
                values = {k.name: self.eval(k.value, frame) for k in a.kwargs}
                self.init_rules[id(a)] = annotation_rules(a, values)
            elif a.name == "dtype":  # `@dtype("bf16")`: the build's dtype for the ops made inside
                saved[id(a)] = self.init_rules.get(id(a), {})
                self.init_rules[id(a)] = dtype_rule(a, [self.eval(x, frame) for x in a.args], bool(a.kwargs))
        return saved

    def _exec(self, s: A.Stmt, frame: Frame) -> tuple[list[Any], Span] | None:
        if isinstance(s, A.Assign):
            targets = [self.target_name(s, k, frame) for k in range(len(s.targets))]
            exact = [bool(s.formats) and s.formats[k] is not None for k in range(len(s.targets))]
            frame.target = targets[0] if len(targets) == 1 else None
            frame.target_exact = exact[0]
            try:
                value = self.eval(s.value, frame)
            finally:
                frame.target, frame.target_exact = None, False
            if len(targets) == 1:
                self.bind(targets[0], value, frame, s.span, exact[0])
                return None
            items = value if isinstance(value, tuple) else None
            if items is None or len(items) != len(targets):
                got = f"{len(items)} values" if items is not None else describe(value)
                raise ArchError(f"cannot unpack {got} into {len(targets)} names", s.span)
            for target, item, ex in zip(targets, items, exact):
                self.bind(target, item, frame, s.span, ex)
            return None
        if isinstance(s, A.Return):
            values: list[Any] = []
            for v in s.values:
                value = self.eval(v, frame)
                values.extend(value if isinstance(value, tuple) and len(s.values) == 1 else [value])
            return values, s.span
        if isinstance(s, A.If):
            for cond, body in s.branches:
                c = self.eval(cond, frame)
                if not isinstance(c, bool):
                    raise ArchError(f"an 'if' condition must be a compile-time bool, got {describe(c)}", cond.span)
                if c:
                    return self.exec_body(body, frame)
            return self.exec_body(s.orelse, frame) if s.orelse is not None else None
        if isinstance(s, A.For):
            seq = self.eval(s.iter, frame)
            if not isinstance(seq, tuple):
                raise ArchError(f"'for' needs a list or range(...), got {describe(seq)}", s.iter.span)
            outer_loop = frame.loop
            smallest: int | None = None
            for i, item in enumerate(seq):
                frame.vars[s.var] = item
                frame.loop = outer_loop + (i,)
                before = len(self.nodes)
                try:
                    result = self.exec_body(s.body, frame)
                finally:
                    frame.loop = outer_loop
                smallest = self.expect_nodes(len(self.nodes) - before, smallest, len(seq) - 1 - i, s.span, "iterations")
                if result is not None:
                    return result
            return None
        raise AssertionError(s)

    def target_name(self, s: A.Assign, k: int, frame: Frame) -> str:
        """The name target `k` of an assignment binds: as written, or built (`denselayer{i + 1}`)."""
        f = s.formats[k] if s.formats else None
        if f is None:
            return s.targets[k]
        text = ""
        for part in f.parts:
            value = part if isinstance(part, str) else self.eval(part, frame)
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ArchError(f"a name is built from ints and strings; {{{expr_text(part)}}} is {describe(value)}",
                                part.span if not isinstance(part, str) else f.span)  # type: ignore[union-attr]
            text += str(value)
        if not is_identifier(text) or bad_scope_segment(text) is not None:
            raise ArchError(f"'{s.targets[k]}' builds the name {json.dumps(text)}, which is not a name", f.span,
                            "a built name is letters, digits and '_', as denselayer1")
        return text

    def instance_path(self, name: str, frame: Frame, span: Span, exact: bool = False) -> str:
        """Claim the instance name `name` in this block (suffixed by loop indices, unless `exact`:
        a name built with `{...}` is complete)."""
        path = ".".join([name] + ([] if exact else [str(i) for i in frame.loop]))
        if path in frame.instances:
            raise ArchError(f"the instance name '{name}' is already used in '{frame.block}'", span,
                            "each named instance is one set of weights; pick another name")
        frame.instances.add(path)
        return join_scope(frame.scope, path)

    def bind(self, name: str, value: Any, frame: Frame, span: Span, exact: bool = False) -> None:
        if isinstance(value, BlockTemplate):
            value = self.construct(value, (), {}, span)
        if isinstance(value, CALLABLES) and value.scope is None:
            if frame.forced_scope is not None:  # `@scope("p") f = Block()`: the instance is named p
                frame.scope_used = True
                value = named(value, frame.forced_scope)
            else:
                value = named(value, self.instance_path(name, frame, span, exact))
        frame.vars[name] = value

    # ==== expressions =============================================================================
    def lookup(self, name: str, frame: Frame, span: Span) -> Any:
        if name in frame.vars:
            return frame.vars[name]
        env = frame.module
        if name in env.names:
            value = env.names[name]
            if isinstance(value, LazyLet):
                return self.let_value(value, env)
            return value
        if registry.has(name):
            return OpFn(registry.get(name), {}, (), None, span)
        if name in BUILTINS:
            return Builtin(name)
        if name in env.axes:
            raise ArchError(f"axis '{name}' has no size here", span,
                            "an axis gets its size from an input type of the block that uses it")
        candidates = list(frame.vars) + list(env.names) + registry.names() + list(BUILTINS)
        raise ArchError(f"unknown name '{name}'", span, did_you_mean(name, candidates))

    def let_value(self, let: LazyLet, env: ModuleEnv) -> Any:
        if let.state == "running":
            raise ArchError(f"'let {let.definition.name}' refers to itself", let.definition.span)
        if let.state == "new":
            let.state = "running"
            let.value = self.eval(let.definition.value, Frame(module=env, scope=""))
            if isinstance(let.value, (Tensor,) + CALLABLES):
                raise ArchError("a 'let' must be a compile-time constant", let.definition.span)
            let.state = "done"
        return let.value

    def size_lookup(self, frame: Frame) -> Any:
        def look(name: str) -> Any:
            value = frame.vars.get(name)
            if value is None and name in frame.module.names and isinstance(frame.module.names[name], LazyLet):
                value = self.let_value(frame.module.names[name], frame.module)
            return value if isinstance(value, (int, Size)) and not isinstance(value, bool) else None
        return look

    def eval(self, e: A.Expr, frame: Frame) -> Any:
        """Evaluate an expression; nesting (expressions within expressions, blocks within blocks)
        is bounded by MAX_NESTING levels, archc's own limit (see archc.recursion)."""
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                raise _too_deep(self, e.span)
            return self._eval(e, frame)
        finally:
            self.nesting -= 1

    def _eval(self, e: A.Expr, frame: Frame) -> Any:
        self.tick(e.span)
        if isinstance(e, A.Name):
            return self.lookup(e.id, frame, e.span)
        if isinstance(e, A.Const):
            return e.value
        if isinstance(e, (A.TupleExpr, A.ListExpr)):
            return tuple(self.eval(i, frame) for i in e.items)
        if isinstance(e, A.BinOp):
            return self.binop(e, frame)
        if isinstance(e, A.UnaryOp):
            v = self.eval(e.operand, frame)
            if e.op == "not":
                if not isinstance(v, bool):
                    raise ArchError(f"'not' needs a bool, got {describe(v)}", e.span)
                return not v
            if isinstance(v, Tensor):
                return self.apply_op("mul", [v], {"other": -1.0}, frame, e.span)
            if isinstance(v, (int, float, Size)) and not isinstance(v, bool):
                return -v
            raise ArchError(f"cannot negate {describe(v)}", e.span)
        if isinstance(e, A.Call):
            return self.call(e, frame)
        if isinstance(e, A.Pipeline):
            return self.pipeline(e, frame)
        if isinstance(e, A.GetAttr):
            obj = self.eval(e.obj, frame)
            if isinstance(obj, ModuleRef):
                if e.name not in obj.module.names:
                    raise ArchError(f"the module has no '{e.name}'", e.span, did_you_mean(e.name, obj.module.names))
                value = obj.module.names[e.name]
                return self.let_value(value, obj.module) if isinstance(value, LazyLet) else value
            raise ArchError(f"{describe(obj)} has no attribute '{e.name}'", e.span)
        if isinstance(e, A.Index):
            return self.index(e, frame)
        if isinstance(e, A.Stack):
            return self.stack(e, frame)
        if isinstance(e, A.Cond):
            test = self.eval(e.test, frame)
            if not isinstance(test, bool):
                raise ArchError(f"'if ... then ... else' needs a compile-time bool, got {describe(test)}", e.test.span)
            return self.eval(e.then if test else e.orelse, frame)
        if isinstance(e, (A.SliceExpr, A.EllipsisExpr)):
            raise ArchError("a slice is only allowed inside [...]", e.span)
        if isinstance(e, A.Choice):  # from --set: a spec's own holes stop at the loader
            raise ArchError("a choice(...) hole is a search space: use archc space", e.span)
        raise AssertionError(e)

    def binop(self, e: A.BinOp, frame: Frame) -> Any:
        if e.op in ("and", "or"):
            a = self.eval(e.left, frame)
            if not isinstance(a, bool):
                raise ArchError(f"'{e.op}' needs bools, got {describe(a)}", e.left.span)
            if (e.op == "and" and not a) or (e.op == "or" and a):
                return a
            b = self.eval(e.right, frame)
            if not isinstance(b, bool):
                raise ArchError(f"'{e.op}' needs bools, got {describe(b)}", e.right.span)
            return b
        a, b = self.eval(e.left, frame), self.eval(e.right, frame)
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            return self.tensor_binop(e, a, b, frame)
        if e.op in ("==", "!="):
            eq = plain(a) == plain(b)
            return eq if e.op == "==" else not eq
        if e.op in ("<", "<=", ">", ">="):
            a, b = plain(a), plain(b)
            if not is_num(a) or not is_num(b):
                raise ArchError(f"cannot compare {describe(a)} and {describe(b)}", e.span)
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[e.op]
        return self.arith(e, a, b)

    def arith(self, e: A.BinOp, a: Any, b: Any) -> Any:
        if e.op == "+" and isinstance(a, str) and isinstance(b, str):
            if len(a) + len(b) > MAX_STRING:
                raise ArchError(f"string is too long (more than {MAX_STRING} characters)", e.span)
            self.tick(e.span, (len(a) + len(b)) // 8)
            return a + b
        if e.op == "+" and isinstance(a, tuple) and isinstance(b, tuple):
            if len(a) + len(b) > 100_000:
                raise ArchError("list is too long", e.span)
            self.tick(e.span, len(a) + len(b))
            return a + b
        if not (is_num(a) or isinstance(a, Size)) or not (is_num(b) or isinstance(b, Size)):
            raise ArchError(f"cannot apply '{e.op}' to {describe(a)} and {describe(b)}", e.span)
        try:
            return numeric(e.op, a, b)
        except SizeError as err:
            raise ArchError(str(err), e.span) from None
        except ZeroDivisionError:
            raise ArchError("division by zero", e.span) from None
        except ConstError as err:
            raise ArchError(str(err), e.span) from None
        except OverflowError:  # an int too large to become a float
            raise ArchError(f"a number in '{e.op}' is too large", e.span) from None

    def tensor_binop(self, e: A.BinOp, a: Any, b: Any, frame: Frame) -> Tensor:
        ops = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow"}
        if e.op not in ops:
            raise ArchError(f"'{e.op}' is not defined on tensors", e.span,
                            "tensors support + - * / **; comparisons are for compile-time values")
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            return self.apply_op(ops[e.op], [a, b], {}, frame, e.span)
        tensor, scalar, swap = (a, b, False) if isinstance(a, Tensor) else (b, a, True)
        if isinstance(scalar, Size) and scalar.is_const:
            scalar = scalar.value
        if isinstance(scalar, bool) or not isinstance(scalar, (int, float)):
            raise ArchError(f"cannot apply '{e.op}' to a tensor and {describe(scalar)}", e.span)
        if e.op == "-" and not swap:
            return self.apply_op("add", [tensor], {"other": -float(scalar)}, frame, e.span)
        if e.op == "/" and not swap:
            return self.apply_op("mul", [tensor], {"other": 1.0 / float(scalar)}, frame, e.span) if scalar \
                else _raise(ArchError("division by zero", e.span))
        swap = swap and e.op in ("-", "/", "**")
        return self.apply_op(ops[e.op], [tensor], {"other": float(scalar), "swap": swap}, frame, e.span)

    def index(self, e: A.Index, frame: Frame) -> Any:
        obj = self.eval(e.obj, frame)
        if isinstance(obj, tuple):
            if len(e.subs) != 1:
                raise ArchError("a list takes one index", e.span)
            i = self.eval(e.subs[0], frame)
            if isinstance(i, bool) or not isinstance(i, int):
                raise ArchError(f"a list index must be an int, got {describe(i)}", e.subs[0].span)
            if not -len(obj) <= i < len(obj):
                raise ArchError(f"index {i} is out of range for a list of {len(obj)}", e.subs[0].span)
            return obj[i]
        if not isinstance(obj, Tensor):
            raise ArchError(f"cannot index {describe(obj)}", e.span)
        rank = obj.type.rank
        subs = list(e.subs)
        ell = [i for i, s in enumerate(subs) if isinstance(s, A.EllipsisExpr)]
        if len(ell) > 1:
            raise ArchError("'...' may appear once in an index", subs[ell[1]].span)
        n_real = len(subs) - len(ell)
        if n_real > rank:
            raise ArchError(f"too many indices ({n_real}) for {obj.type}", e.span)
        if ell:
            k = ell[0]
            subs = subs[:k] + [A.SliceExpr(None, None, subs[k].span)] * (rank - n_real) + subs[k + 1:]
        out, dim = obj, 0
        for s in subs:
            if isinstance(s, A.SliceExpr):
                lo = self.eval(s.lo, frame) if s.lo else None
                hi = self.eval(s.hi, frame) if s.hi else None
                if lo is not None or hi is not None:
                    out = self.apply_op("slice", [out], {"dim": dim, "start": lo or 0, "end": hi}, frame, s.span)
                dim += 1
            else:
                i = self.eval(s, frame)
                if isinstance(i, bool) or not isinstance(i, int):
                    raise ArchError(f"a tensor index must be an int or a slice, got {describe(i)}", s.span)
                out = self.apply_op("select", [out], {"dim": dim, "index": i}, frame, s.span)
        return out

    def stack(self, e: A.Stack, frame: Frame) -> StackFn:
        args = [self.eval(a, frame) for a in e.args]
        kwargs = {k.name: self.eval(k.value, frame) for k in e.kwargs}
        bad = set(kwargs) - {"connect", "depth"}
        if bad:
            raise ArchError(f"stack() has no argument '{sorted(bad)[0]}'", e.span, "stack(depth, connect=...)")
        if "depth" in kwargs:
            args = [kwargs.pop("depth")] + args
        if len(args) != 1 or isinstance(args[0], bool) or not isinstance(args[0], int):
            raise ArchError("stack() takes its depth, a compile-time int", e.span)
        depth = args[0]
        if depth < 0:
            raise ArchError(f"stack depth {depth} is negative", e.span)
        if depth > self.limits.max_nodes:
            raise ArchError(f"stack depth {depth} exceeds the expansion limit ({self.limits.max_nodes} ops)",
                            e.span, "the limit is set by --max-nodes")
        connect = kwargs.get("connect")
        if connect is not None:
            policy = self.as_policy(connect, e.span)
            if policy is None:
                raise ArchError(f"connect= takes a connection policy ({', '.join(C.SPECS)}), got {describe(connect)}",
                                next(k.span for k in e.kwargs if k.name == "connect"))
            connect = replace(policy, span=next(k.span for k in e.kwargs if k.name == "connect"))
        return StackFn(depth, e.var, e.body, frame, connect, None, e.span)

    def as_policy(self, value: Any, span: Span | None) -> C.Policy | None:
        if isinstance(value, C.Policy):
            return value
        if isinstance(value, Builtin) and value.name in C.SPECS:
            return C.make_policy(value.name, [], {}, span)
        return None

    def pipeline(self, e: A.Pipeline, frame: Frame) -> Any:
        first = self.eval(e.stages[0], frame)
        if isinstance(first, Tensor) or (isinstance(first, tuple) and first and
                                         all(isinstance(t, Tensor) for t in first)):
            value = first
            for stage in e.stages[1:]:
                fn = self.as_callable(self.eval(stage, frame), stage.span)
                if fn is None:
                    raise ArchError(f"a pipeline stage must be callable, got {describe(self.eval(stage, frame))}",
                                    stage.span)
                value = self.apply(fn, list(value) if isinstance(value, tuple) else [value], frame, stage.span)
            return value
        stages = []
        for stage_expr, stage in zip(e.stages, [first] + [self.eval(s, frame) for s in e.stages[1:]]):
            fn = self.as_callable(stage, stage_expr.span)
            if fn is None:
                raise ArchError(f"a pipeline stage must be callable, got {describe(stage)}", stage_expr.span)
            stages.append(fn)
        return PipeFn(tuple(stages), None, e.span)

    def as_callable(self, value: Any, span: Span | None) -> Callable | None:
        if isinstance(value, CALLABLES):
            return value  # type: ignore[return-value]
        if isinstance(value, BlockTemplate):
            return self.construct(value, (), {}, span)
        if isinstance(value, Builtin) and value.name == "residual":
            return None
        return None

    # ==== calls ===================================================================================
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

    # ==== application =============================================================================
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
                else self.fresh(prefix, _snake(fn.template.definition.name)))
            self.restart(scope)
            try:
                outs = self.apply_block(fn, inputs, span, scope, frame.annotations)
            except ArchError as err:
                raise _applied_here(err, fn.template.definition.name, span) from None
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
            scope = fn.scope or self.fresh(prefix, "stack")
            self.record_scope(scope, "stack", {"depth": fn.count, **({"connect": str(fn.connect)} if fn.connect
                                                                      else {})}, fn.span)
            if fn.connect is not None:
                return self.connected_stack(fn, inputs, frame, span, scope)
            value = inputs
            smallest: int | None = None
            for i in range(fn.count):
                layer = self.stack_layer(fn, i, span)
                before = len(self.nodes)
                value = self.apply(named(layer, join_scope(scope, str(i))), list(value) if isinstance(value, (tuple, list))
                                   else [value], frame, span, scope)
                smallest = self.expect_nodes(len(self.nodes) - before, smallest, fn.count - 1 - i, fn.span or span,
                                              "layers")
            return value if not isinstance(value, list) else (value[0] if len(value) == 1 else tuple(value))
        if isinstance(fn, SlotFn):
            return self.apply_slot(fn, inputs, frame, span, prefix)
        if isinstance(fn, ResidualFn):
            if len(inputs) != 1:
                raise ArchError("residual() takes one tensor", span)
            self.restart(fn.scope or "")
            inner = fn.scope if fn.scope is not None else prefix
            return self.residual_add(inputs[0], fn.inner, frame, span, inner)
        raise AssertionError(fn)

    def expect_nodes(self, made: int, smallest: int | None, left: int, span: Span | None, unit: str) -> int:
        """After one layer of a stack or loop: fail now, not minutes from now, when the layers left
        would pass the node limit even if each were as small as the smallest so far (a stack of
        stacks that would make millions of ops fails in well under a second)."""
        smallest = made if smallest is None else min(smallest, made)
        if smallest and len(self.nodes) + smallest * left > self.limits.max_nodes:
            raise ArchError(f"the model would expand to at least {len(self.nodes) + smallest * left} ops, more than "
                            f"the limit of {self.limits.max_nodes}", span,
                            f"{left} more {unit} of {smallest} ops or more each; the limit is set by --max-nodes")
        return smallest

    def stack_layer(self, fn: StackFn, i: int, span: Span | None) -> Callable:
        # a child frame per layer: a stack nested in the body keeps seeing this layer's index
        frame = replace(fn.frame, vars={**fn.frame.vars, fn.var: i}) if fn.var else fn.frame
        layer = self.as_callable(self.eval(fn.body, frame), fn.body.span)
        if layer is None:
            raise ArchError("the body of stack() must be a block or a callable", fn.body.span)
        return layer

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
            inner = named(inner, self.fresh(prefix, _snake(inner.template.definition.name)))
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

    def op_at(self, name: str, inputs: list[Tensor], attrs: dict[str, Any], scope: str, frame: Frame,
              span: Span | None) -> Any:
        """Apply an op as the instance named `scope` (for parameters a policy owns, whose
        initializers are the policy's: `@init` annotations around it do not reach them)."""
        own = replace(frame, annotations=tuple(a for a in frame.annotations if a.name not in ("init", "dtype")))
        return self.apply_op_fn(OpFn(registry.get(name), attrs, (), scope, span), inputs, own, span, scope)

    def residual_add(self, x: Tensor, fn: Callable, frame: Frame, span: Span | None, prefix: str) -> Tensor:
        """`residual(x, f)`: x + f(x), unless a connection policy wires this stack's layers."""
        ctx = self.connect[-1] if self.connect else None
        if ctx is not None and ctx.state is not None and x.id == ctx.state.id:
            out = C.Connector(self, frame, span).residual(ctx, x, fn, prefix)
            ctx.state = out
            return out
        if isinstance(x, C.StreamState):
            raise ArchError("residual(): these residual streams belong to another layer", span)
        branch = self.apply(fn, [x], frame, span, prefix)
        if not isinstance(branch, Tensor):
            raise ArchError("the branch of residual() must return one tensor", span)
        if branch.type.sizes != x.type.sizes:
            raise ArchError(f"residual(): the branch changes the shape from {x.type} to {branch.type}", span)
        return self.apply_op("add", [x, branch], {}, frame, span)

    def connected_stack(self, fn: StackFn, inputs: list[Tensor], frame: Frame, span: Span | None,
                        scope: str) -> Tensor:
        policy: C.Policy = fn.connect
        where = policy.span or span
        con = C.Connector(self, frame, where)
        if len(inputs) != 1:
            raise ArchError(f"connect={policy} needs a stack with one input, got {len(inputs)}", where)
        ctx = C.Context(policy, scope)
        per_residual = C.policy_kind(policy) == "residual"
        x = con.enter(ctx, inputs[0])
        outputs = [x]
        dim = policy.args.get("dim", 1)
        smallest: int | None = None
        before = len(self.nodes)
        for i in range(fn.count):
            if i:  # after each layer, as in a plain stack: fail now when the rest cannot fit
                smallest = self.expect_nodes(len(self.nodes) - before, smallest, fn.count - i, fn.span or span,
                                             "layers")
            before = len(self.nodes)
            layer = named(self.stack_layer(fn, i, span), join_scope(scope, str(i)))
            inp = x
            if policy.name == "dense" and i > 0:
                inp = self.apply_op("concat", outputs, {"dim": dim}, frame, where)
            if policy.name == "mudd":  # one dynamic dense mix per layer input (q, k, v, r ways)
                ways = len(self.signature(layer.template.definition, layer.template.module)[0]) \
                    if isinstance(layer, BlockFn) else 1
                mixes = [x] * ways if i == 0 else con.mudd_mix(ctx, i, outputs, ways)
                out = self.apply(layer, mixes, frame, span, scope)
                if not isinstance(out, Tensor):
                    raise ArchError(f"connect={policy}: each layer must return one tensor", where)
                _check_same(outputs[0], out, policy, where)
                outputs.append(out)
                continue
            ctx.layer, ctx.layer_scope, ctx.call_in_layer, ctx.state = i, join_scope(scope, str(i)), 0, inp
            # a per-layer policy leaves the layer's own residual calls alone
            self.connect.append(ctx if per_residual else C.Context(policy, scope))
            try:
                out = self.apply(layer, [inp], frame, span, scope)
            except ArchError as err:
                if policy.name == "dense" and not err.hint:
                    err.hint = (f"dense(growth={policy.args['growth']}) feeds layer {i} the concatenation of all "
                                "earlier outputs, so its input axis must be able to grow")
                raise
            finally:
                self.connect.pop()
            if not isinstance(out, Tensor):
                raise ArchError(f"connect={policy}: each layer must return one tensor", where)
            if per_residual:
                plain = policy.name == "residual" and not policy.args["post"]  # the default: any layer fits
                if ctx.call_in_layer == 0 and not plain:
                    raise ArchError(f"connect={policy} has nothing to connect: layer {i} of this stack makes no "
                                    "residual(x, f) call", where,
                                    "write the layer's skips as residual(x, branch) so the policy can wire them")
                if ctx.call_in_layer and out.id != ctx.state.id:
                    raise ArchError(f"connect={policy}: a layer must return the value of its last residual(...)",
                                    where)
                x = out
            elif policy.name == "dwa":
                _check_same(outputs[0], out, policy, where)
                outputs.append(out)
                x = con.dwa_after(ctx, i + 1, outputs)
            elif policy.name == "dense":
                got = out.type.sizes[dim] if -out.type.rank <= dim < out.type.rank else None
                if got != Size.of(policy.args["growth"]):
                    raise ArchError(f"connect={policy}: layer {i} must output {policy.args['growth']} channels on "
                                    f"axis {dim + 1}, got {out.type}", where)
                outputs.append(out)
        if policy.name == "dense":
            return self.apply_op("concat", outputs, {"dim": dim}, frame, where)
        if policy.name == "mudd":  # the last mix has one way: the stack's output
            return con.mudd_mix(ctx, fn.count, outputs, 1, last=True)[0] if fn.count else x
        return con.exit(ctx, x)

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

    def apply_op(self, name: str, inputs: list[Tensor], attrs: dict[str, Any], frame: Frame,
                 span: Span | None) -> Any:
        return self.apply_op_fn(OpFn(registry.get(name), attrs, (), None, span), inputs, frame, span, frame.scope)

    def apply_op_fn(self, fn: OpFn, inputs: list[Tensor], frame: Frame, span: Span | None, prefix: str) -> Any:
        op = fn.op
        ins = list(inputs) + list(fn.bound)
        for t in ins:
            if isinstance(t, C.StreamState):
                raise ArchError(f"under connect={self.connect[-1].policy if self.connect else 'hyper'}, the layer's "
                                f"input holds {t.state.type.sizes[0]} residual streams: it can only be passed to "
                                f"residual(x, f) or returned, not to {op.name}()", span or fn.span)
        n = len(ins)
        if n < op.min_inputs or (op.max_inputs is not None and n > op.max_inputs):
            want = (f"{op.min_inputs}" if op.max_inputs == op.min_inputs else
                    f"{op.min_inputs} or more" if op.max_inputs is None else f"{op.min_inputs} to {op.max_inputs}")
            raise ArchError(f"{op.name}() takes {want} tensor input{'s' if want != '1' else ''}, got {n}",
                            span or fn.span)
        try:
            attrs = op.make_attrs({k: plain(v) for k, v in fn.kwargs.items()}, strict=True)
            types = [t.type for t in ins]
            with guards.collecting() as needs:
                outs = op.infer(attrs, types)
            self.guard(needs, op, span or fn.span)
            inits = annotation_inits(op.name, frame.annotations, self.init_rules, self.inits_used) + fn.inits
            specs = with_inits(op, op.params(attrs, types), inits, span or fn.span)
            specs, outs = follow_dtype(specs, outs, types, attrs, build_dtype(frame.annotations, self.init_rules,
                                                                              self.dtype))
            _check_weight_dtypes(op, specs, types)
            for t in outs:
                _check_tensor_type(t, f"{op.name}: its result")
        except OpError as err:
            raise ArchError(err.message, span or fn.span, err.hint) from None
        except SizeError as err:
            raise ArchError(f"{op.name}: {err}", span or fn.span) from None
        written = tuple(a for a in frame.annotations if a.name not in ("init", "dtype"))  # used up here
        annotations, specs = sparse.attach(op.name, written, tuple(self.annotation(a, frame) for a in written),
                                           specs, fn.tied, self.sparse_used, span or fn.span)
        if specs and op.min_inputs == 0 and not fn.scope and not frame.forced_scope and frame.target:
            # `cls_token = parameter([1, 1, D])`: the tensor is the parameter, named as assigned
            fn = replace(fn, scope=self.instance_path(frame.target, frame, span or fn.span or Span("", 1, 1),
                                                      frame.target_exact))
            frame.target = None
        if specs:
            scope = frame.forced_scope or fn.scope or self.fresh(prefix, op.name)
            if not frame.forced_scope:
                self.record_scope(scope, op.name, attrs.model_dump(), fn.span)
        else:
            scope = frame.forced_scope if frame.forced_scope is not None else prefix
        if fn.tied:
            for role in specs:
                name = join_scope(fn.tied, role) if role else fn.tied
                if name not in self.params:
                    raise ArchError(f"{op.name}(tied=\"{fn.tied}\"): there is no parameter '{name}' to share",
                                    span or fn.span, did_you_mean(name, self.params))
        owner = fn.tied or scope
        chosen = {role for role, *_ in fn.inits}
        params = {role: self.declare(join_scope(owner, role) if role else owner, spec, span, role in chosen)
                  for role, spec in specs.items()}
        results = [self.new_value(t) for t in outs]
        node = Node(op=op.name, inputs=tuple(t.id for t in ins), outputs=tuple(r.id for r in results),
                    attrs=attrs.model_dump(mode="json"), params=params, scope=scope, span=SpanModel.of(span),
                    annotations=annotations)
        self.nodes.append(node)
        if len(self.nodes) > self.limits.max_nodes:
            raise ArchError(f"the model expands to more than {self.limits.max_nodes} ops", self.span or span,
                            "a stack or loop is too deep; the limit is set by --max-nodes")
        return results[0] if len(results) == 1 and op.name not in ("split", "chunk", "unbind") else tuple(results)

    def guard(self, needs: list[guards.Need], op: Op, span: Span | None) -> None:
        """Record the run-time conditions an op needs of symbolic sizes, once each."""
        for size, kind, bound, why in needs:
            self.guards.setdefault((str(size), kind, bound), Guard(size=str(size), kind=kind, bound=bound,
                                                                   why=why, span=SpanModel.of(span)))

    def declare(self, name: str, spec: Any, span: Span | None, chosen: bool = False) -> str:
        """Declare a parameter, or use the one of that name (a shared instance, a tie). `chosen`:
        the spec gave its initializer here, which must then be the one it already has."""
        decl = ParamDecl(name=name, shape=spec.shape, dtype=spec.dtype, init=spec.init, trainable=spec.trainable)
        old = self.params.get(name)
        if old is not None:
            if old.shape != decl.shape:
                raise ArchError(f"the shared instance '{name.rsplit('.', 1)[0]}' is applied to inputs of "
                                f"different sizes: '{name}' is {list(old.shape)} here and {list(decl.shape)} now",
                                span, notes=[("first applied here", self.param_owner.get(name))])
            if old.dtype != decl.dtype:
                raise ArchError(f"'{name}' is shared and is {old.dtype}; this use makes it {decl.dtype} (the dtype of "
                                f"its input here)", span, notes=[("first made here", self.param_owner.get(name))],
                                hint="give the inputs that share a weight one dtype")
            if chosen and old.init != decl.init:
                raise ArchError(f"'{name}' is shared and already initialized as {old.init}; this use asks for "
                                f"{decl.init}", span, notes=[("first declared here", self.param_owner.get(name))],
                                hint="give the initializer where the parameter is first made")
            return name
        self.param_elems += decl.numel
        if self.param_elems > self.limits.max_params:
            raise ArchError(f"the model has more than {self.limits.max_params} parameters", span)
        self.params[name] = decl
        self.param_owner[name] = span
        return name

    def annotation(self, a: A.Annotation, frame: Frame) -> AnnotationIR:
        args = tuple(_jsonable(self.eval(x, frame)) for x in a.args)
        kwargs = {k.name: _jsonable(self.eval(k.value, frame)) for k in a.kwargs}
        return AnnotationIR(name=a.name, args=args, kwargs=kwargs)


# ==== helpers =====================================================================================
def _applied_here(err: ArchError, block: str, span: Span | None) -> ArchError:
    """An error from inside a block that another file defines (the standard library, an import),
    with a note at the application that led there, so the user sees their own line too."""
    last = next((at for text, at in reversed(err.notes) if text.endswith("applied here")), err.span)
    if span is not None and last is not None and last.file != span.file:
        err.notes.append((f"in '{block}', applied here", span))
    return err


def _raise(err: Exception) -> Any:
    raise err


def _check_same(first: Tensor, out: Tensor, policy: Any, span: Span | None) -> None:
    if first.type.sizes != out.type.sizes:
        raise ArchError(f"connect={policy} averages layer outputs, so each layer must keep the shape: "
                        f"{first.type} in, {out.type} out", span)


def _as_expr(v: Any, type_name: str) -> Any:
    """An override as given: an expression, or a Python value; text for a parameter that is not a
    str is an .arch expression (`connect="hyper(n=4)"` from Python, as on the command line)."""
    if isinstance(v, str) and type_name != "str":
        from archc.frontend.parser import parse_expr

        return parse_expr(v, file="<override>")
    if _is_expr(v):
        return v
    return A.Const(v, Span("<override>", 1, 1)) if not isinstance(v, (list, tuple)) else \
        A.ListExpr(tuple(_as_expr(x, "") for x in v), Span("<override>", 1, 1))


def _is_expr(v: Any) -> bool:
    return type(v).__module__ == A.__name__ and hasattr(v, "span")


def _all_given(op: Op, attrs: dict[str, Any]) -> bool:
    required = [n for n, f in op.Attrs.model_fields.items() if f.is_required()]
    return all(n in attrs for n in required)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Size):
        return v.to_json()
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, SlotFn):
        return _jsonable(v.inner)
    if isinstance(v, C.Policy):
        return str(v)
    if isinstance(v, BlockFn):
        return v.template.definition.name
    if isinstance(v, OpFn):
        return v.op.name
    return describe(v)


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


def _arg_spans(e: A.Call, skip: int) -> dict[str | int, Span]:
    """Where each non-tensor argument of a call is written: by position (after `skip` tensors) and name."""
    spans: dict[str | int, Span] = {i: a.span for i, a in enumerate(e.args[skip:])}
    spans.update({k.name: k.span for k in e.kwargs})
    return spans


def _kw_span(e: A.Call, key: str) -> Span:
    return next((k.span for k in e.kwargs if k.name == key), e.span)


# ==== public entry points =========================================================================
def elaborate_file(path: str | Path, model: str | None = None, overrides: dict[str, Any] | None = None,
                   includes: list[Path] | None = None, limits: Limits | None = None, dtype: str = "f32") -> Graph:
    elaborator = Elaborator(limits, check_build_dtype(dtype))
    try:
        with headroom(_FRAMES_PER_NESTING * MAX_NESTING + 500):  # imports nest at most 256 deep
            env = Loader(includes).load_path(Path(path))
            return elaborator.model(env, model, overrides or {})
    except RecursionError:  # a last resort: MAX_NESTING comes first
        raise _too_deep(elaborator) from None


def elaborate_text(text: str, file: str = "<string>", model: str | None = None,
                   overrides: dict[str, Any] | None = None, includes: list[Path] | None = None,
                   limits: Limits | None = None, folder: Path | None = None, dtype: str = "f32") -> Graph:
    elaborator = Elaborator(limits, check_build_dtype(dtype))
    try:
        with headroom(_FRAMES_PER_NESTING * MAX_NESTING + 500):  # imports nest at most 256 deep
            env = Loader(includes).load_text(text, file, folder)
            return elaborator.model(env, model, overrides or {})
    except RecursionError:
        raise _too_deep(elaborator) from None


MAX_RANK = 64  # torch's limit on a tensor's number of axes
MAX_NUMEL = 2**48  # elements of one tensor (its known sizes; 1 PiB of f32): past it sizes near int64 overflow


def _check_guards(found: Iterable[Guard], inputs: list[TensorType]) -> None:
    """A guard reads its axes from the model's inputs: each must be a whole axis of one (or a
    multiple of it, as in [B, 2*K])."""
    given = guards.given_axes(inputs)
    for g in found:
        missing = sorted(parse_size(g.size).atoms() - given.keys())
        if missing:
            raise ArchError(f"{g.why}: {g.condition}, which only the run time can check, and no input of the model "
                            f"gives the axis '{missing[0]}' as it is", g.span.to_span() if g.span else None,
                            "give the model an input whose type names the axis")


def _check_tensor_type(t: TensorType, what: str) -> None:
    if t.rank > MAX_RANK:
        raise OpError(f"{what} has {t.rank} axes; torch allows at most {MAX_RANK}")
    if any(size.is_const and size.terms.get((), 0) == 0 for size in t.sizes):
        raise OpError(f"{what} {t} has an axis of size 0: torch's layers refuse empty inputs (a conv2d of 0 "
                      "channels, a layernorm over nothing)")
    known = 1
    for size in t.sizes:
        if size.is_const:
            known *= abs(size.terms.get((), 0)) or 1
    if known > MAX_NUMEL:
        raise OpError(f"{what} {t} has more than 2**48 elements (its known sizes alone), far past any memory "
                      "and near int64's limit")


def _check_weight_dtypes(op: Op, specs: dict[str, Any], types: list[TensorType]) -> None:
    """An op's float weights and its float inputs have one dtype: torch refuses F.linear(f16, f32)."""
    weights = sorted({s.dtype for s in specs.values() if s.dtype in FLOAT_DTYPES})
    for t in types:
        if weights and t.is_float and t.dtype not in weights:
            raise OpError(f"{op.name}: its input is {t.dtype} but its parameters are {weights[0]}; torch does not "
                          "mix them", hint=f"declare the input {weights[0]}")


def _too_deep(elaborator: Elaborator, span: Span | None = None) -> ArchError:
    return ArchError("the spec nests too deeply to elaborate (blocks, pipelines, expressions or imports)",
                     span or elaborator.span, "split deep expressions into statements, or nest fewer blocks")


__all__ = ["Elaborator", "Limits", "elaborate_file", "elaborate_text", "expr_text"]
