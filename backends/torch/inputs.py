"""Random example inputs for a graph, built from its input types (for demos, tests and checks).

Symbolic axes get sizes from `sizes` (default: B=2, T=16, any other axis 32). Integer inputs
that feed an `embedding` draw indices below its table size; other integers draw from [0, 2).
"""

from __future__ import annotations

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
