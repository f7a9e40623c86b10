"""The CUDA target's sources for the zoo compile with nvcc for sm_80 and sm_90 (no GPU needed),
and the package's build script caches the library by the hash of source and flags. On a GPU
(ARCHC_TEST_DEVICE=cuda, bench/gpu_check.sh) the packages also run and equal the torch target."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from archc.backends.cuda.emit import package
from kernel_harness import DEVICE, compare, graph, small

NVCC = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc")
                                     if Path(p).exists()), None)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed on this machine")


def _write(g, folder: Path) -> Path:  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in package(g).items():
        (folder / name).write_text(text)
    return folder


def test_sources_are_plain_cuda() -> None:
    cu = package(graph("gpt2"))["kernels.cu"]
    includes = [line for line in cu.splitlines() if line.startswith("#include")]
    assert includes == ["#include <cuda_runtime.h>", "#include <cuda_fp16.h>", "#include <cuda_bf16.h>",
                        "#include <math.h>", "#include <stdint.h>"]
    assert 'extern "C" int r2_rows(int dtype, const void* v1_ptr' in cu
    assert "cudaStream_t stream" in cu


@needs_nvcc
@pytest.mark.parametrize("name", ["vit", "gpt2", "resnet18"])
def test_zoo_compiles_for_sm80_and_sm90(name: str, tmp_path: Path) -> None:
    folder = _write(graph(name), tmp_path / name)
    flags = ["-shared", "-Xcompiler", "-fPIC", "-std=c++17", "-gencode", "arch=compute_80,code=sm_80",
             "-gencode", "arch=compute_90,code=sm_90"]
    out = subprocess.run([NVCC, *flags, str(folder / "kernels.cu"), "-o", str(tmp_path / "lib.so")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr, out.stderr
    symbols = subprocess.run(["nm", "-D", str(tmp_path / "lib.so")], capture_output=True, text=True).stdout
    launchers = [line.split()[-1] for line in symbols.splitlines() if " T r" in line]
    assert launchers and all(n.startswith("r") for n in launchers)


@needs_nvcc
def test_build_script_caches_by_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _write(small("Rows"), tmp_path / "pkg")
    monkeypatch.setenv("ARCHC_CUDA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NVCC", NVCC or "")
    spec = importlib.util.spec_from_file_location("archc_cuda_build", folder / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    flags = ["-shared", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_80,code=sm_80"]  # one arch: quicker
    first = build.build(folder / "kernels.cu", flags)
    assert first.exists() and first.parent == tmp_path / "cache"
    stamp = first.stat().st_mtime_ns
    assert build.build(folder / "kernels.cu", flags) == first and first.stat().st_mtime_ns == stamp  # cached
    assert build.library_path(folder / "kernels.cu", flags + ["-O1"]) != first  # flags are in the key
    out = subprocess.run([sys.executable, str(folder / "build.py"), "--help"], capture_output=True, text=True,
                         env={"ARCHC_CUDA_CACHE": str(tmp_path / "cache2"), "NVCC": NVCC or "", "PATH": ""})
    assert out.returncode != 0 or out.stdout  # runs as a script (a bad path argument fails cleanly)


@needs_nvcc
@pytest.mark.skipif(DEVICE != "cuda", reason="runs the CUDA package: needs ARCHC_TEST_DEVICE=cuda and a GPU")
@pytest.mark.parametrize("name, sizes", [("gpt2", {"B": 2, "T": 13}), ("resnet18", {"B": 2}), ("vit", {"B": 2})])
def test_zoo_runs_on_the_gpu(name: str, sizes: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHC_CUDA_CACHE", str(tmp_path / "cache"))
    compare(graph(name), tmp_path, sizes=sizes, target="cuda")
