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


def mudd() -> int:
    """One single-way mix after each layer but the first, over n = i + 1 outputs, and a last one
    over L + 1 outputs with a 4x wider hidden layer: D*hid + hid*n + n each, hid = round64(n)."""
    def mix(n: int, last: bool) -> int:
        hid = (n // 64 + 1) * 64 * (4 if last else 1)
        return D * hid + hid * n + n
    return sum(mix(i + 1, False) for i in range(1, L)) + mix(L + 1, True)


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
    ("mudd", mudd()),
])
def test_extra_parameters_follow_the_formulas(connect: str, extra: int) -> None:
    assert params(connect) - params("residual") == extra


def costs(connect: str, batch: int = 2, t: int = 8):
    from archc.analysis.connections import connection_costs
    from archc.analysis.summary import axis_values

    g = elaborate_text(SPEC, "m.arch", overrides={"connect": parse_value(connect)})
    (cost,) = connection_costs(g, axis_values(g, batch, {"T": t}))
    return cost


def test_summary_reports_the_parameters_each_policy_adds() -> None:
    for connect in ("rezero", "layerscale(1e-5)", "hyper(n=4)", "frac(n=4)", 'laurel("lr", rank=3)', "dwa(1)"):
        assert costs(connect).params == params(connect) - params("residual"), connect


def test_summary_activations_follow_the_policies_ops() -> None:
    x = 2 * 8 * D * 4  # bytes of one [B, T, D] activation (B=2, T=8, f32)
    # static hyper: per call mix (n+1), select (1), slice (n), B^T y (n), add (n): 4n+2 copies of x;
    # once per stack: expand to n streams (1 + n), reduce (1); plus the parameters read per call
    n = 3
    assert costs(f"hyper(n={n}, dynamic=false)").act_bytes == (L * R * (4 * n + 2) + n + 2) * x \
        + L * R * (n * (n + 1) + n) * 4
    # layerscale: gamma (D floats), gamma * f(x), x + ... per call
    assert costs("layerscale(1e-5)").act_bytes == L * R * (2 * x + D * 4)
    # rezero: one scalar per layer, then a * f(x) and x + ... per call
    assert costs("rezero").act_bytes == L * 4 + L * R * 2 * x
