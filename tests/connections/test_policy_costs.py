"""Each policy adds exactly the parameters docs/connections.md states (L layers, R residual calls
per layer, width D)."""

from __future__ import annotations

import pytest

from archc.cli import parse_value
from archc.elaborate import elaborate_text

SPEC = """
axis B, T, D
block Layer (x: [B, T, D]) -> [B, T, D] {
    ln_1 = layernorm()
    ln_2 = layernorm()
    x = residual(x, ln_1 >> linear(D))
    return residual(x, ln_2 >> linear(D))
}
model M(depth: int = 5, connect: connection = residual) (x: [B, T, 24]) -> [B, T, 24] {
    return x >> stack(depth, connect = connect) { Layer() }
}
"""
L, R, D = 5, 2, 24


def params(connect: str) -> int:
    return elaborate_text(SPEC, "m.arch", overrides={"connect": parse_value(connect)}).param_count()


def dwa(period: int, dilation: int) -> int:
    return sum(i // dilation + 1 for i in range(1, L + 1) if i % period == 0)


@pytest.mark.parametrize("connect,extra", [
    ("residual", 0),
    ("residual(post=true)", 0),
    ("rezero", L),
    ("layerscale(1e-5)", L * R * D),
    ("hyper(n=4)", L * R * (4 * 4 + 2 * 4 + (4 + 3) * D + 2)),
    ("hyper(n=3, dynamic=false)", L * R * (3 * 3 + 2 * 3)),
    ("frac(n=4)", L * R * (2 * 16 + 4)),
    ('laurel("rw")', 2 * L * R),
    ('laurel("lr", rank=3)', 2 * 3 * D * L * R),
    ('laurel("pa", window=2)', sum(min(2, c) for c in range(L * R))),
    ("dwa(1, dilation=1)", dwa(1, 1)),
    ("dwa(period=2, dilation=2)", dwa(2, 2)),
])
def test_extra_parameters_follow_the_formulas(connect: str, extra: int) -> None:
    assert params(connect) - params("residual") == extra
