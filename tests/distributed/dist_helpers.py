"""What the distributed tests' workers and parents share (imported by name: pytest puts this folder
on sys.path, and the forkserver workers inherit it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor whole: a DTensor gathered from its ranks, any other tensor copied."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.detach().clone()


def load_file(path: Path) -> Any:
    """The Python file `archc build` wrote at `path`, imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
