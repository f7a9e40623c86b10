"""Random example inputs for a graph, built from its input types (for demos, tests and checks).

Symbolic axes get sizes from `sizes` (default: B=2, T=16, any other axis 32). Integer inputs
that feed an `embedding` draw indices below its table size; other integers draw from [0, 2).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from archc.backends.torch.inits import DTYPES
from archc.ir.graph import Graph
from archc.sizes import Size

DEFAULT_SIZES = {"B": 2, "T": 16}
OTHER_AXIS = 32


def input_shape(graph: Graph, index: int, sizes: dict[str, int] | None = None) -> tuple[int, ...]:
    env = {**DEFAULT_SIZES, **(sizes or {})}
    atoms = {a for d in graph.inputs[index].type.sizes for a in d.atoms()}
    bind = {a: Size.of(env.get(a, OTHER_AXIS)) for a in atoms}
    return tuple(s.subs(bind).value for s in graph.inputs[index].type.sizes)


def _index_bound(graph: Graph, value: str) -> int:
    bounds = [n.attrs["num"] for n in graph.nodes if n.op == "embedding" and n.inputs[0] == value]
    return min(bounds) if bounds else 2


def example_inputs(graph: Graph, sizes: dict[str, int] | None = None, seed: int = 0) -> tuple[Any, ...]:
    """One random tensor per graph input, reproducible from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, port in enumerate(graph.inputs):
        shape, dtype = input_shape(graph, i, sizes), getattr(torch, DTYPES[port.type.dtype].split(".")[1])
        if port.type.is_float:
            out.append(torch.randn(shape, generator=gen).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            out.append(torch.randint(0, _index_bound(graph, port.value), shape, generator=gen, dtype=dtype))
    return tuple(out)


def _affine(size: Size) -> tuple[str, int, int] | None:
    """(axis, c, b) when `size` is c * axis + b with c >= 1 (`T`, `T + 1`, `2*T - 3`), else None."""
    linear = [(mono, coef) for mono, coef in size.terms.items() if mono]
    const = size.terms.get((), 0)
    if len(linear) != 1 or not isinstance(const, int):
        return None
    (mono, coef), = linear
    if len(mono) != 1 or mono[0][1] != 1 or not isinstance(coef, int) or coef < 1:
        return None
    return mono[0][0], coef, const


def dynamic_shapes(graph: Graph) -> tuple[dict[int, Any], ...]:
    """torch.export's `dynamic_shapes` for the model's inputs: each symbolic axis an input gives is a
    `Dim`, constrained by the model's run-time guards on it (archc.guards): `T` at most 1024 is
    `Dim("T", max=1024)`, `T` divisible by 2 is `2 * Dim("T_over_2")`, and a guard on an affine
    size of one axis is solved for it (`T + 1 <= 1024` is `T <= 1023`; `2*T` divisible by 4 is `T`
    divisible by 2). Others (`B*T`, `T + 1` divisible by 2) cannot be stated this way; export then
    reports them."""
    from torch.export import Dim

    from archc.sizes import parse_size

    low: dict[str, int] = {}
    high: dict[str, int] = {}
    step: dict[str, int] = {}
    for g in graph.guards:
        found = _affine(parse_size(g.size))
        if found is None:
            continue
        axis, c, b = found
        if g.kind == "divisible":  # c*T + b = 0 (mod m): stated when b is, as T = 0 (mod m / gcd(c, m))
            if b % g.bound == 0:
                step[axis] = math.lcm(step.get(axis, 1), g.bound // math.gcd(c, g.bound))
        elif g.kind == "at_most":  # c*T + b <= m
            high[axis] = min(high.get(axis, (g.bound - b) // c), (g.bound - b) // c)
        else:  # c*T + b >= m
            low[axis] = max(low.get(axis, -(-(g.bound - b) // c)), -(-(g.bound - b) // c))
    dims: dict[str, Any] = {}
    for axis in sorted({a for p in graph.inputs for s in p.type.sizes for a in s.atoms()}):
        k, lo, hi = step.get(axis, 1), low.get(axis), high.get(axis)
        bounds = {"min": -(-lo // k)} if lo is not None and lo > 0 else {}
        bounds.update({"max": hi // k} if hi is not None else {})
        dims[axis] = Dim(axis, **bounds) if k == 1 else k * Dim(f"{axis}_over_{k}", **bounds)
    out = []
    for port in graph.inputs:
        spec: dict[int, Any] = {}
        for d, s in enumerate(port.type.sizes):
            if not s.is_const and len(s.terms) == 1 and s.atoms() and str(s) in dims:
                spec[d] = dims[str(s)]
        out.append(spec)
    return tuple(out)
