"""std_conv2d (Scaled Weight Standardization, Brock et al. 2021) against timm's ScaledStdConv2d,
and its import: a module of ScaledStdConv2d layers round-trips through `archc.import_module`."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import archc
from archc.api import build
from archc.elaborate import elaborate_text
from archc.errors import ArchError


def _spec(attrs: str) -> str:
    return f"""axis B
model M (x: [B, 4, 9, 9]) -> [B, 8, 5, 5] {{
    conv = std_conv2d(8, 3, {attrs})
    return conv(x)
}}"""


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.shape[1:] == (1, 1, 1) else 0.0))


@pytest.mark.parametrize("gamma,eps,groups", [(1.0, 1e-6, 1), (1.7, 1e-5, 2), (0.8, 1e-2, 4)])
def test_std_conv2d_matches_timm_scaled_std_conv2d(timm: Any, gamma: float, eps: float, groups: int) -> None:
    ref = timm.layers.ScaledStdConv2d(4, 8, 3, stride=2, padding=1, groups=groups, gamma=gamma, eps=eps).eval()
    _randomize(ref, 3)
    model = build(elaborate_text(_spec(f"stride=2, padding=1, groups={groups}, gamma={gamma}, eps={eps}"), "t.arch"))
    assert list(model.state_dict()) == ["conv.weight", "conv.bias", "conv.gain"]
    model.load_state_dict({f"conv.{k}": v for k, v in ref.state_dict().items()}, strict=True)
    x = torch.randn(3, 4, 9, 9, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x), rtol=1e-5, atol=1e-5)


def test_std_conv2d_counts_its_gain_and_the_conv_flops() -> None:
    graph = elaborate_text(_spec("stride=2, padding=1"), "t.arch")
    model = build(graph)
    assert sum(p.numel() for p in model.parameters()) == 8 * 4 * 9 + 8 + 8
    assert tuple(model.state_dict()["conv.gain"].shape) == (8, 1, 1, 1)


@pytest.mark.parametrize("attrs", ["gamma=0.0", "eps=-1e-5", "gamma=-2.0"])
def test_std_conv2d_bad_attribute_is_a_located_error(attrs: str) -> None:
    with pytest.raises(ArchError) as err:
        elaborate_text(_spec(attrs), "t.arch")
    assert "t.arch:3:" in str(err.value)


class _NF(torch.nn.Module):
    def __init__(self, timm: Any) -> None:
        super().__init__()
        self.stem = timm.layers.ScaledStdConv2d(3, 8, 3, stride=2, gamma=1.7, eps=1e-5)
        self.act = torch.nn.SiLU()
        self.proj = timm.layers.ScaledStdConv2d(8, 6, 1, bias=False, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.stem(x)))


def test_scaled_std_conv2d_imports_as_std_conv2d(timm: Any) -> None:
    module = _NF(timm).eval()
    _randomize(module, 11)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    assert "stem = std_conv2d(8, 3, stride=2, padding=1, gamma=1.7, eps=1e-05)" in text
    assert "proj = std_conv2d(6, 1, groups=2, bias=false)" in text
    built = build(elaborate_text(text, "imported.arch")).eval()
    built.load_state_dict(module.state_dict(), strict=True)
    other = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for inp in (x, other):
            torch.testing.assert_close(built(inp), module(inp), rtol=1e-5, atol=1e-5)


def test_weight_standardization_without_a_gain_stops_the_import(timm: Any) -> None:
    module = torch.nn.Sequential(timm.layers.StdConv2d(3, 4, 3)).eval()
    with pytest.raises(ArchError, match="not Scaled Weight Standardization with a gain"):
        archc.import_module(module, torch.randn(2, 3, 8, 8))
