"""What a pass returns: the new graph and, for a pass that changes weights, the weight transform
that maps a state_dict of the old graph to one of the new graph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from archc.ir.graph import Graph

if TYPE_CHECKING:
    from torch import Tensor

StateDict = Mapping[str, "Tensor"]
WeightTransform = Callable[[StateDict], dict[str, "Tensor"]]


@dataclass(frozen=True)
class PassResult:
    """`graph` is the rewritten IR. `transform` is None when the pass leaves weights alone (it may
    still drop parameters; `restrict` removes their keys)."""

    graph: Graph
    transform: WeightTransform | None = None


def compose(first: WeightTransform | None, then: WeightTransform | None) -> WeightTransform | None:
    """`then` after `first`; None is the identity."""
    if first is None:
        return then
    if then is None:
        return first
    return lambda sd: then(first(sd))


def restrict(graph: Graph, state_dict: StateDict) -> dict[str, "Tensor"]:
    """The entries of `state_dict` that `graph` declares, in its order; a missing one is an error."""
    missing = [name for name in graph.params if name not in state_dict]
    if missing:
        raise KeyError(f"the weights have no entry for {missing[:5]} ({len(missing)} missing)")
    return {name: state_dict[name] for name in graph.params}
