"""archc: a declarative neural-network architecture compiler."""

from typing import Any

__version__ = "0.1.0"

_LAZY = {"compile": "archc.api", "emit_python": "archc.api", "parallelize": "archc.api", "init_weights": "archc.api",
         "create_model": "archc.registry", "list_models": "archc.registry", "import_module": "archc.importer"}  # imported on first use (they pull in torch)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'archc' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
