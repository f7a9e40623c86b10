"""Statements: assignments and the instance names they bind, `return`, `if`, `for`, and the
annotations written on a statement."""

from __future__ import annotations

import json
from typing import Any

from archc.elaborate import sparse
from archc.elaborate.dtypes import dtype_rule
from archc.elaborate.inits import Rules, annotation_rules
from archc.elaborate.inits import check_used as inits_used
from archc.elaborate.state import ANNOTATIONS, State
from archc.elaborate.values import CALLABLES, BlockTemplate, Frame, describe, join_scope, named
from archc.errors import ArchError, Span, did_you_mean
from archc.frontend import ast as A
from archc.frontend.fmt import expr_text
from archc.ir.blocks import within
from archc.ir.names import bad_scope_segment, is_identifier


class Statements(State):
    """Runs statements in a block's frame."""

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
