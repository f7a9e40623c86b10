"""Stacks: `stack(n) { ... }` layers, and stacks whose layers a connection policy wires (residual,
hyper-connections, DenseFormer averaging, dense concatenation, MUDD)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import replace
from typing import Any, Callable as Fn

from archc.elaborate import connect as C
from archc.elaborate.state import State
from archc.elaborate.values import BlockFn, Callable, Frame, StackFn, Tensor, describe, join_scope, named
from archc.errors import ArchError, Span
from archc.frontend import ast as A
from archc.sizes import Size


# Called after each layer of a stack (with its index) and after the whole stack (index None) with
# (the stack's span, the index, the inputs, the output), when set: a search space's probe checks
# there that a stack or a layer keeps its input's type (archc/space_probe.py).
STACK_APPLIED: ContextVar[Fn[[Span | None, int | None, list[Any], Any], None] | None] = ContextVar(
    "archc_stack_applied", default=None)


class Stacks(State):
    """Expands stacks, wiring their layers by a connection policy when one is given."""

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

    def apply_stack(self, fn: StackFn, inputs: list[Any], frame: Frame, span: Span | None, prefix: str) -> Any:
        scope = fn.scope or self.fresh(prefix, "stack")
        self.record_scope(scope, "stack", {"depth": fn.count, **({"connect": str(fn.connect)} if fn.connect
                                                                  else {})}, fn.span)
        if fn.connect is not None:
            return self.connected_stack(fn, inputs, frame, span, scope)
        value: Any = inputs
        smallest: int | None = None
        watch = STACK_APPLIED.get()
        for i in range(fn.count):
            layer = self.stack_layer(fn, i, span)
            before = len(self.nodes)
            given = list(value) if isinstance(value, (tuple, list)) else [value]
            value = self.apply(named(layer, join_scope(scope, str(i))), given, frame, span, scope)
            if watch is not None:
                watch(fn.span, i, given, value)
            smallest = self.expect_nodes(len(self.nodes) - before, smallest, fn.count - 1 - i, fn.span or span,
                                         "layers")
        return value if not isinstance(value, list) else (value[0] if len(value) == 1 else tuple(value))

    def stack_layer(self, fn: StackFn, i: int, span: Span | None) -> Callable:
        # a child frame per layer: a stack nested in the body keeps seeing this layer's index
        frame = replace(fn.frame, vars={**fn.frame.vars, fn.var: i}) if fn.var else fn.frame
        layer = self.as_callable(self.eval(fn.body, frame), fn.body.span)
        if layer is None:
            raise ArchError("the body of stack() must be a block or a callable", fn.body.span)
        return layer

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
                if STACK_APPLIED.get() is not None:
                    STACK_APPLIED.get()(fn.span, i, mixes[:1], out)
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
                if STACK_APPLIED.get() is not None:
                    STACK_APPLIED.get()(fn.span, i, [inp], out)
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


def _check_same(first: Tensor, out: Tensor, policy: Any, span: Span | None) -> None:
    if first.type.sizes != out.type.sizes:
        raise ArchError(f"connect={policy} averages layer outputs, so each layer must keep the shape: "
                        f"{first.type} in, {out.type} out", span)
