"""Op nodes: an op applied to typed values, with its result types, its parameters declared (shared
or tied by name), its initializers, dtype and annotations, and the guards it needs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from archc import guards
from archc.elaborate import connect as C
from archc.elaborate import sparse
from archc.elaborate.consteval import plain
from archc.elaborate.dtypes import build_dtype, follow_dtype
from archc.elaborate.inits import annotation_inits, with_inits
from archc.elaborate.state import State, jsonable
from archc.elaborate.values import Frame, OpFn, Tensor, join_scope
from archc.errors import ArchError, Span, did_you_mean
from archc.frontend import ast as A
from archc.ir.graph import AnnotationIR, Guard, Node, ParamDecl, SpanModel
from archc.ir.types import FLOAT_DTYPES, TensorType
from archc.ops import registry
from archc.ops.registry import Op, OpError
from archc.sizes import SizeError

MAX_RANK = 64  # torch's limit on a tensor's number of axes

MAX_NUMEL = 2**48  # elements of one tensor (its known sizes; 1 PiB of f32): past it sizes near int64 overflow


class Nodes(State):
    """Makes op nodes and declares their parameters."""

    def apply_op(self, name: str, inputs: list[Tensor], attrs: dict[str, Any], frame: Frame,
                 span: Span | None) -> Any:
        return self.apply_op_fn(OpFn(registry.get(name), attrs, (), None, span), inputs, frame, span, frame.scope)

    def op_at(self, name: str, inputs: list[Tensor], attrs: dict[str, Any], scope: str, frame: Frame,
              span: Span | None) -> Any:
        """Apply an op as the instance named `scope` (for parameters a policy owns, whose
        initializers are the policy's: `@init` annotations around it do not reach them)."""
        own = replace(frame, annotations=tuple(a for a in frame.annotations if a.name not in ("init", "dtype")))
        return self.apply_op_fn(OpFn(registry.get(name), attrs, (), scope, span), inputs, own, span, scope)

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
                check_tensor_type(t, f"{op.name}: its result")
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
        args = tuple(jsonable(self.eval(x, frame)) for x in a.args)
        kwargs = {k.name: jsonable(self.eval(k.value, frame)) for k in a.kwargs}
        return AnnotationIR(name=a.name, args=args, kwargs=kwargs)


def check_tensor_type(t: TensorType, what: str) -> None:
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
