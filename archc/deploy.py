"""Deployment: train-time graph + weights -> deployed graph + weights, checked numerically.

`deploy(graph, state_dict)` runs the weight-changing passes (eval mode: BatchNorm folding,
re-parameterization, dropout removal, sparse weights times their masks, clean-up), builds the train-time and the deployed torch
modules, compares them on random inputs (|deployed - train| <= atol + rtol * |train| everywhere, no
NaN: archc.numeric), and returns the deployed graph and state_dict with the max error. `archc deploy`
(archc/commands/deploy.py) is this plus files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from archc.errors import ArchError
from archc.ir.graph import Graph
from archc.numeric import ATOL, RTOL, Closeness, compare
from archc.passes.manager import DEPLOY, run_pipeline
from archc.passes.prune import complete

if TYPE_CHECKING:
    from torch import Tensor


class DeployCheckError(ArchError):
    """The deployed model does not compute what the train-time model computes (in eval mode)."""


@dataclass(frozen=True)
class Deployed:
    graph: Graph
    state_dict: dict[str, "Tensor"]
    max_error: float  # the max abs error
    passes: tuple[str, ...]
    max_rel_error: float = 0.0  # |deployed - train| / |train| at the element furthest past its tolerance


def load_weights(module: Any, state_dict: Mapping[str, "Tensor"], what: str) -> None:
    """load_state_dict(strict=True), with a message that names the keys that do not match."""
    missing = sorted(set(module.state_dict()) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(module.state_dict()))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ArchError(f"the weights do not fit {what}: {'; '.join(parts)}")
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ArchError(f"the weights do not fit {what}: {str(err).splitlines()[-1].strip()}") from None


def _flat(out: Any) -> list["Tensor"]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def closeness(a: Any, b: Any, graph: Graph, trials: int = 2, batch: int = 2, seed: int = 0,
              atol: float = ATOL, rtol: float = RTOL) -> Closeness:
    """How close b(x) is to a(x) over `trials` random inputs of `graph` (both modules in eval mode)."""
    import torch

    from archc.backends.torch.inputs import example_inputs

    a.eval()
    b.eval()
    pairs = []
    with torch.no_grad():
        for t in range(trials):
            xs = example_inputs(graph, sizes={"B": batch}, seed=seed + t)
            want, got = _flat(a(*xs)), _flat(b(*xs))
            if len(want) != len(got):
                raise DeployCheckError(f"deploy check failed: {len(got)} outputs instead of {len(want)}")
            pairs += list(zip(got, want))
    return compare(pairs, atol=atol, rtol=rtol)


def max_abs_error(a: Any, b: Any, graph: Graph, trials: int = 2, batch: int = 2, seed: int = 0) -> float:
    """The largest |a(x) - b(x)| over `trials` random inputs of `graph`: NaN when any difference is
    NaN (or an output is not finite), never hidden by `max`."""
    return closeness(a, b, graph, trials, batch, seed).max_abs


def deploy(graph: Graph, state_dict: Mapping[str, "Tensor"], tolerance: float = ATOL,
           passes: Sequence[str] = DEPLOY, trials: int = 2, batch: int = 2, rtol: float = RTOL) -> Deployed:
    """`tolerance` is the absolute tolerance, `rtol` the relative one: the check passes when every
    output element has |deployed - train| <= tolerance + rtol * |train|, and none is NaN."""
    from archc.backends.torch import build_module

    train = build_module(graph)
    state_dict = complete(graph, state_dict)  # a sparse weight without a valid mask gets one by magnitude
    load_weights(train, state_dict, f"model {graph.name}")
    pipeline = run_pipeline(graph, passes)
    new_sd = pipeline.weights(dict(train.state_dict()))
    deployed = build_module(pipeline.graph)
    load_weights(deployed, new_sd, "the deployed model (a bug in a pass)")
    check = closeness(train, deployed, graph, trials=trials, batch=batch, atol=tolerance, rtol=rtol)
    if not check.ok:
        raise DeployCheckError(f"deploy check failed: the deployed model differs from the train-time model "
                               f"(eval mode), above the tolerance {tolerance:g} + {rtol:g} * |train|: "
                               f"{check.describe()}; nothing was written")
    return Deployed(pipeline.graph, new_sd, check.max_abs, tuple(passes), check.max_rel)
