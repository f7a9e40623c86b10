"""Each kernel template under Triton's CPU interpreter: masked tails (sizes 1, 7, 1000, 1025, not
multiples of any block), rows that take the chunked path, causal and full attention with odd
lengths, non-contiguous inputs, and fp16 / bf16 (the interpreter runs both; the kernels
accumulate in fp32, so they are compared with the torch target at a dtype-sized tolerance)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from kernel_harness import DEVICE, FULL, TOLERANCE, build_package, compare, small  # noqa: E402

SIZES = [1, 7, 1000, 1025]
DTYPES = list(TOLERANCE)


@pytest.mark.parametrize("n", SIZES)
def test_elementwise_tails(n: int, tmp_path: Path) -> None:
    compare(small("Ew", N=n), tmp_path, sizes={"B": 3})


@pytest.mark.parametrize("n", SIZES)
def test_rows_tails(n: int, tmp_path: Path) -> None:
    compare(small("Rows", N=n), tmp_path, sizes={"B": 3})


@pytest.mark.parametrize("n", [1000, 1025] if not FULL else SIZES + [4097])
def test_rows_chunked(n: int, tmp_path: Path) -> None:
    """Rows longer than MAX_SINGLE_ROW are read in chunks (256 under the interpreter), once a pass."""
    pkg = build_package(small("Rows", N=n), "triton", tmp_path)
    pkg.kernels.rt.MAX_SINGLE_ROW = 64
    try:
        compare(small("Rows", N=n), tmp_path, sizes={"B": 2})
    finally:
        pkg.kernels.rt.MAX_SINGLE_ROW = 16384


@pytest.mark.parametrize("t, causal", [(1, True), (7, True), (33, False)] + ([(64, True), (65, False)] if FULL else []))
def test_gemm_and_attention_tails(t: int, causal: bool, tmp_path: Path) -> None:
    compare(small("Attn", T=t, causal=causal, heads=2, d=12), tmp_path, sizes={"B": 2})


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("model", ["Ew", "Rows", "Attn"])
def test_half_precision(model: str, dtype: torch.dtype, tmp_path: Path) -> None:
    if model == "Attn" and dtype == torch.bfloat16:
        pytest.skip("Triton's CPU interpreter computes tl.dot on bf16 from the raw bits (off by 1e10, "
                    "triton 3.9); bf16 elementwise and row kernels are tested, bf16 GEMM/attention need a GPU")
    compare(small(model), tmp_path, dtype=dtype, sizes={"B": 3})


def test_non_contiguous_inputs(tmp_path: Path) -> None:
    g = small("Ew", N=7)
    pkg = build_package(g, "triton", tmp_path)
    model = pkg.Ew().eval().to(DEVICE)
    x = torch.randn(7, 3, device=DEVICE).t()  # [3, 7], transposed strides
    y = torch.randn(3, 14, device=DEVICE)[:, ::2]  # every other column
    assert not x.is_contiguous() and not y.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), super(type(model), model).forward(x, y), rtol=1e-5, atol=1e-6)


def test_training_mode_runs_torch(tmp_path: Path) -> None:
    """The kernels are forward-only: training mode (and autograd) take the torch forward."""
    pkg = build_package(small("Ew", N=7), "triton", tmp_path)
    model = pkg.Ew()
    x, y = torch.randn(2, 7, requires_grad=True), torch.randn(2, 7)
    model(x, y).sum().backward()
    assert x.grad is not None
