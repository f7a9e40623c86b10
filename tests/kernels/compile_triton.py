"""Compile every @triton.jit kernel of a generated package for a GPU (no GPU needed: Triton ships
ptxas). Run as a script, without TRITON_INTERPRET: python compile_triton.py PKG_DIR ARCH DTYPE."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

CONSTEXPRS = {  # representative block sizes per template (the autotuner's choices vary these)
    "elementwise": [{"BLOCK": 1024}],
    "conv": [{"BLOCK": 1024}],  # the epilogue after cuDNN: the elementwise template
    "gemm": [{"PRECISION": "ieee", "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8},
             {"PRECISION": "tf32", "BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 32, "GROUP_M": 8}],
    "rows": [{"BLOCK_N": 1024, "SINGLE": True}, {"BLOCK_N": 2048, "SINGLE": False}],
    "attention": [{"PRECISION": "ieee", "CAUSAL": True, "BLOCK_D": 64, "BLOCK_DV": 64, "BLOCK_M": 64,
                   "BLOCK_N": 64}],
}


def main(folder: str, arch: int, dtype: str) -> int:
    path = Path(folder)
    sys.path.insert(0, str(path.parent))
    kernels = importlib.import_module(f"{path.name}.kernels")
    count = 0
    start = time.time()
    for name in sorted(dir(kernels)):
        fn = getattr(kernels, name)
        if not name.endswith("_kernel") or not hasattr(fn, "arg_names"):
            continue
        kind = name.split("_")[1]
        consts = {p.name for p in fn.params if p.is_constexpr}
        for constexprs in CONSTEXPRS[kind]:
            if dtype == "fp32" and constexprs.get("PRECISION") == "tf32" and arch < 80:
                continue
            sig = {n: "constexpr" if n in consts else f"*{dtype}" if n.endswith("_ptr")
                   else "fp32" if n in ("eps", "scale") else "i32" for n in fn.arg_names}
            triton.compile(ASTSource(fn, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32))
            count += 1
    print(f"compiled {count} kernels for sm_{arch} ({dtype}) in {time.time() - start:.1f}s")
    return 0 if count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
