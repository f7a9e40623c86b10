"""The reference libraries (timm, transformers) import and run despite the torchvision mismatch."""

from __future__ import annotations

from types import ModuleType

import pytest

torch = pytest.importorskip("torch")


def test_timm_resnet18_forward(timm: ModuleType) -> None:
    model = timm.create_model("resnet18", pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)


def test_transformers_gpt2_forward(transformers: ModuleType) -> None:
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        logits = model(torch.randint(0, 128, (1, 8))).logits
    assert logits.shape == (1, 8, 128)
