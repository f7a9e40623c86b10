"""dit_tiny.arch starts as DiT's `initialize_weights` (facebookresearch/DiT, models.py) leaves a
model: the reference's own code run on a copy of the built model draws each parameter from the same
distribution (mean and std per parameter within statistical tolerance, the same zeros, the same
Xavier bound for the uniform ones), while the spec's own choice for the learned position table (DiT freezes a sine-cosine
table) stays N(0, 0.02^2)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from archc.backends.torch import build_module
from archc.elaborate import elaborate_file

SPEC = Path(__file__).resolve().parent.parent / "specs" / "examples" / "dit_tiny.arch"


def dit_initialize_weights(model: nn.Module, depth: int) -> None:
    """DiT's DiT.initialize_weights, as written there (less the frozen position table and the
    label embedding, which this model has not); `mlp[0]` is `get_submodule("mlp.0")` here."""
    def _basic_init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)
    model.apply(_basic_init)
    w = model.x_embedder.proj.weight.data
    nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
    nn.init.constant_(model.x_embedder.proj.bias, 0)
    nn.init.normal_(model.get_submodule("t_embedder.mlp.0").weight, std=0.02)
    nn.init.normal_(model.get_submodule("t_embedder.mlp.2").weight, std=0.02)
    for i in range(depth):
        layer = model.get_submodule(f"blocks.{i}.adaLN_modulation.1")
        nn.init.constant_(layer.weight, 0)
        nn.init.constant_(layer.bias, 0)
    for name in ("final_layer.adaLN_modulation.1", "final_layer.linear"):
        nn.init.constant_(model.get_submodule(name).weight, 0)
        nn.init.constant_(model.get_submodule(name).bias, 0)


def test_dit_init_is_the_references() -> None:
    depth = 2
    torch.manual_seed(0)
    ours = build_module(elaborate_file(SPEC, overrides={"depth": depth, "hidden": 96}))
    ref = copy.deepcopy(ours)
    torch.manual_seed(1)
    dit_initialize_weights(ref, depth)
    linears = {n for n, m in ours.named_modules() if isinstance(m, nn.Linear)}
    mine, theirs = dict(ours.named_parameters()), dict(ref.named_parameters())
    for name, t in mine.items():
        if t.dim() == 2 and name != "pos_embed":  # every matrix is a torch linear the reference reaches
            assert name.rpartition(".")[0] in linears, name
    checked = 0
    for name, a in mine.items():
        b = theirs[name]
        if name == "pos_embed":
            assert abs(a.std().item() - 0.02) < 0.002
            continue
        assert torch.equal(a == 0, b == 0) if (b == 0).all() else not (a == 0).all(), name
        if (b == 0).all():
            continue
        a64, b64, n = a.double().flatten(), b.double().flatten(), a.numel()
        spread = b64.std().item()
        assert abs(a64.mean().item() - b64.mean().item()) <= 6 * spread * math.sqrt(2 / n), name
        assert abs(a64.std().item() - spread) <= 6 * spread * math.sqrt(1 / n), name
        if "t_embedder" not in name:  # uniform: the same bound
            assert a.abs().max() <= b.abs().max() * 1.05 and b.abs().max() <= a.abs().max() * 1.05, name
        checked += 1
    assert checked == 3 + 4 * depth  # patch embedding, timestep MLP's two, and qkv/proj/fc1/fc2 per block


def test_xavier_bound_and_zeros() -> None:
    """The absolute facts: qkv's weight is U(-a, a) with a = sqrt(6 / (D + 3D)), the patch
    embedding's with fan_in = C * p * p and fan_out = D, and every block starts as the identity."""
    torch.manual_seed(0)
    model = build_module(elaborate_file(SPEC, overrides={"depth": 1, "hidden": 96}))
    qkv = model.get_submodule("blocks.0.attn.qkv").weight
    bound = math.sqrt(6 / (96 + 3 * 96))
    assert qkv.abs().max().item() <= bound and qkv.abs().max().item() > 0.95 * bound
    assert abs(qkv.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    proj = model.x_embedder.proj.weight
    bound = math.sqrt(6 / (4 * 2 * 2 + 96))
    assert proj.abs().max().item() <= bound and proj.abs().max().item() > 0.9 * bound
    for name in ("blocks.0.adaLN_modulation.1", "final_layer.linear", "final_layer.adaLN_modulation.1"):
        layer = model.get_submodule(name)
        assert not layer.weight.any() and not layer.bias.any()
    assert not model.get_submodule("blocks.0.attn.qkv").bias.any()
