"""The torch backend: a standalone `.py` file (`emit_python`) and the in-memory `nn.Module` made
from that same text (`build_module`). The module tree mirrors the spec's scopes, and `state_dict()`
keys are the IR's parameter names."""

from archc.backends.torch.emit import emit_python
from archc.backends.torch.load import build_module, load_source

__all__ = ["build_module", "emit_python", "load_source"]
