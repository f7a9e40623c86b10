"""Shared helpers for the pass tests: the small specs in tests/passes/specs, weights with
non-trivial BatchNorm statistics, numerical comparison of two graphs in eval mode, and golden
files (tests/golden/passes, refreshed with ARCHC_UPDATE_GOLDEN=1)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from archc.backends.torch import build_module
from archc.backends.torch.inputs import example_inputs
from archc.elaborate import elaborate_file
from archc.ir.graph import Graph
from archc.ir.verify import verify

HERE = Path(__file__).resolve().parent
SPECS = HERE / "specs"
GOLDEN = HERE.parent / "golden" / "passes"
SPEC_NAMES = sorted(p.stem for p in SPECS.glob("*.arch"))
TOL = 1e-4


def spec(name: str) -> Graph:
    return verify(elaborate_file(SPECS / f"{name}.arch"))


def random_weights(graph: Graph, seed: int = 0) -> dict[str, torch.Tensor]:
    """The module's own initialization, with what it leaves trivial randomized: BatchNorm
    running statistics and affine parameters, biases, and learned scales (`parameter` nodes)."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.clone() for k, v in build_module(graph).state_dict().items()}
    roles = {name: role for n in graph.nodes for role, name in n.params.items()}
    ops = {name: n.op for n in graph.nodes for name in n.params.values()}
    for name, t in sd.items():
        if not t.is_floating_point():
            continue
        role, op = roles.get(name), ops.get(name)
        if role == "running_mean":
            t.copy_(torch.rand(t.shape, generator=g) * 0.2 - 0.1)
        elif role == "running_var":
            t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
        elif op == "batchnorm" and role == "weight":
            t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
        elif role == "bias" or op == "parameter":
            t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return sd


def outputs(graph: Graph, sd: Mapping[str, torch.Tensor], inputs: tuple[Any, ...]) -> list[torch.Tensor]:
    module = build_module(graph)
    module.load_state_dict(dict(sd), strict=True)
    module.eval()
    with torch.no_grad():
        out = module(*inputs)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def max_error(before: Graph, sd: Mapping[str, torch.Tensor], after: Graph, new_sd: Mapping[str, torch.Tensor],
              batch: int = 3, seed: int = 0) -> float:
    inputs = example_inputs(before, sizes={"B": batch}, seed=seed)
    a, b = outputs(before, sd, inputs), outputs(after, new_sd, inputs)
    assert len(a) == len(b)
    return max((u.double() - v.double()).abs().max().item() for u, v in zip(a, b))


_LOCATION = re.compile(r"# (?:\S*/)?([\w.-]+\.arch:\d+)$", re.M)


def portable(text: str) -> str:
    """Printed IR with source locations reduced to `file.arch:line` (no folders)."""
    return _LOCATION.sub(r"# \1", text)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    text = portable(text)
    if os.environ.get("ARCHC_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with ARCHC_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} changed; if intended, refresh with ARCHC_UPDATE_GOLDEN=1"
