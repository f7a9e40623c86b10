"""The fx backend: a `torch.fx.GraphModule` built from the IR (`build_graph_module`)."""

from archc.backends.fx.build import build_graph_module

__all__ = ["build_graph_module"]
