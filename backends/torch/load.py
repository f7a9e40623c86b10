"""The in-memory `nn.Module`, made from the generated source, as torch.fx makes a GraphModule.

The text `emit_python` writes is executed in a fresh module object (registered in `sys.modules`
so classes pickle within the process, and in `linecache` so tracebacks show the generated
lines). There is one spelling of the model: the file a user can read is the code that runs.
"""

from __future__ import annotations

import hashlib
import linecache
import sys
import types
from functools import lru_cache
from typing import Any

from archc.backends.torch.emit import class_name, emit_python
from archc.ir.graph import Graph


@lru_cache(maxsize=64)
def load_source(source: str) -> types.ModuleType:
    """Execute generated source as a module; the same text gives the same module (and classes)."""
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    name = f"archc_generated_{key}"
    filename = f"<archc-generated-{key}>"
    module = types.ModuleType(name)
    module.__file__ = filename
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), module.__dict__)
    sys.modules[name] = module
    return module


def build_module(graph: Graph) -> Any:
    """A freshly initialized `nn.Module` for `graph`."""
    module = load_source(emit_python(graph))
    return getattr(module, class_name(graph))()
