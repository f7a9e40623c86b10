"""Prune by magnitude: every sparse weight (@sparse) times a mask that holds its pattern.

What it does: the graph is unchanged (each sparse weight already has its `weight_mask` buffer,
archc/ir/sparsity.py); the weight transform gives each sparse weight a valid mask -- the one in
the weights when it holds its pattern, else one computed from the weight by magnitude -- and
writes the weight multiplied by it, so the zeros are in the weight itself (what `archc deploy`
writes, and what a sparse kernel packs).
Assumes: nothing about the mode. Guarantees: a model that computes with `weight * weight_mask`
gives the same outputs before and after (when the given masks hold their patterns), and every
mask afterwards holds its pattern.
Reference: Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks"
(magnitude pruning); Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (2:4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from archc.ir import sparsity as S
from archc.ir.graph import Graph, Node
from archc.passes.result import PassResult

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class SparseWeight:
    """One sparse weight of a graph: the op's scope, its weight and mask names, the pattern."""

    node: Node
    weight: str
    mask: str
    pattern: S.Sparsity
    shape: tuple[int, ...]

    @property
    def module(self) -> str:
        """The path of the module that holds the weight (`mlp.fc1`)."""
        return self.weight.rpartition(".")[0]


def sparse_weights(graph: Graph) -> list[SparseWeight]:
    found = []
    for node in graph.nodes:
        s = S.of(node)
        if s is not None and S.MASK in node.params:
            weight = node.params["weight"]
            if not any(w.weight == weight for w in found):
                found.append(SparseWeight(node, weight, node.params[S.MASK], s, graph.params[weight].shape))
    return found


def mask_of(s: S.Sparsity, weight: "Tensor", within: "Tensor | None" = None, density: float | None = None) -> "Tensor":
    """The mask of `weight` by magnitude for pattern `s` (unstructured and block at `density` if
    given, else the pattern's), keeping only weights inside `within` when given."""
    from archc.backends.torch import masks

    if s.kind == "n:m":
        return masks.nm_mask(weight, s.n, s.m, within)
    d = s.density if density is None else density
    if s.kind == "unstructured":
        return masks.magnitude_mask(weight, d, within)
    return masks.block_mask(weight, s.block[0], s.block[1], d, within)


def satisfies(s: S.Sparsity, mask: "Tensor") -> bool:
    """Does `mask` (True = kept) hold pattern `s`? N:M: at most N kept in each group of M along the
    input channels; unstructured: at most the pattern's number kept; block: whole tiles, at most
    the pattern's number of tiles."""
    kept = mask.bool()
    if s.kind == "n:m":
        groups = (kept.movedim(1, -1) if kept.dim() > 2 else kept).reshape(-1, s.m)
        return bool((groups.sum(dim=1) <= s.n).all())
    if s.kind == "unstructured":
        return int(kept.sum()) <= S.kept_elements(s, tuple(kept.shape))
    rows, cols = s.block
    w = kept.reshape(kept.shape[0], -1)
    tiles = w.reshape(w.shape[0] // rows, rows, w.shape[1] // cols, cols)
    full, any_ = tiles.all(dim=3).all(dim=1), tiles.any(dim=3).any(dim=1)
    return bool((full == any_).all()) and int(full.sum()) * rows * cols <= S.kept_elements(s, tuple(kept.shape))


def complete(graph: Graph, state_dict: Mapping[str, "Tensor"]) -> dict[str, "Tensor"]:
    """`state_dict` with a valid mask for each sparse weight: a given mask that holds its pattern is
    kept; a missing one, or one that breaks its pattern, is made from the weight by magnitude."""
    out = dict(state_dict)
    for w in sparse_weights(graph):
        if w.weight not in out:
            continue  # loading the weights will say what is missing
        given = out.get(w.mask)
        if given is None or tuple(given.shape) != w.shape or not satisfies(w.pattern, given):
            out[w.mask] = mask_of(w.pattern, out[w.weight])
    return out


def apply_masks(graph: Graph, state_dict: Mapping[str, "Tensor"]) -> dict[str, "Tensor"]:
    """`complete`, then each sparse weight multiplied by its mask: the zeros are in the weight."""
    out = complete(graph, state_dict)
    for w in sparse_weights(graph):
        out[w.weight] = out[w.weight] * out[w.mask].to(out[w.weight].dtype)
    return out


def prune(graph: Graph) -> PassResult:
    return PassResult(graph, (lambda sd: apply_masks(graph, sd)) if sparse_weights(graph) else None)
