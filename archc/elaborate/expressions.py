"""Expressions: names, constants, arithmetic on sizes and tensors, indexing, pipelines."""

from __future__ import annotations

from typing import Any

from archc.elaborate import connect as C
from archc.elaborate.builtins import NAMES as BUILTINS
from archc.elaborate.consteval import ConstError, is_num, numeric, plain
from archc.elaborate.loader import LazyLet, ModuleEnv
from archc.elaborate.state import State
from archc.elaborate.values import (CALLABLES, BlockTemplate, Builtin, Callable, Frame, ModuleRef, OpFn, PipeFn, Tensor,
                                    describe)
from archc.errors import ArchError, Span, did_you_mean
from archc.frontend import ast as A
from archc.frontend.parser import MAX_STRING
from archc.ops import registry
from archc.sizes import Size, SizeError

MAX_NESTING = 1000

_FRAMES_PER_NESTING = 16


class Expressions(State):
    """Evaluates expressions to compile-time values, tensors or callables."""

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
        hint = did_you_mean(name, candidates)
        if span is not None and span.file == "--set":  # a shell ate the quotes: say how to keep them
            hint = f"a string is written in quotes: --set 'NAME=\"{name}\"'" + (f"; or {hint}" if hint else "")
        raise ArchError(f"unknown name '{name}'", span, hint)

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
                raise too_deep(self, e.span)
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

    def as_policy(self, value: Any, span: Span | None) -> C.Policy | None:
        if isinstance(value, C.Policy):
            return value
        if isinstance(value, Builtin) and value.name in C.SPECS:
            return C.make_policy(value.name, [], {}, span)
        return None


def too_deep(elaborator: State, span: Span | None = None) -> ArchError:
    return ArchError("the spec nests too deeply to elaborate (blocks, pipelines, expressions or imports)",
                     span or elaborator.span, "split deep expressions into statements, or nest fewer blocks")


def _raise(err: Exception) -> Any:
    raise err
