"""Connection policies: how a stack's layers are wired across depth, chosen by one word.

A layer says what it computes through `residual(x, branch)` calls; a per-residual policy decides
what each such call becomes. A per-layer policy wires whole layers instead. The math and the
initializations are those of the reference notes (shared/reference/connections-reparam.md §1):

| policy                  | kind         | per call / per layer                                    | at init        |
|-------------------------|--------------|---------------------------------------------------------|----------------|
| residual(post=false)    | per residual | x + f(x); post: norm(x + rest(x)) (f = norm >> rest)    | -              |
| rezero                  | per residual | x + a * f(x), one scalar a per layer (Bachlechner 2020) | identity       |
| layerscale(init)        | per residual | x + g * f(x), g in R^D per call (Touvron 2021, CaiT)    | g = init       |
| hyper(n, dynamic)       | per residual | Hyper-Connections (Zhu 2024) on n streams [n, ..., D]   | = pre-norm x n |
| frac(n)                 | per residual | Frac-Connections: x split in n fractions, mixed         | = residual     |
| laurel(variant, rank)   | per residual | LAuReL RW / LR / PA (Menghani 2024)                     | = residual     |
| dwa(period, dilation)   | per layer    | DenseFormer depth-weighted average (Pagliardini 2024)   | = plain stack  |
| dense(growth)           | per layer    | DenseNet concatenation (Huang 2017)                     | -              |
| mudd                    | per layer    | MUDDFormer: each layer input its own dynamic dense mix  | = plain stack  |

Widening policies (hyper) carry a stream state that a layer may only pass to `residual()` or
return; any other use is a type error at that use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from archc.elaborate.values import Callable, OpFn, PipeFn, Tensor, describe, join_scope
from archc.errors import ArchError, Span
from archc.ir.types import TensorType

if TYPE_CHECKING:
    from archc.elaborate.elaborator import Elaborator
    from archc.elaborate.values import Frame

NORM_OPS = ("layernorm", "rmsnorm", "groupnorm", "batchnorm")


@dataclass(frozen=True)
class StreamState(Tensor):
    """The n residual streams of hyper-connections, seen by the layer as one [..., D] tensor."""

    state: Tensor = None  # type: ignore[assignment]
    policy: str = ""


@dataclass(frozen=True)
class Policy:
    """A connection policy value, as written: `hyper(n=4, dynamic=true)`."""

    name: str
    args: dict[str, Any]
    span: Span | None = None

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={_text(v)}" for k, v in self.args.items())
        return f"{self.name}({inner})" if inner else self.name


def _text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else repr(v) if isinstance(v, str) else str(v)


# name -> (kind, {arg: (type, default)})
SPECS: dict[str, tuple[str, dict[str, tuple[type | tuple[type, ...], Any]]]] = {
    "residual": ("residual", {"post": (bool, False)}),
    "rezero": ("residual", {}),
    "layerscale": ("residual", {"init": ((float, int), 1e-5)}),
    "hyper": ("residual", {"n": (int, 4), "dynamic": (bool, True)}),
    "frac": ("residual", {"n": (int, 2)}),
    "laurel": ("residual", {"variant": (str, "rw"), "rank": (int, 16), "window": (int, 2)}),
    "dwa": ("layer", {"period": (int, 1), "dilation": (int, 1)}),
    "dense": ("layer", {"growth": (int, 32), "dim": (int, 1)}),
    "mudd": ("layer", {}),
}
POSITIONAL = {"layerscale": "init", "hyper": "n", "frac": "n", "laurel": "variant", "dense": "growth",
              "dwa": "period"}


def make_policy(name: str, args: list[Any], kwargs: dict[str, Any], span: Span | None) -> Policy:
    kind, spec = SPECS[name]
    given = dict(kwargs)
    if args:
        if len(args) > 1 or name not in POSITIONAL:
            raise ArchError(f"{name}() takes its arguments by name: {', '.join(spec) or 'none'}", span)
        given[POSITIONAL[name]] = args[0]
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key not in spec:
            raise ArchError(f"the connection policy '{name}' has no argument '{key}'", span,
                            f"its arguments are {', '.join(spec) or 'none'}")
        typ, _ = spec[key]
        if isinstance(value, bool) and typ is not bool or not isinstance(value, typ):
            want = typ if isinstance(typ, type) else typ[0]
            words = {int: "an int", float: "a number", bool: "a bool", str: "a string"}.get(want, want.__name__)
            raise ArchError(f"{name}({key}=...) must be {words}, got {describe(value)}", span)
        out[key] = float(value) if typ == (float, int) else value  # type: ignore[arg-type]
    for key, (_, default) in spec.items():
        out.setdefault(key, default)
    if name in ("hyper", "frac") and out["n"] < 1:
        raise ArchError(f"{name}(n={out['n']}) needs n >= 1", span)
    if name == "laurel" and out["variant"] not in ("rw", "lr", "pa"):
        raise ArchError(f"laurel variant must be \"rw\", \"lr\" or \"pa\", got {out['variant']!r}", span)
    if name == "dense" and out["growth"] < 1:
        raise ArchError(f"dense(growth={out['growth']}) needs growth >= 1 (the channels each layer adds)", span)
    if name == "laurel" and (out["rank"] < 1 or out["window"] < 1):
        raise ArchError("laurel(rank, window) need values >= 1", span)
    if name == "dwa" and (out["period"] < 1 or out["dilation"] < 1):
        raise ArchError("dwa(period, dilation) need values >= 1", span)
    return Policy(name, out, span)


def policy_kind(p: Policy) -> str:
    return SPECS[p.name][0]


@dataclass
class Context:
    """The state of one stack being connected by a policy."""

    policy: Policy
    stack_scope: str
    state: Tensor | None = None
    layer: int = 0
    layer_scope: str = ""
    call_in_layer: int = 0
    calls: int = 0  # residual calls so far in the whole stack
    history: list[Tensor] = field(default_factory=list)
    cache: dict[str, Tensor] = field(default_factory=dict)


def _axes(rank: int) -> str:
    return " ".join(f"_a{i}" for i in range(rank))  # internal names: einsum leaves them unlabelled


class Connector:
    """Emits the ops of a policy through the elaborator."""

    def __init__(self, el: "Elaborator", frame: "Frame", span: Span | None) -> None:
        self.el, self.frame, self.span = el, frame, span

    def scoped(self, path: str, policy: Policy) -> "Connector":
        """A connector whose ops land in the scope `path`, recorded as an instance of the policy."""
        self.el.record_scope(path, policy.name, dict(policy.args), policy.span)
        return Connector(self.el, replace(self.frame, scope=path), self.span)

    # -- emission helpers -------------------------------------------------------------------------
    def op(self, name: str, inputs: list[Tensor], **attrs: Any) -> Any:
        return self.el.apply_op(name, inputs, attrs, self.frame, self.span)

    def param(self, path: str, shape: list[int], init: str) -> Tensor:
        return self.el.op_at("parameter", [], {"shape": tuple(shape), "init": init}, path, self.frame, self.span)

    def apply(self, fn: Callable, x: Tensor, prefix: str) -> Tensor:
        out = self.el.apply(fn, [x], self.frame, self.span, prefix)
        if not isinstance(out, Tensor):
            raise ArchError("a residual branch must return one tensor", self.span)
        return out

    # -- per-residual policies --------------------------------------------------------------------
    def residual(self, ctx: Context, x: Tensor, fn: Callable, prefix: str) -> Tensor:
        p, k = ctx.policy, ctx.call_in_layer + 1
        ctx.call_in_layer += 1
        ctx.calls += 1
        scope = ctx.layer_scope
        name = p.name
        if name == "residual" and p.args["post"]:
            norm, rest = _split_norm(fn)
            if norm is None:
                raise ArchError("residual(post=true) moves each branch's leading norm after the add, but this "
                                "branch does not start with a norm", self.span,
                                "write the branch as 'norm >> f', e.g. residual(x, ln_1 >> attn)")
            y = self.apply(rest, x, prefix) if rest is not None else x
            return self.apply(norm, self.op("add", [x, y]), prefix)
        if name == "hyper":
            path = join_scope(scope, f"hc{k}")
            return self.scoped(path, p).hyper(ctx, x, fn, prefix, path)
        if name == "frac":
            path = join_scope(scope, f"frac{k}")
            return self.scoped(path, p).frac(ctx, x, fn, prefix, path)
        y = self.apply(fn, x, prefix)
        _same_shape(x, y, self.span)
        if name == "residual":
            return self.op("add", [x, y])
        if name == "rezero":
            path = join_scope(scope, "resweight")
            if scope not in ctx.cache:
                self.el.record_scope(path, p.name, dict(p.args), p.span)
            alpha = ctx.cache.get(scope) or self.param(path, [], "zeros")
            ctx.cache[scope] = alpha
            inner = Connector(self.el, replace(self.frame, scope=path), self.span)
            return inner.op("add", [x, inner.op("mul", [y, alpha])])
        if name == "layerscale":
            path = join_scope(scope, f"ls{k}")
            inner = self.scoped(path, p)
            gamma = inner.param(f"{path}.gamma", [x.type.sizes[-1].value], f"const({p.args['init']})")
            return inner.op("add", [x, inner.op("mul", [y, gamma])])
        if name == "laurel":
            path = join_scope(scope, f"laurel{k}")
            return self.scoped(path, p).laurel(ctx, x, y, path)
        raise AssertionError(name)

    def hyper(self, ctx: Context, x: Tensor, fn: Callable, prefix: str, path: str) -> Tensor:
        """Hyper-Connections, with the parameterization of the hyper-connections package:
        static_alpha = [A_m | A_r] (n x (1+n)), static_beta = B; dynamic parts from RMSNorm(H)."""
        n, dynamic = ctx.policy.args["n"], ctx.policy.args["dynamic"]
        h = x.state if isinstance(x, StreamState) else x
        rank = h.type.rank - 2  # [n, *lead, D]
        lead = _axes(rank)
        d = h.type.sizes[-1].value
        read = ctx.calls - 1  # this call reads stream (k mod n)
        alpha_s = self.param(f"{path}.static_alpha", [n, n + 1], f"hc_alpha({read % n})")
        beta_s = self.param(f"{path}.static_beta", [n], "ones")
        if dynamic:
            normed = self.el.op_at("rmsnorm", [h], {"eps": 1e-12}, f"{path}.norm", self.frame, self.span)
            fn_a = self.param(f"{path}.dynamic_alpha_fn", [d, n + 1], "zeros")
            scale_a = self.param(f"{path}.dynamic_alpha_scale", [], "const(0.01)")
            fn_b = self.param(f"{path}.dynamic_beta_fn", [d], "zeros")
            scale_b = self.param(f"{path}.dynamic_beta_scale", [], "const(0.01)")
            wc = self.op("tanh", [self.op("einsum", [normed, fn_a], equation=f"_s {lead} _d, _d _j -> _s {lead} _j")])
            ones = " ".join(["1"] * rank)
            alpha = self.op("add", [self.op("mul", [wc, scale_a]),
                                    self.op("rearrange", [alpha_s], pattern=f"_s _j -> _s {ones} _j")])
            mix = self.op("einsum", [alpha, h], equation=f"_s {lead} _j, _s {lead} _d -> _j {lead} _d")
            dc = self.op("tanh", [self.op("einsum", [normed, fn_b], equation=f"_s {lead} _d, _d -> _s {lead}")])
            beta = self.op("add", [self.op("mul", [dc, scale_b]),
                                   self.op("rearrange", [beta_s], pattern=f"_s -> _s {ones}")])
        else:
            mix = self.op("einsum", [alpha_s, h], equation=f"_s _j, _s {lead} _d -> _j {lead} _d")
            beta = beta_s
        branch_in = self.op("select", [mix], dim=0, index=0)
        residuals = self.op("slice", [mix], dim=0, start=1, end=n + 1)
        y = self.apply(fn, branch_in, prefix)
        _same_shape(branch_in, y, self.span)
        eq = f"{lead} _d, _s {lead} -> _s {lead} _d" if dynamic else f"{lead} _d, _s -> _s {lead} _d"
        new = self.op("add", [self.op("einsum", [y, beta], equation=eq), residuals])
        return StreamState(new.id, x.type, new, "hyper")

    def frac(self, ctx: Context, x: Tensor, fn: Callable, prefix: str, path: str) -> Tensor:
        """Frac-Connections, static: the state x is split into n fractions H [n, ..., D/n];
        branch input = merge(Gamma^T H), new state = merge(beta * split(f(.)) + A^T H).
        Starts as the plain residual: Gamma = A = I, beta = 1 (the reference's init)."""
        n = ctx.policy.args["n"]
        rank = x.type.rank - 1
        lead = _axes(rank)
        d = x.type.sizes[-1]
        if not d.is_const or d.value % n:
            raise ArchError(f"frac(n={n}) splits the last axis into {n} fractions, but it has size {d}", self.span)
        split = f"{lead} (_f _d) -> _f {lead} _d"
        merge = f"_f {lead} _d -> {lead} (_f _d)"
        h = self.op("rearrange", [x], pattern=split, sizes={"_f": n})
        gamma = self.param(f"{path}.gamma", [n, n], "eye")
        a = self.param(f"{path}.a", [n, n], "eye")
        beta = self.param(f"{path}.beta", [n], "ones")
        branch_in = self.op("rearrange", [self.op("einsum", [gamma, h], equation=f"_f _g, _f {lead} _d -> _g {lead} _d")],
                            pattern=merge)
        y = self.apply(fn, branch_in, prefix)
        _same_shape(x, y, self.span)
        ys = self.op("rearrange", [y], pattern=split, sizes={"_f": n})
        ones = " ".join(["1"] * (rank + 1))
        mixed = self.op("einsum", [a, h], equation=f"_f _g, _f {lead} _d -> _g {lead} _d")
        out = self.op("add", [self.op("mul", [ys, self.op("rearrange", [beta], pattern=f"_f -> _f {ones}")]), mixed])
        return self.op("rearrange", [out], pattern=merge)

    def laurel(self, ctx: Context, x: Tensor, y: Tensor, path: str) -> Tensor:
        p = ctx.policy.args
        d = x.type.sizes[-1].value
        lead = _axes(x.type.rank - 1)
        if p["variant"] == "rw":  # (alpha, beta) = 2 softmax(w), w = [1, 1]: (1, 1) at init
            w = self.param(f"{path}.w", [2], "ones")
            ab = self.op("mul", [self.op("softmax", [w])], other=2.0)
            a, b = self.op("select", [ab], dim=0, index=0), self.op("select", [ab], dim=0, index=1)
            return self.op("add", [self.op("mul", [y, a]), self.op("mul", [x, b])])
        if p["variant"] == "lr":  # x + f(x) + B A x, B = 0 at init
            r = p["rank"]
            down = self.param(f"{path}.a", [d, r], f"normal({math.sqrt(2.0 / (d + r)):.6g})")
            up = self.param(f"{path}.b", [r, d], "zeros")
            low = self.op("einsum", [self.op("einsum", [x, down], equation=f"{lead} _d, _d _r -> {lead} _r"), up],
                          equation=f"{lead} _r, _r _e -> {lead} _e")
            return self.op("add", [self.op("add", [x, y]), low])
        # pa: x + f(x) + sum_j gamma_j x_{i-j} over the previous `window` residual inputs
        window = p["window"]
        past = [t for t in ctx.history[-window:] if t.type.sizes == x.type.sizes]
        ctx.history.append(x)
        out = self.op("add", [x, y])
        if past:
            gamma = self.param(f"{path}.gamma", [len(past)], "zeros")
            for j, t in enumerate(reversed(past)):
                out = self.op("add", [out, self.op("mul", [t, self.op("select", [gamma], dim=0, index=j)])])
        return out

    # -- whole stacks -----------------------------------------------------------------------------
    def enter(self, ctx: Context, x: Tensor) -> Tensor:
        if ctx.policy.name != "hyper":
            return x
        self = self.scoped(join_scope(ctx.stack_scope, "streams"), ctx.policy)  # expansion and reduction
        n = ctx.policy.args["n"]
        one = self.op("rearrange", [x], pattern=f"{_axes(x.type.rank)} -> 1 {_axes(x.type.rank)}")
        h = self.op("concat", [one] * n, dim=0)
        return StreamState(h.id, x.type, h, "hyper")

    def exit(self, ctx: Context, x: Tensor) -> Tensor:
        if isinstance(x, StreamState):
            self = self.scoped(join_scope(ctx.stack_scope, "streams"), ctx.policy)
            rank = x.state.type.rank - 1
            return self.op("einsum", [x.state], equation=f"_s {_axes(rank)} -> {_axes(rank)}")
        return x

    def dwa_after(self, ctx: Context, i: int, outputs: list[Tensor]) -> Tensor:
        """DenseFormer: after block i (1-based), if i % period == 0, the next input is
        sum_{j <= i, j = i mod dilation} alpha_ij X_j, alpha = one-hot on X_i at init."""
        p, k = ctx.policy.args["period"], ctx.policy.args["dilation"]
        if i % p:
            return outputs[-1]
        chosen = [outputs[j] for j in range(i + 1) if j % k == i % k]
        # every output was checked against the stack's input when the elaborator appended it
        inner = self.scoped(join_scope(ctx.stack_scope, "dwa"), ctx.policy)
        alpha = inner.param(join_scope(ctx.stack_scope, f"dwa.{i - 1}"), [len(chosen)], f"onehot({len(chosen) - 1})")
        self = inner
        rank = outputs[0].type.rank
        ones = [self.op("rearrange", [t], pattern=f"{_axes(rank)} -> 1 {_axes(rank)}") for t in chosen]
        stacked = ones[0] if len(ones) == 1 else self.op("concat", ones, dim=0)
        return self.op("einsum", [alpha, stacked], equation=f"_j, _j {_axes(rank)} -> {_axes(rank)}")


    def mudd_mix(self, ctx: Context, i: int, outputs: list[Tensor], ways: int, last: bool = False) -> list[Tensor]:
        """MUDDFormer (Xiao et al. 2025), the inference form of the reference notes §1.7: from the
        latest output X_i, per-token weights dw = W2 GELU(W1 RMSNorm(X_i)) + a over the L = i + 1
        outputs so far, one set per way (a layer input); way c is sum_j dw[c, j] X_j. W2 = 0 and
        a = [0, ..., 0, 1] at init: every way starts as the latest output."""
        path = join_scope(ctx.stack_scope, f"mudd.{i}")
        inner = self.scoped(path, ctx.policy)
        latest = outputs[-1]
        rank, d = latest.type.rank, latest.type.sizes[-1].value
        n = len(outputs)
        hid = (ways * n // 64 + 1) * 64 * (4 if last else 1)  # round64 (up, always), x4 for the last mix
        lead = _axes(rank - 1)
        w1 = inner.param(f"{path}.w1", [d, hid], f"normal({1 / math.sqrt(d):.6g})")
        w2 = inner.param(f"{path}.w2", [hid, ways * n], "zeros")
        a = inner.param(f"{path}.a", [ways, n], "lastcol")
        normed = self.el.op_at("rmsnorm", [latest], {"affine": False}, path, inner.frame, self.span)
        hidden = inner.op("gelu", [inner.op("einsum", [normed, w1], equation=f"{lead} _d, _d _h -> {lead} _h")])
        dw = inner.op("einsum", [hidden, w2], equation=f"{lead} _h, _h _k -> {lead} _k")
        dw = inner.op("add", [inner.op("rearrange", [dw], pattern=f"{lead} (_c _l) -> {lead} _c _l",
                                       sizes={"_c": ways}), a])
        ones = [inner.op("rearrange", [t], pattern=f"{_axes(rank)} -> 1 {_axes(rank)}") for t in outputs]
        stacked = ones[0] if n == 1 else inner.op("concat", ones, dim=0)
        return [inner.op("einsum", [inner.op("select", [dw], dim=rank - 1, index=c), stacked],
                         equation=f"{lead} _l, _l {_axes(rank)} -> {_axes(rank)}") for c in range(ways)]


def _split_norm(fn: Callable) -> tuple[Callable | None, Callable | None]:
    if isinstance(fn, PipeFn) and fn.stages and _is_norm(fn.stages[0]):
        rest = fn.stages[1:]
        if not rest:
            return fn.stages[0], None
        return fn.stages[0], (rest[0] if len(rest) == 1 else PipeFn(tuple(rest), fn.scope, fn.span))
    return None, None


def _is_norm(fn: Callable) -> bool:
    return isinstance(fn, OpFn) and fn.op.name in NORM_OPS


def _same_shape(x: Tensor, y: Tensor, span: Span | None) -> None:
    if x.type.sizes != y.type.sizes:
        raise ArchError(f"a residual branch must keep the shape: {x.type} in, {y.type} out", span)


def view_type(t: TensorType) -> TensorType:
    return t
