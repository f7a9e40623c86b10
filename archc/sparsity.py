"""Sparse weights at run time: check, prune by magnitude, iterative pruning with rewinding, lower.

A spec's `@sparse(...)` (archc/ir/sparsity.py) gives each sparse weight a boolean buffer
`weight_mask`; the built module computes with `weight * weight_mask`, so the gradient of a pruned
weight is zero and optimizers cannot bring it back. This module works on such a model and its graph:

    sparse_weights(graph)             the sparse weights: names, pattern, shapes
    satisfies(s, mask)                does a mask hold its pattern?
    check(model, graph)               every mask of a model holds its pattern (ValueError otherwise)
    complete(graph, state_dict)       a state_dict with every mask present and valid (magnitude
                                      masks where one is missing or breaks its pattern)
    prune(model, graph)               one-shot: masks from the current weights, by magnitude
    lottery(model, graph, train, ...) iterative magnitude pruning with rewinding (Frankle & Carbin
                                      2019; Frankle et al. 2020): each round trains, prunes a fraction
                                      of the remaining weights, and rewinds the survivors
    lower(model, graph, ...)          inference: 2:4 weights packed for sparse tensor cores (CUDA,
                                      after the pattern is verified, where they measure faster
                                      than dense), unstructured and block weights
                                      as CSR/BSR where they measure faster than dense on this CPU

The mask functions are backends/torch/masks.py's, which the generated modules use too.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from archc.analysis.sparsity import SEMI_MIN_CC, gpu_outlook
from archc.ir import sparsity as S
from archc.ir.graph import Graph
from archc.passes.prune import SparseWeight, apply_masks, complete, mask_of, satisfies, sparse_weights

if TYPE_CHECKING:
    from torch import Tensor, nn


def check(model: "nn.Module", graph: Graph) -> None:
    """ValueError naming the first mask of `model` that does not hold its pattern."""
    for w in sparse_weights(graph):
        if not satisfies(w.pattern, model.get_buffer(w.mask)):
            raise ValueError(f"'{w.mask}' does not hold its pattern ({w.pattern.text()})")


def prune(model: "nn.Module", graph: Graph) -> None:
    """One-shot magnitude pruning: every mask made again from the current weights."""
    import torch

    with torch.no_grad():
        for w in sparse_weights(graph):
            model.get_buffer(w.mask).copy_(mask_of(w.pattern, model.get_parameter(w.weight)))


@dataclass
class Round:
    """One round of `lottery`: the fraction of each sparse weight kept after it."""

    index: int
    density: dict[str, float] = field(default_factory=dict)


def lottery(model: "nn.Module", graph: Graph, train: Callable[["nn.Module"], Any], fraction: float = 0.2,
            rewind: Mapping[str, "Tensor"] | None = None, max_rounds: int = 100) -> list[Round]:
    """Iterative magnitude pruning with rewinding (the lottery-ticket procedure).

    The masks start dense. Each round calls `train(model)`, then prunes `fraction` of the weights
    each mask still keeps (by magnitude, never below the pattern's density; an N:M weight takes its
    pattern in the first round), then sets every parameter back to `rewind` (a state_dict: the
    weights at initialization, or after k steps for rewinding; by default the model's weights at the
    call) while keeping the new masks. It stops when every mask has reached its pattern, and returns
    the density of each mask after each round."""
    import torch

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    weights = sparse_weights(graph)
    masks = {w.mask: model.get_buffer(w.mask) for w in weights}
    saved = {k: v.detach().clone() for k, v in (rewind or model.state_dict()).items() if k not in masks}
    with torch.no_grad():
        for m in masks.values():
            m.fill_(True)
    rounds: list[Round] = []
    for index in range(max_rounds):
        train(model)
        report = Round(index)
        with torch.no_grad():
            for w in weights:
                mask, weight = masks[w.mask], model.get_parameter(w.weight)
                if w.pattern.kind == "n:m":
                    new = mask_of(w.pattern, weight, within=mask)
                else:
                    now = float(mask.float().mean())
                    new = mask_of(w.pattern, weight, within=mask, density=max(now * (1.0 - fraction), w.pattern.density))
                mask.copy_(new)
                report.density[w.weight] = float(new.float().mean())
            model.load_state_dict({**model.state_dict(), **saved})
        rounds.append(report)
        if all(satisfies(w.pattern, masks[w.mask]) for w in weights):
            return rounds
    raise RuntimeError(f"lottery: the masks did not reach their patterns in {max_rounds} rounds")


# ---- lowering --------------------------------------------------------------------------------
@dataclass
class Lowered:
    """What `lower` did with each sparse weight: `kind` is "2:4", "csr", "bsr" or "dense"."""

    weight: str
    kind: str
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None


def _time(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


def lower(model: "nn.Module", graph: Graph, rows: int = 8, reps: int = 20,
          timer: Callable[[Callable[[], Any], int], float] = _time,
          packer: Callable[["Tensor"], "Tensor"] | None = None,
          capability: tuple[int, int] | None = None, measure: bool | None = None) -> list[Lowered]:
    """Lower the sparse linears of `model` (eval, inference only) in place, and say what was done.

    On CUDA, a 2:4 weight is packed with `to_sparse_semi_structured` only after its mask is
    verified to hold 2:4 (the packer itself keeps 2 of every 4 values whatever they are) and the
    weight fits the kernels (`gpu_outlook`), and kept only where it measures faster than dense at
    `rows` rows of input (on an H200 in bf16, torch 2.11's 2:4 linear was slower than dense cuBLAS:
    0.92x at 8192x8192x8192, 0.22x in a ViT-B MLP stack; docs/benchmarks.md). On the CPU, an
    unstructured (CSR) or block (BSR) weight is used sparse only where it measures faster than
    dense at `rows` rows of input; else it stays dense. Times are the median of `reps` runs. A weight whose op is not a module of its own (it
    runs in its parent's forward) stays as it is. `packer` and `capability` stand in for
    `torch.sparse.to_sparse_semi_structured` and the device's compute capability (tests); with a
    packer given, weights are packed as if on a GPU, and measured only with `measure=True` (by
    default a packed weight is measured where it lives on a GPU). A lowered linear becomes a `PackedLinear`
    (backends/torch/packed.py), which holds the packed weight and the bias as buffers."""
    import torch

    from archc.backends.torch.packed import PackedLinear

    done: list[Lowered] = []
    for w in sparse_weights(graph):
        try:
            holder = model.get_submodule(w.module)
        except AttributeError:
            done.append(Lowered(w.weight, "dense", "not a module of its own"))
            continue
        if w.node.op != "linear" or not hasattr(holder, "forward") or not hasattr(holder, S.MASK):
            done.append(Lowered(w.weight, "dense", f"{w.node.op}: only linears are lowered"))
            continue
        if holder.weight.dim() != 2 or holder.get_buffer(S.MASK).shape != holder.weight.shape:
            done.append(Lowered(w.weight, "dense", "not a plain linear module"))
            continue
        mask = holder.get_buffer(S.MASK)
        if not satisfies(w.pattern, mask):
            done.append(Lowered(w.weight, "dense", f"its mask does not hold {w.pattern.text()}: not packed"))
            continue
        dense = (holder.weight * mask).detach()
        bias = holder.bias.detach() if getattr(holder, "bias", None) is not None else None
        if dense.is_cuda or packer is not None:
            from archc.backends.torch.inits import DTYPES

            names = {spelled: name for name, spelled in DTYPES.items()}  # "torch.bfloat16" -> "bf16"
            why = gpu_outlook(w, graph, names.get(str(dense.dtype), str(dense.dtype)))
            cc = capability or torch.cuda.get_device_capability(dense.device)
            if why is None and cc < SEMI_MIN_CC:
                why = f"compute capability {cc[0]}.{cc[1]}: 2:4 needs {SEMI_MIN_CC[0]}.{SEMI_MIN_CC[1]}"
            if why is not None:
                done.append(Lowered(w.weight, "dense", why))
                continue
            packed = (packer or torch.sparse.to_sparse_semi_structured)(dense)
            if measure if measure is not None else dense.is_cuda:
                t_dense, t_sparse = _race(dense, packed, bias, rows, reps, timer)
                if t_sparse >= t_dense:
                    done.append(Lowered(w.weight, "dense", f"2:4 measured slower than dense at {rows} rows",
                                        t_dense, t_sparse))
                    continue
                why, t = f"verified 2:4, measured faster than dense at {rows} rows", (t_dense, t_sparse)
            else:
                why, t = "verified 2:4, packed for sparse tensor cores (not measured)", (None, None)
            _replace(model, w.module, PackedLinear(packed, bias))
            done.append(Lowered(w.weight, "2:4", why, *t))
            continue
        if w.pattern.kind == "n:m":
            done.append(Lowered(w.weight, "dense", "N:M has no CPU kernel"))
            continue
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            sparse = dense.to_sparse_bsr(w.pattern.block) if w.pattern.kind == "block" else dense.to_sparse_csr()
        t_dense, t_sparse = _race(dense, sparse, bias, rows, reps, timer)
        kind = "bsr" if w.pattern.kind == "block" else "csr"
        if t_sparse < t_dense:
            _replace(model, w.module, PackedLinear(sparse, bias))
            done.append(Lowered(w.weight, kind, f"measured faster than dense at {rows} rows", t_dense, t_sparse))
        else:
            done.append(Lowered(w.weight, "dense", f"{kind} measured slower than dense at {rows} rows",
                                t_dense, t_sparse))
    return done


def _race(dense: "Tensor", sparse: "Tensor", bias: "Tensor | None", rows: int, reps: int,
          timer: Callable[[Callable[[], Any], int], float]) -> tuple[float, float]:
    """Milliseconds of the linear at `rows` rows of input with the dense weight and with `sparse`
    (on a GPU each call waits for the device, so the time is the kernel's)."""
    import torch

    x = torch.randn(rows, dense.shape[1], dtype=dense.dtype, device=dense.device)
    wait = torch.cuda.synchronize if dense.is_cuda else (lambda: None)

    def run(weight: "Tensor") -> Callable[[], None]:
        return lambda: (torch.nn.functional.linear(x, weight, bias), wait())[1]
    with torch.no_grad():
        return timer(run(dense), reps), timer(run(sparse), reps)


def _replace(model: "nn.Module", path: str, module: "nn.Module") -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)  # a list's "3" too


def effective(graph: Graph) -> tuple[int, int]:
    """(dense, effective) trainable parameter counts: effective counts a sparse weight's kept ones."""
    dense = sum(p.numel for p in graph.params.values() if p.trainable)
    cut = sum(math.prod(w.shape) - S.kept_elements(w.pattern, w.shape) for w in sparse_weights(graph))
    return dense, dense - cut


__all__ = ["Lowered", "Round", "SparseWeight", "apply_masks", "check", "complete", "effective", "gpu_outlook",
           "lottery", "lower", "mask_of", "prune", "satisfies", "sparse_weights"]
