"""Shared helpers for the backend tests: build a spec three ways with one set of weights.

- "module": the in-memory nn.Module (archc.backends.torch.build_module)
- "fx":     the torch.fx.GraphModule built from the IR (archc.backends.fx.build_graph_module)
- "file":   the emitted .py file, imported from a temporary folder like any user module
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archc.backends.fx import build_graph_module
from archc.backends.torch import build_module, emit_python
from archc.backends.torch.emit import class_name
from archc.elaborate import elaborate_text
from archc.ir.graph import Graph
from archc.ir.verify import verify

_IMPORTED = 0


def spec_graph(text: str, **overrides: Any) -> Graph:
    return verify(elaborate_text(text, "t.arch", overrides=overrides))


def import_file(path: Path, name: str) -> nn.Module:
    """Import an emitted file under a fresh module name and instantiate its model class."""
    global _IMPORTED
    _IMPORTED += 1
    mod_name = f"archc_emitted_{_IMPORTED}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return getattr(module, name)()


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Give every float tensor random values (variances positive), so ones/zeros hide nothing."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                r = torch.randn(t.shape, generator=gen)
                t.copy_(r.abs() + 0.5 if name.endswith("running_var") else r)


def three_ways(graph: Graph, tmp_path: Path, seed: int = 0, random_weights: bool = True) -> dict[str, nn.Module]:
    """The model built three ways, all holding the same weights (randomized, or the spec's init)."""
    torch.manual_seed(seed)
    module = build_module(graph)
    if random_weights:
        randomize(module, seed)
    state = module.state_dict()
    gm = build_graph_module(graph)
    gm.load_state_dict(state)
    path = tmp_path / f"{graph.name.lower()}_{seed}.py"
    path.write_text(emit_python(graph))
    emitted = import_file(path, class_name(graph))
    emitted.load_state_dict(state)
    return {"module": module, "fx": gm, "file": emitted}


def as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def assert_close(got: Any, want: Any, what: str, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    got, want = as_tuple(got), as_tuple(want)
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"{what}: output {i} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        assert g.dtype == w.dtype, f"{what}: output {i} has dtype {g.dtype}, expected {w.dtype}"
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m, i=i: f"{what}: output {i}: {m}")
