"""A sparse weight (@sparse, #16) computes with `weight * weight_mask` in the kernel packages too:
the kernels read weights as they are, so a sparse linear or conv stays a torch region."""

from __future__ import annotations

from pathlib import Path

import pytest

from archc.backends.kernels.partition import partition
from archc.elaborate import elaborate_text

from kernel_harness import compare

SPEC = """axis B, T
model M (x: [B, T, 64]) -> [B, T, 64] {
    @sparse("2:4") y = x >> linear(256) >> gelu
    z = y >> linear(64) >> relu
    @sparse(0.5) w = linear(z, 64)
    return w + x
}
"""


def test_sparse_linears_are_torch_regions() -> None:
    g = elaborate_text(SPEC, file="m.arch")
    regions = partition(g).regions
    kinds = {g.nodes[r.anchor].scope if r.anchor is not None else r.nodes[0]: r.kind for r in regions}
    sparse = [r for r in regions if any(g.nodes[i].params.get("weight_mask") for i in r.nodes)]
    assert sparse and all(r.kind == "torch" for r in sparse)
    assert kinds.get("linear_1") == "gemm"  # the dense one keeps its kernel


@pytest.mark.parametrize("target", ["triton"])
def test_the_package_equals_the_torch_target(target: str, tmp_path: Path) -> None:
    g = elaborate_text(SPEC, file="m.arch")
    compare(g, tmp_path, sizes={"B": 2, "T": 5}, target=target)
