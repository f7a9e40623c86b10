"""The typed IR: tensor types (types.py), the graph of ops (graph.py), its printer and verifier."""

from archc.ir.graph import Graph, Node, ParamDecl, Port, ScopeInfo
from archc.ir.types import DTYPES, Dim, TensorType

__all__ = ["DTYPES", "Dim", "Graph", "Node", "ParamDecl", "Port", "ScopeInfo", "TensorType"]
