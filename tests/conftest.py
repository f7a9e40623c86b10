"""Shared pytest setup.

- Installs a one-shot import hook so that ``import timm`` / ``import transformers`` /
  ``import torchvision`` work although the available torchvision is a CUDA build whose
  native ops cannot load next to the CPU torch (see ``_timm_compat.py``).
- Fixtures ``timm`` and ``transformers`` return those modules (session-scoped).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

# Triton reads TRITON_INTERPRET once, when it is first imported, and anything may import it first
# (torch.compile's Inductor does, in whichever test of a worker compiles first): so it is set here,
# before any test runs, not in tests/kernels/conftest.py, whose kernel tests would otherwise fail
# after such a test in the same worker ("Cannot call @triton.jit'd outside of the scope of a kernel").
os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import _timm_compat`

import _timm_compat  # noqa: E402

_timm_compat.install_import_hook()


@pytest.fixture(scope="session")
def timm() -> ModuleType:
    """The ``timm`` module (reference models), importable despite the torchvision mismatch."""
    return _timm_compat.import_timm()


@pytest.fixture(scope="session")
def transformers() -> ModuleType:
    """The ``transformers`` module (reference models), with the same workaround."""
    return _timm_compat.import_transformers()
