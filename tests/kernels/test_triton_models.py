"""The zoo's ViT, GPT-2 and ResNet-18 as Triton packages, run by Triton's CPU interpreter, match
the torch target (fp32, max abs diff <= 1e-4)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("triton")

from kernel_harness import FULL, compare, graph  # noqa: E402

CASES = [("vit", {}, {"B": 2}), ("gpt2", {}, {"B": 2, "T": 13}), ("resnet18", {}, {"B": 2})]
if FULL:
    CASES += [("vit", {"img_size": 48, "patch": 16, "D": 96, "heads": 3}, {"B": 3}),
              ("gpt2", {"dim": 96, "heads": 3, "max_len": 80}, {"B": 1, "T": 77}),
              ("resnet18", {"img_size": 40, "num_classes": 7}, {"B": 1})]


@pytest.mark.parametrize("name, overrides, sizes", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_zoo_matches_torch(name: str, overrides: dict, sizes: dict, tmp_path: Path) -> None:
    err = compare(graph(name, **overrides), tmp_path, sizes=sizes)
    assert err <= 1e-4, f"{name}: max abs diff {err}"
