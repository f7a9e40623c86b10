"""Locate archc's data files: the lark grammar, the ``.arch`` spec library, the backends.

An installed wheel carries them inside the package (``archc/_grammar/arch.lark``,
``archc/_specs/{std,models}/``, ``archc/backends/``); an editable install or a plain
checkout keeps them at the repository root (``grammar/``, ``specs/``, ``backends/``).
Each function tries the installed layout first, then the source tree.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from importlib.resources import files
from pathlib import Path

__all__ = ["backends_root", "grammar_path", "specs_root"]

_PKG_DIR = Path(__file__).resolve().parent
_SRC_ROOT = _PKG_DIR.parent  # the repository root, in a checkout or an editable install


def _locate(installed: str, source: str) -> Path:
    """Return ``archc/<installed>`` if it exists, else ``<repo root>/<source>``."""
    candidate = Path(str(files("archc").joinpath(installed)))
    if candidate.exists():
        return candidate
    candidate = _SRC_ROOT / source
    if candidate.exists():
        return candidate
    raise FileNotFoundError(
        f"archc data file not found: looked for {_PKG_DIR / installed} and {_SRC_ROOT / source}"
    )


@cache
def grammar_path() -> Path:
    """Path of the lark grammar file ``arch.lark``."""
    return _locate("_grammar/arch.lark", "grammar/arch.lark")


@cache
def specs_root() -> Path:
    """Folder holding the spec library: ``std/`` (standard library) and ``models/`` (model zoo)."""
    return _locate("_specs", "specs")


@cache
def backends_root() -> Path:
    """Folder of the ``archc.backends`` package (backend code and ``*.j2`` templates)."""
    spec = importlib.util.find_spec("archc.backends")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return _locate("backends", "backends")
