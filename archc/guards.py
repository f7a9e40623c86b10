"""Run-time guards: what an op needs of a symbolic size that no check can prove.

`chunk(x, 2, dim=1)` on `[B, T, D]` is sound only when T is even; `positions(x, 1024, D)` only when
T <= 1024; `x[:, 3:]` (typed T-3) only when T >= 4. archc proves what it can at check time; when a
condition depends on a size known only at run time, the op's shape rule calls `require`, the
elaborator records the condition as a `Guard` in the IR (with the span of the op that needs it),
`archc check` lists it, the torch backend checks it at the model's entry (`T must be divisible by
2, got 5`), and `dynamic_shapes` states it to torch.export (`2 * Dim("T_over_2")`, `Dim("T",
max=1024)`).

A condition is guarded only on a size that is a polynomial with integer coefficients in axes the
model's inputs give directly (`T`, `B*T`, `T + 1`); on anything else (a `floor(...)`) `require`
answers False and the op refuses, as it did before guards existed.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Iterable, Iterator, Literal

from archc.sizes import Size

if TYPE_CHECKING:
    from archc.ir.types import TensorType

Kind = Literal["divisible", "at_most", "at_least"]
Need = tuple[Size, Kind, int, str]  # size, kind, bound, why (the op's words)

_SINK: ContextVar[list[Need] | None] = ContextVar("archc_guards", default=None)


def guardable(size: Size) -> bool:
    """A size a guard can evaluate: integer coefficients over plain axis names."""
    return not size.is_const and all(isinstance(c, int) for c in size.terms.values()) and \
        all(a.isidentifier() for a in size.atoms())


def require(size: Size, kind: Kind, bound: int, why: str) -> bool:
    """Leave `size <kind> bound` to a run-time guard. True when it is (or a graph is being
    re-checked, its guards already recorded); False when the size cannot be guarded."""
    if not guardable(size) or bound < 1:
        return False
    sink = _SINK.get()
    if sink is not None:
        sink.append((size, kind, bound, why))
    return True


@contextmanager
def collecting() -> Iterator[list[Need]]:
    """Collect the conditions the shape rules run inside the block require."""
    sink: list[Need] = []
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


def given_axes(inputs: Iterable[TensorType]) -> dict[str, tuple[int, int, int]]:
    """The axes a guard can read from the model's inputs: axis -> (input, dim, multiple), for each
    axis that is a whole dim of an input or a multiple of it (`[B, 2*K]` gives K = shape[1] // 2)."""
    out: dict[str, tuple[int, int, int]] = {}
    for i, t in enumerate(inputs):
        for d, s in enumerate(t.sizes):
            ((mono, coef),) = s.terms.items() if len(s.terms) == 1 else ((((), 0),))
            if len(mono) == 1 and mono[0][1] == 1 and isinstance(coef, int) and coef >= 1:
                out.setdefault(mono[0][0], (i, d, coef))
    return out


def text(kind: str, size: str, bound: int) -> str:
    """The condition in words: `T must be divisible by 2`."""
    words = {"divisible": "divisible by", "at_most": "at most", "at_least": "at least"}[kind]
    return f"{size} must be {words} {bound}"


def holds(kind: str, value: int, bound: int) -> bool:
    return value % bound == 0 if kind == "divisible" else value <= bound if kind == "at_most" else value >= bound
