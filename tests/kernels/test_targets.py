"""`archc build --target triton|cuda`: the package files, --explain, the autotune cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archc.cli import main
from kernel_harness import SMALL, ZOO


def test_build_writes_packages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, _ = ZOO["gpt2"]
    sets = ["--set", "vocab=100", "--set", "dim=64", "--set", "depth=1", "--set", "heads=2", "--set", "max_len=32"]
    assert main(["build", str(spec), *sets, "--target", "triton", "-o", str(tmp_path / "tr")]) == 0
    assert sorted(p.name for p in (tmp_path / "tr").iterdir() if p.name != ".archc-files") == [
        "__init__.py", "kernels.py", "model.py", "runtime.py", "torch_model.py"]
    kernels = (tmp_path / "tr" / "kernels.py").read_text()
    assert "@triton.jit\ndef r8_gemm_kernel(" in kernels
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if ">> c_proj >> dropout(pdrop)" in text)
    assert "# r8_gemm: linear -> dropout -> add" in kernels and f"gpt2.arch:{line}" in kernels  # the spec line
    assert main(["build", str(spec), *sets, "--target", "cuda", "-o", str(tmp_path / "cu")]) == 0
    assert sorted(p.name for p in (tmp_path / "cu").iterdir() if p.name != ".archc-files") == [
        "__init__.py", "build.py", "kernels.cu", "kernels.py", "model.py", "torch_model.py"]


def test_explain(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(SMALL), "--model", "Attn", "--target", "triton", "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert lines[0].startswith("r0_torch") and "library F.linear (cuBLAS)" in lines[0]
    assert "generated FlashAttention-style kernel" in lines[3]
    assert "generated Triton GEMM + epilogue" in lines[5]
    assert main(["build", str(SMALL), "--model", "Attn", "--target", "cuda", "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "library F.scaled_dot_product_attention" in lines[3] and "library linear (cuBLAS) + generated epilogue" in lines[5]


def test_kernel_targets_need_a_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(SMALL), "--model", "Ew", "--target", "triton"]) == 1
    assert "give the folder with -o OUT/" in capsys.readouterr().err


def test_tune_cache_roundtrip(tmp_path: Path) -> None:
    triton = pytest.importorskip("triton")
    from archc.backends.triton import runtime

    cache = runtime.TuneCache(tmp_path / "tune.json")
    key = "NVIDIA H100 80GB HBM3|r8_gemm_kernel@abc|8192,3072,768,torch.float16"
    assert cache.get(key) is None
    cache.put(key, triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64}, num_warps=8, num_stages=3))
    again = runtime.TuneCache(tmp_path / "tune.json").get(key)
    assert again is not None and again.kwargs == {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64}
    assert (again.num_warps, again.num_stages) == (8, 3)
    assert list(json.loads((tmp_path / "tune.json").read_text())) == [key]


def test_row_configs_fit_the_row() -> None:
    pytest.importorskip("triton")
    from archc.backends.triton import runtime

    single = runtime.prune_rows(runtime.ROW_CONFIGS, {"N": 768, "SINGLE": True})
    assert {c.kwargs["BLOCK_N"] for c in single} == {1024} and max(c.num_warps for c in single) <= 32
    chunked = runtime.prune_rows(runtime.ROW_CONFIGS, {"N": 50257, "SINGLE": False})
    assert {c.kwargs["BLOCK_N"] for c in chunked} == set(runtime.ROW_CHUNKS)
    assert runtime.bcast((2, 17, 64), 1, 3) == (1, 17 * 64) and runtime.bcast((2, 8, 5, 5), 1, 2) == (25, 8)


def test_default_configs_are_kernel_configs() -> None:
    """Without ARCHC_AUTOTUNE=1 a launch takes the rule-of-thumb config: one of the kernel's own
    configs (so a tuned choice and the default are interchangeable in the cache), and for rows one
    that the pruning keeps."""
    pytest.importorskip("triton")
    import torch

    from archc.backends.triton import runtime

    def signature(c):  # type: ignore[no-untyped-def]
        return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages

    gemm = {signature(c) for c in runtime.GEMM_CONFIGS}
    for m, n, dtype in [(1, 768, torch.float16), (8192, 3072, torch.float16), (8192, 3072, torch.float32),
                        (4096, 64, torch.bfloat16), (100, 100, torch.bfloat16)]:
        assert signature(runtime.gemm_default((m, n, 768, dtype))) in gemm
    assert runtime.gemm_default((8192, 3072, 768, torch.float16)).kwargs["BLOCK_K"] == 64
    assert runtime.gemm_default((8, 3072, 768, torch.float16)).kwargs["BLOCK_M"] == 32
    for n in (1, 7, 768, 1025, 16384, 16385, 50257):
        single = n <= runtime.MAX_SINGLE_ROW
        config = runtime.row_default((n, torch.float32))
        kept = runtime.prune_rows(runtime.ROW_CONFIGS, {"N": n, "SINGLE": single})
        assert signature(config) in {signature(c) for c in kept}, n
    attention = runtime.attention_default((128, 128, 64, 64, torch.float16))
    assert signature(attention) in {signature(c) for c in runtime.ATTENTION_CONFIGS}


def test_autotuning_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    from archc.backends.triton import runtime

    monkeypatch.delenv("ARCHC_AUTOTUNE", raising=False)
    assert not runtime.autotuning()
    monkeypatch.setenv("ARCHC_AUTOTUNE", "1")
    assert runtime.autotuning()
