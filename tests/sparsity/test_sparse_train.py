"""A sparse weight computes with `weight * weight_mask` (#16): the masks hold their patterns from
construction, survive state_dict round trips and optimizer steps, pruned weights get no gradient,
and the module tree, fx and torch.compile agree."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from archc import sparsity
from archc.backends.fx import build_graph_module
from archc.backends.torch import build_module, emit_python
from archc.elaborate import elaborate_text

SPEC = """axis B, D
block Mlp() (x: [B, D]) -> [B, D] {
    return x >> linear(4 * D) >> gelu >> linear(D)
}
model M (x: [B, 64]) -> [B, 64] {
    @sparse("2:4") y = Mlp()(x)
    @sparse(0.75) z = linear(y, 64)
    @sparse(block=[16, 16], density=0.25) w = linear(z, 64)
    return w
}
"""
CONV = """axis B, H, W
model C (x: [B, 8, H, W]) -> [B, 16, H, W] {
    @sparse("2:4") y = conv2d(x, 16, 3, padding=1)
    return y
}
"""


@pytest.fixture(scope="module")
def g():
    return elaborate_text(SPEC, file="m.arch")


def _model(g, seed: int = 0):
    torch.manual_seed(seed)
    return build_module(g)


def test_masks_hold_their_patterns_from_construction(g) -> None:
    m = _model(g)
    sparsity.check(m, g)
    w = m.mlp.linear.weight.detach()
    mask = m.mlp.linear.weight_mask
    assert mask.dtype == torch.bool
    groups = mask.reshape(-1, 4)
    assert (groups.sum(dim=1) == 2).all()
    # the kept two are the two largest magnitudes of each group
    kept = w.abs().reshape(-1, 4).masked_fill(~groups, float("inf")).min(dim=1).values
    dropped = w.abs().reshape(-1, 4).masked_fill(groups, -1).max(dim=1).values
    assert (kept >= dropped).all()
    assert int(m.linear.weight_mask.sum()) == 1024  # 25% of 64x64
    tiles = m.linear_1.weight_mask.reshape(4, 16, 4, 16)
    assert (tiles.all(dim=3).all(dim=1) == tiles.any(dim=3).any(dim=1)).all()
    assert int(tiles.all(dim=3).all(dim=1).sum()) == 4


def test_forward_is_the_linear_of_the_masked_weight(g) -> None:
    m = _model(g).eval()
    x = torch.randn(5, 64)
    mlp = m.mlp
    h = F.gelu(F.linear(x, mlp.linear.weight * mlp.linear.weight_mask, mlp.linear.bias))
    y = F.linear(h, mlp.linear_1.weight * mlp.linear_1.weight_mask, mlp.linear_1.bias)
    y = F.linear(y, m.linear.weight * m.linear.weight_mask, m.linear.bias)
    y = F.linear(y, m.linear_1.weight * m.linear_1.weight_mask, m.linear_1.bias)
    assert_close(m(x), y, rtol=1e-6, atol=1e-6)


def test_the_module_tree_equals_the_flat_fx_graph(g) -> None:
    m = _model(g)
    flat = build_graph_module(g)
    flat.load_state_dict(m.state_dict())
    x = torch.randn(4, 64)
    assert torch.equal(m(x), flat(x))


def test_pruned_weights_get_no_gradient_and_training_keeps_the_pattern(g) -> None:
    m = _model(g)
    masks = {k: v.clone() for k, v in m.state_dict().items() if k.endswith("weight_mask")}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 64, generator=gen)
        loss = m(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for name, mask in masks.items():
            grad = m.get_parameter(name.removesuffix("_mask")).grad
            assert not grad[~mask].any() and grad[mask].any()
        opt.step()
    after = {k: v for k, v in m.state_dict().items() if k.endswith("weight_mask")}
    assert all(torch.equal(masks[k], after[k]) for k in masks)  # the optimizer never touches a mask
    sparsity.check(m, g)


def test_masks_survive_a_state_dict_round_trip(g) -> None:
    m = _model(g, seed=0)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    other = _model(g, seed=1)
    assert not torch.equal(other.mlp.linear.weight_mask, m.mlp.linear.weight_mask)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(other.mlp.linear.weight_mask, m.mlp.linear.weight_mask)
    x = torch.randn(3, 64)
    assert torch.equal(other(x), m(x))


def test_conv_masks_group_along_input_channels() -> None:
    g = elaborate_text(CONV, file="c.arch")
    torch.manual_seed(0)
    m = build_module(g)
    mask = m.conv2d.weight_mask  # [16, 8, 3, 3]
    assert (mask.sum(dim=1) == 4).all()  # 2 of each 4 input channels, at every output and position
    assert (mask.reshape(16, 2, 4, 3, 3).sum(dim=2) == 2).all()
    x = torch.randn(2, 8, 5, 5)
    want = F.conv2d(x, m.conv2d.weight * mask, m.conv2d.bias, padding=1)
    assert_close(m(x), want, rtol=1e-6, atol=1e-6)


def test_the_generated_file_carries_the_mask_functions(g) -> None:
    text = emit_python(g)
    assert "def nm_mask(" in text and "class MaskedLinear(_Masked, nn.Linear):" in text
    assert "self.linear = MaskedLinear(64, 256, bias=True)" in text
    assert "self.linear.weight_mask.copy_(nm_mask(self.linear.weight, 2.0, 4.0))" in text
    plain = elaborate_text(SPEC.replace('@sparse("2:4") ', "").replace("@sparse(0.75) ", "").replace(
        "@sparse(block=[16, 16], density=0.25) ", ""), file="m.arch")
    assert "def nm_mask(" not in emit_python(plain)


def test_torch_compile_runs_the_sparse_model(g) -> None:
    m = _model(g).eval()
    x = torch.randn(4, 64)
    compiled = torch.compile(m, backend="aot_eager")
    assert_close(compiled(x), m(x), rtol=1e-6, atol=1e-6)


def test_sparse_layers_are_torch_layers_that_peft_can_wrap(g) -> None:
    import peft  # after conftest.py's torchvision workaround (peft imports transformers)

    m = _model(g)
    assert isinstance(m.mlp.linear, torch.nn.Linear) and type(m.mlp.linear).__name__ == "MaskedLinear"
    x = torch.randn(4, 64)
    want = m(x)
    lora = peft.get_peft_model(m, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["linear", "linear_1"]))
    assert_close(lora(x), want, rtol=1e-6, atol=1e-6)  # LoRA's B starts at zero: the sparse model's output
    lora(x).pow(2).mean().backward()
    base = m.mlp.linear
    assert base.weight.grad is None  # frozen; the adapters train
    assert any(p.grad is not None for n, p in lora.named_parameters() if "lora_" in n)
