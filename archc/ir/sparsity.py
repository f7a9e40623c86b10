"""Sparsity as a checked attribute of a weight: what `@sparse(...)` means, and when a weight can hold it.

    @sparse("2:4")                         N:M: at most N nonzeros in each group of M consecutive
                                           weights along the reduction (input-channel) axis
    @sparse(0.9)                           unstructured: 90% of the weights are zero (by magnitude)
    @sparse(block=[32, 32], density=0.1)   block: whole 32x32 tiles of the [out, in] weight are zero;
                                           10% of the tiles are kept

The annotation stands on a statement or a block; it goes to the ops that own a weight with a
reduction axis (`SPARSE_OPS`), each of which gets a boolean buffer `weight_mask` of the weight's
shape, and computes with `weight * weight_mask`. Which weights are kept is decided by magnitude
(`nm_mask(2,4)`, `magnitude_mask(0.1)`, `block_mask(32,32,0.1)` are the mask's initializers, made from
the weight when the module is built; `archc.sparsity` prunes again from trained weights).

For a convolution weight [out, in/groups, *kernel], the N:M groups run along `in/groups` at each
kernel position (NVIDIA's layout for sparse convolutions, input channels innermost), and a block
tile is taken over the weight viewed as [out, in/groups * prod(kernel)].

References: Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (N:M, 2:4 on Ampere);
Han et al. 2015, "Learning both Weights and Connections" (magnitude pruning); Gray et al. 2017,
"GPU Kernels for Block-Sparse Weights".
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from archc.ir.graph import AnnotationIR, Node

# ops whose weight has a reduction axis, with what that axis is called
SPARSE_OPS = {"linear": "input features", "conv1d": "input channels", "conv2d": "input channels"}
MASK = "weight_mask"  # the buffer's role, next to `weight`
MAX_M = 64


class Sparsity(BaseModel):
    """A parsed `@sparse(...)`: `kind` with its numbers. `density` is the fraction of weights kept."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["n:m", "unstructured", "block"]
    n: int = 0
    m: int = 0
    density: float = 1.0
    block: tuple[int, int] = (0, 0)

    @property
    def kept(self) -> float:
        """The fraction of the weight that is nonzero at most (`n/m` for N:M)."""
        return self.n / self.m if self.kind == "n:m" else self.density

    @property
    def init(self) -> str:
        """The mask's initializer: the pattern, computed from the weight by magnitude."""
        if self.kind == "n:m":
            return f"nm_mask({self.n},{self.m})"
        if self.kind == "unstructured":
            return f"magnitude_mask({self.density!r})"
        return f"block_mask({self.block[0]},{self.block[1]},{self.density!r})"

    def text(self) -> str:
        if self.kind == "n:m":
            return f"{self.n}:{self.m}"
        if self.kind == "unstructured":
            return f"unstructured, {self.density:.3g} kept"
        return f"blocks {self.block[0]}x{self.block[1]}, {self.density:.3g} kept"


def parse(ann: AnnotationIR) -> Sparsity:
    """The sparsity an `@sparse` annotation asks for; ValueError with a message that quotes it."""
    args, kwargs = ann.args, dict(ann.kwargs)
    usage = ('write @sparse("2:4") (N:M), @sparse(0.9) (the fraction of zeros) or '
             "@sparse(block=[32, 32], density=0.1)")
    if kwargs:
        if args or set(kwargs) != {"block", "density"}:
            raise ValueError(f"@sparse takes either one argument or block= and density=; {usage}")
        block, density = kwargs["block"], kwargs["density"]
        if not (isinstance(block, (list, tuple)) and len(block) == 2 and
                all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
            raise ValueError(f"@sparse: block= must be two positive ints [rows, cols], got {block!r}")
        return Sparsity(kind="block", block=(block[0], block[1]), density=_fraction(density, "density"))
    if len(args) != 1:
        raise ValueError(f"@sparse takes one argument, got {len(args)}; {usage}")
    arg = args[0]
    if isinstance(arg, str):
        m = re.fullmatch(r"\s*(\d{1,3})\s*:\s*(\d{1,3})\s*", arg)
        if not m:
            raise ValueError(f"@sparse({json.dumps(arg)}) is not an N:M pattern; {usage}")
        n, mm = int(m.group(1)), int(m.group(2))
        if not 1 <= n < mm or mm > MAX_M:
            raise ValueError(f"@sparse({json.dumps(arg)}): N:M needs 1 <= N < M <= {MAX_M}")
        return Sparsity(kind="n:m", n=n, m=mm)
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return Sparsity(kind="unstructured", density=round(1.0 - _fraction(float(arg), "the fraction of zeros"), 12))
    raise ValueError(f"@sparse({json.dumps(arg)}): {usage}")


def _fraction(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 < v < 1.0:
        raise ValueError(f"@sparse: {what} must be a number strictly between 0 and 1, got {v!r}")
    return float(v)


def check_weight(s: Sparsity, op: str, shape: tuple[int, ...]) -> None:
    """ValueError unless a weight of `shape` (of op `op`) can hold the pattern."""
    axis = SPARSE_OPS[op]
    if s.kind == "n:m":
        if shape[1] % s.m:
            raise ValueError(f"{op}'s weight {list(shape)} cannot hold {s.n}:{s.m} sparsity: its {axis} "
                             f"({shape[1]}) are not a multiple of {s.m}")
        return
    rows, cols = shape[0], math.prod(shape[1:])
    if s.kind == "block":
        bh, bw = s.block
        if rows % bh or cols % bw:
            raise ValueError(f"{op}'s weight, as a [{rows}, {cols}] matrix, is not made of {bh}x{bw} blocks")
        tiles = (rows // bh) * (cols // bw)
        if round(s.density * tiles) < 1:
            raise ValueError(f"{op}'s weight has {tiles} blocks of {bh}x{bw}: density {s.density} keeps none")
        return
    if round(s.density * rows * cols) < 1:
        raise ValueError(f"{op}'s weight has {rows * cols} elements: density {s.density:.3g} keeps none")


def of(node: Node) -> Sparsity | None:
    """The sparsity of a node's weight, if it has one (the first `@sparse`: an inner one wins)."""
    for a in reversed(node.annotations):
        if a.name == "sparse":
            return parse(a)
    return None


def kept_elements(s: Sparsity, shape: tuple[int, ...]) -> int:
    """How many weights the pattern keeps (the nonzeros of a weight that satisfies it, at most)."""
    total = math.prod(shape)
    if s.kind == "n:m":
        return total // s.m * s.n
    if s.kind == "block":
        bh, bw = s.block
        return round(s.density * (total // (bh * bw))) * bh * bw
    return round(s.density * total)
