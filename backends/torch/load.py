"""The in-memory `nn.Module`, made from the generated source, as torch.fx makes a GraphModule.

The text `emit_python` writes is imported as the module `archc.generated.m<digest>` (see
archc/generated), so the classes have an importable home: `torch.save(model)` pickles them by
that name and `torch.load` finds them again in another process, and tracebacks show the
generated lines. There is one spelling of the model: the file a user can read is the code that runs.
"""

from __future__ import annotations

import types
from typing import Any

from archc import generated
from archc.backends.torch.emit import class_name, emit_python
from archc.ir.graph import Graph


def load_source(source: str) -> types.ModuleType:
    """Import generated source as a module; the same text gives the same module (and classes)."""
    return generated.load(source)


def build_module(graph: Graph, whole: bool = False) -> Any:
    """A freshly initialized `nn.Module` for `graph` (`whole`: see `emit_python`)."""
    module = load_source(emit_python(graph, whole))
    return getattr(module, class_name(graph))()
