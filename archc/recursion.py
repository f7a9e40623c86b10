"""Room on the Python stack for archc's own, explicit nesting limits.

The parser and the elaborator recurse over the spec. Their depth is bounded by archc's limits
(`parser.MAX_TREE_DEPTH` levels of syntax, `elaborator.MAX_NESTING` levels of evaluation), never by
Python's recursion limit: `headroom(frames)` raises that limit, for the duration of the call, to at
least the current depth plus what the bounded recursion can use. So whether a spec is accepted
does not depend on the limit a host program (or an earlier test) set, nor on how deep the caller
already is.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


def _depth() -> int:
    frame, n = sys._getframe(1), 0
    while frame is not None:
        frame, n = frame.f_back, n + 1  # type: ignore[assignment]
    return n


@contextmanager
def headroom(frames: int) -> Iterator[None]:
    """Run the body with at least `frames` Python frames free under the recursion limit."""
    old = sys.getrecursionlimit()
    need = _depth() + frames
    if need > old:
        sys.setrecursionlimit(need)
    try:
        yield
    finally:
        if need > old and sys.getrecursionlimit() == need:
            sys.setrecursionlimit(old)
