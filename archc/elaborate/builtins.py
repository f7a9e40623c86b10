"""The language's builtin functions, one function each, and the connection policies by name.

    range(n) / range(a, b, step)   a list of ints (each item costs an expansion step)
    len(list)  min(...)  max(...)  int(x)  float(x)  str(x)  log(x)
    shape(x, axis)                 the size of an axis of a tensor (an int, or a symbolic size)
    sequential(f, g, ...)          a callable whose parts are named 0, 1, ... (nn.Sequential)
    residual(x, f) / residual(f)   x + f(x), or what the stack's connection policy makes of it
    moe(E, expert, capacity=none)  E instances of the expert, applied as a mixture (moe.py)
    hyper(n=4), rezero, ...        connection policies (connect.py)
    normal(0.02), zeros, ...       initializers (inits.py): `linear(D, init=normal(0.02))`
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from archc.elaborate import connect as C
from archc.elaborate.consteval import is_num, plain
from archc.elaborate.inits import ARGS as INIT_ARGS, make_init
from archc.elaborate.moe import make_moe
from archc.elaborate.values import Frame, PipeFn, ResidualFn, Tensor, describe
from archc.errors import ArchError, Span
from archc.frontend import ast as A

if TYPE_CHECKING:
    from archc.elaborate.elaborator import Elaborator

Builtin = Callable[["Elaborator", list[Any], list[Any], Frame, Span], Any]  # (el, args, plain args, frame, span)


def _range(el: "Elaborator", args: list[Any], nums: list[Any], frame: Frame, span: Span) -> Any:
    if not 1 <= len(nums) <= 3 or not all(isinstance(n, int) and not isinstance(n, bool) for n in nums):
        raise ArchError("range() takes one to three ints", span)
    try:
        r = range(*nums)
        count = len(r)
    except ValueError:
        raise ArchError("range() step must not be zero", span) from None
    except OverflowError:  # more items than a machine word counts
        raise ArchError(f"range() of more than {el.limits.max_steps} items exceeds the expansion limit",
                        span) from None
    if count > el.limits.max_steps:
        raise ArchError(f"range() of {count} items exceeds the expansion limit", span)
    el.tick(span, count)  # a list costs a step an item, so lists cannot fill the memory
    return tuple(r)


def _len(el: "Elaborator", args: list[Any], nums: list[Any], frame: Frame, span: Span) -> Any:
    if len(args) != 1 or not isinstance(args[0], tuple):
        raise ArchError("len() takes one list", span)
    return len(args[0])


def _extremum(pick: Callable[[list[Any]], Any], name: str) -> Builtin:
    def run(el: "Elaborator", args: list[Any], nums: list[Any], frame: Frame, span: Span) -> Any:
        if not nums or not all(is_num(n) for n in nums):
            raise ArchError(f"{name}() takes numbers", span)
        return pick(nums)
    return run


def _convert(to: type, name: str) -> Builtin:
    def run(el: "Elaborator", args: list[Any], nums: list[Any], frame: Frame, span: Span) -> Any:
        if len(nums) != 1 or not is_num(nums[0]):
            raise ArchError(f"{name}() takes one number", span)
        try:
            return to(nums[0])
        except (OverflowError, ValueError):
            raise ArchError(f"{name}() of {nums[0]} is out of range", span) from None
    return run


def _log(el: "Elaborator", args: list[Any], nums: list[Any], frame: Frame, span: Span) -> Any:
    """The natural logarithm of a positive compile-time number (a frequency table's ln(10000))."""
    if len(nums) != 1 or not is_num(nums[0]) or isinstance(nums[0], bool) or not nums[0] > 0:
        raise ArchError(f"log() takes one positive number, got {', '.join(describe(a) for a in args) or 'none'}",
                        span)
    try:
        return math.log(nums[0])
    except OverflowError:
        raise ArchError(f"log() of {nums[0]} is out of range", span) from None


def _str(el: "Elaborator", args: list[Any], nums: list[Any], frame: Frame, span: Span) -> Any:
    if len(nums) != 1 or isinstance(nums[0], bool) or not isinstance(nums[0], (int, str)):
        raise ArchError("str() takes one int or string: \"denselayer\" + str(i + 1)", span)
    return str(nums[0])


def _sequential(el: "Elaborator", args: list[Any], nums: list[Any], frame: Frame, span: Span) -> Any:
    stages = [el.as_callable(a, span) for a in args]
    if not stages or any(st is None for st in stages):
        raise ArchError("sequential() takes callables: sequential(conv2d(64, 1), batchnorm)", span)
    return PipeFn(tuple(stages), None, span, numbered=True)  # type: ignore[arg-type]


def _shape(el: "Elaborator", args: list[Any], nums: list[Any], frame: Frame, span: Span) -> Any:
    if len(args) != 2 or not isinstance(args[0], Tensor) or not isinstance(nums[1], int):
        raise ArchError("shape() takes a tensor and an axis index", span)
    t = args[0].type
    if not -t.rank <= nums[1] < t.rank:
        raise ArchError(f"axis {nums[1]} is out of range for {t}", span)
    s = t.sizes[nums[1]]
    return s.value if s.is_const else s


def _residual(el: "Elaborator", args: list[Any], nums: list[Any], frame: Frame, span: Span) -> Any:
    fn = el.as_callable(args[-1], span) if args else None
    if fn is None or not 1 <= len(args) <= 2:
        raise ArchError("residual() takes a callable, optionally after its tensor input: "
                        "residual(x, f) or residual(f)", span)
    res = ResidualFn(fn, None, span)
    if len(args) == 2:
        if not isinstance(args[0], Tensor):
            raise ArchError(f"residual(x, f) needs a tensor x, got {describe(args[0])}", span)
        return el.apply(res, [args[0]], frame, span)
    return res


FUNCTIONS: dict[str, Builtin] = {
    "range": _range, "len": _len, "min": _extremum(min, "min"), "max": _extremum(max, "max"),
    "int": _convert(int, "int"), "float": _convert(float, "float"), "str": _str, "log": _log, "shape": _shape,
    "sequential": _sequential, "residual": _residual,
}
NAMES = tuple(FUNCTIONS) + tuple(n for n in C.SPECS if n not in FUNCTIONS) + tuple(INIT_ARGS) + ("moe",)


def call_builtin(el: "Elaborator", name: str, args: list[Any], kwargs: dict[str, Any], frame: Frame,
                 e: A.Call) -> Any:
    # `residual` names both the combinator `residual(x, f)` and the policy `residual(post=true)`
    if name in C.SPECS and not (name == "residual" and args):
        return C.make_policy(name, args, kwargs, e.span)
    if name in INIT_ARGS:
        return make_init(name, [plain(a) for a in args], {k: plain(v) for k, v in kwargs.items()}, e.span)
    if name == "moe":
        return make_moe(el, args, kwargs, e.span)
    if kwargs:
        raise ArchError(f"{name}() takes no keyword arguments", e.span)
    return FUNCTIONS[name](el, args, [plain(a) for a in args], frame, e.span)
