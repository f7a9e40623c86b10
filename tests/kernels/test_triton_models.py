"""The zoo's ViT, GPT-2, ResNet-18 and Llama as Triton packages, run by Triton's CPU interpreter, match
the torch target (fp32, within the harness's TOLERANCE)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("triton")

from kernel_harness import FULL, compare, graph  # noqa: E402

CASES = [("vit", {}, {"B": 2}), ("gpt2", {}, {"B": 2, "T": 13}), ("resnet18", {}, {"B": 2}),
         ("llama", {}, {"B": 2, "T": 13})]  # rotary tables (sin, cos, pow), grouped-query attention in torch
if FULL:
    CASES += [("vit", {"img_size": 48, "patch": 16, "D": 96, "heads": 3}, {"B": 3}),
              ("gpt2", {"dim": 96, "heads": 3, "max_len": 80}, {"B": 1, "T": 77}),
              ("resnet18", {"img_size": 40, "num_classes": 7}, {"B": 1})]


@pytest.mark.parametrize("name, overrides, sizes", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_zoo_matches_torch(name: str, overrides: dict, sizes: dict, tmp_path: Path) -> None:
    compare(graph(name, **overrides), tmp_path, sizes=sizes)


COMPILE = [("gpt2", 90, "fp16"), ("resnet18", 80, "fp32")]
ONE_LAYER = {"gpt2": {"depth": 1}, "vit": {"depth": 1}, "resnet18": {"depths": [1, 1, 1, 1]}}
if FULL:
    COMPILE += [(n, a, d) for n in ("gpt2", "vit", "resnet18") for a in (80, 90) for d in ("fp32", "fp16", "bf16")
                if (n, a, d) not in COMPILE]


@pytest.mark.parametrize("name, arch, dtype", COMPILE)
def test_zoo_kernels_compile_for_gpu(name: str, arch: int, dtype: str, tmp_path: Path) -> None:
    """Each generated kernel compiles to a cubin for sm_80 / sm_90 (Triton's own ptxas; no GPU):
    what the interpreter does not check (types of loop-carried values, constexpr branches, layouts)."""
    import os
    import subprocess
    import sys

    from archc.backends.triton.emit import package

    folder = tmp_path / f"pkg_{name}"
    folder.mkdir()
    for file, text in package(graph(name, **ONE_LAYER[name])).items():
        (folder / file).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "compile_triton.py"), str(folder), str(arch),
                          dtype], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
