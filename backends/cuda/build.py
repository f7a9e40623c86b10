"""Build kernels.cu (next to this file) into a shared library with nvcc, and load it with ctypes.

    python build.py            # compile (if needed) and print the library's path

The library is cached by the hash of the source and the flags, in $ARCHC_CUDA_CACHE (default
~/.cache/archc/cuda), so an unchanged model never recompiles. It holds code for sm_80 (A100) and
sm_90 (H100, H200), and PTX for compute_90 that newer GPUs compile when they load it.
$NVCC names the compiler (default: nvcc on PATH, then /usr/local/cuda/bin/nvcc).

Needs only the CUDA toolkit and the Python standard library (copied into each generated package).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARCHS = ("80", "90")
FLAGS = ["-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo",
         *[f for a in ARCHS for f in ("-gencode", f"arch=compute_{a},code=sm_{a}")],
         "-gencode", f"arch=compute_{ARCHS[-1]},code=compute_{ARCHS[-1]}"]


def nvcc() -> str:
    found = os.environ.get("NVCC") or shutil.which("nvcc")
    if found:
        return found
    for candidate in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if os.path.exists(candidate):
            return candidate
    raise RuntimeError("nvcc (the CUDA compiler) was not found: install the CUDA toolkit or set $NVCC")


def library_path(source: Path, flags: list[str]) -> Path:
    cache = Path(os.environ.get("ARCHC_CUDA_CACHE") or Path.home() / ".cache" / "archc" / "cuda")
    digest = hashlib.sha256(source.read_bytes() + b"\0" + " ".join(flags).encode()).hexdigest()[:16]
    return cache / f"lib{source.stem}_{digest}.so"


def build(source: Path = HERE / "kernels.cu", flags: list[str] | None = None) -> Path:
    """Compile `source` unless the cache already has it; returns the library's path."""
    flags = list(FLAGS if flags is None else flags)
    out = library_path(source, flags)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so")
    os.close(fd)
    try:
        result = subprocess.run([nvcc(), *flags, str(source), "-o", tmp], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"nvcc failed on {source}:\n{result.stderr}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load() -> ctypes.CDLL:
    return ctypes.CDLL(str(build()))


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "kernels.cu"))
