"""A spec that checks must build and run (#11): cases the fuzzer's run step found (a mutant that
checked, then failed when built), each now a located error at check time."""

from __future__ import annotations

import pytest
import torch

from archc.api import build
from archc.elaborate import elaborate_text
from archc.errors import ArchError

SPEC = "axis B\nmodel M (x: [B, 4]) -> [B, 4] {{\n    p = parameter([1, 4], init={init})\n    return x + p\n}}\n"


@pytest.mark.parametrize("init, message", [
    ("normal(-1)", "initializer 'normal': its std must be >= 0"),
    ("normal(0 - 5)", "initializer 'normal': its std must be >= 0"),
    ("trunc_normal(-0.02)", "initializer 'trunc_normal': its std must be >= 0"),
    ("trunc_normal(0.02, 2.0, -2.0)", "its bounds must have a < b"),
    ("trunc_normal(0)", "initializer 'trunc_normal': its std must be > 0"),
    ("uniform(-1)", "initializer 'uniform': its bound must be >= 0"),
])
def test_an_initializer_torch_refuses_is_a_located_error(init: str, message: str) -> None:
    """`normal(std=-1)` checked, then torch's normal_ refused it when the module was built."""
    with pytest.raises(ArchError, match=message) as info:
        elaborate_text(SPEC.format(init=init), "init.arch")
    assert info.value.span is not None and info.value.span.line == 3


@pytest.mark.parametrize("init", ["normal(0.0)", "normal(0.02)", "trunc_normal(0.02, -2.0, 2.0)", "uniform(0.0)"])
def test_the_edge_values_build_and_run(init: str) -> None:
    model = build(elaborate_text(SPEC.format(init=init), "init.arch"))
    (p,) = model.state_dict().values()
    assert p.shape == (1, 4) and bool(torch.isfinite(p).all())
    if init in ("normal(0.0)", "uniform(0.0)"):
        assert not p.any()
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), x + p, rtol=0, atol=0)


@pytest.mark.parametrize("spec, line", [
    ("axis B\nmodel M (x: [B, 0, 8, 8]) -> [B, 4, 8, 8] {\n    return conv2d(x, 4, 3, padding=1)\n}\n", 2),
    ("axis B\nmodel M (x: [B, 0]) -> [B, 0] {\n    return relu(x)\n}\n", 2),
])
def test_an_axis_of_size_zero_is_a_located_error(spec: str, line: int) -> None:
    """An input declared [B, 0, H, W] (a mutant of ConvNeXt's 3 channels) checked, then torch's
    layernorm refused the empty tensor the stem made of it."""
    with pytest.raises(ArchError, match="has an axis of size 0") as info:
        elaborate_text(spec, "zero.arch")
    assert info.value.span is not None and info.value.span.line == line
