"""What each connection policy costs: the parameters it adds and the activations its own ops
produce, per connected stack. A policy's ops and parameters live in scopes recorded with the
policy's name as their kind (`h.0.hc1`, `h.0.ls2`, `h.0.resweight`, `h.dwa`, `h.streams`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from archc.analysis.summary import type_bytes
from archc.elaborate.connect import SPECS
from archc.ir.graph import Graph


@dataclass(frozen=True)
class ConnectionCost:
    stack: str  # the stack's scope
    policy: str  # as written: hyper(n=4, dynamic=true)
    params: int  # parameters the policy adds
    act_bytes: int  # bytes of the values the policy's own ops produce


def _policy_scopes(graph: Graph, stack: str) -> set[str]:
    return {p for p, info in graph.scopes.items()
            if info.kind in SPECS and (p == stack or p.startswith(stack + "."))}


def _under(path: str, scopes: set[str]) -> bool:
    return any(path == s or path.startswith(s + ".") for s in scopes)


def connection_costs(graph: Graph, env: Mapping[str, int]) -> list[ConnectionCost]:
    out = []
    for path, info in graph.scopes.items():
        if info.kind != "stack" or "connect" not in info.args:
            continue
        scopes = _policy_scopes(graph, path)
        params = sum(p.numel for name, p in graph.params.items() if p.trainable and _under(name, scopes))
        act = sum(type_bytes(graph.values[v], env) for n in graph.nodes if _under(n.scope, scopes)
                  for v in n.outputs)
        out.append(ConnectionCost(path, str(info.args["connect"]), params, act))
    return out
