"""Numerical parity of the compiled zoo specs with the models they reproduce (eval mode, fp32).

Each test builds the reference model (timm, or Hugging Face GPT-2), randomizes what its
initialization leaves trivial (norm gains and biases set to 1 and 0, LayerScale gains of 1e-6,
BatchNorm running statistics), loads its state_dict into `archc.compile(spec)` with strict=True
(through archc.zoo's key maps) and compares the outputs on random inputs: max abs diff <= 1e-5.

BatchNorm statistics are first measured on a random batch (so activations stay of order one
through 50 layers and an absolute tolerance means something), then perturbed at random.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from archc import zoo

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # runs reference models

TOL = 1e-5


def _compile(name: str, **params: Any) -> Any:
    try:
        from archc.api import compile as compile_spec
    except ImportError:
        pytest.skip("archc.compile (the torch backend) is not available")
    return compile_spec(zoo.spec_path(name), **params)


def randomize(model: Any, image_size: int = 224, seed: int = 0) -> None:
    """Give every 1-D parameter (norm gains and biases, conv and linear biases, LayerScale gains)
    and the class/position tokens random values, then set BatchNorm running statistics from one
    random batch and perturb them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gamma", "scale"):  # LayerScale: large enough that the branches count
                p.copy_(torch.rand(p.shape, generator=g) * 0.2 + 0.1)
            elif p.dim() == 1 and leaf == "weight":
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.75)
            elif p.dim() == 1 or leaf in ("cls_token", "pos_embed"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if bns:
            for bn in bns:
                bn.momentum = 1.0  # running statistics := this batch's
            model.train()
            model(torch.randn(2, 3, image_size, image_size, generator=g))
            for bn in bns:
                bn.momentum = 0.1
                bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=g) * 0.1 * bn.running_var.sqrt())
                bn.running_var.mul_(torch.rand(bn.running_var.shape, generator=g) * 0.4 + 0.8)
    model.eval()


def _max_diff(a: Any, b: Any) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize(("name", "batch"), [
    ("resnet18", 2), ("resnet50", 1), ("vit_small_patch16_224", 2), ("convnext_tiny", 1),
    ("poolformer_s12", 2), ("repvgg_a0", 2),
])
def test_vision_model_matches_timm(timm: ModuleType, name: str, batch: int) -> None:
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False)
    randomize(ref)
    model = _compile(name).eval()
    model.load_state_dict(zoo.timm_to_archc(name, ref.state_dict()), strict=True)
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert expected.shape == (batch, 1000)
    assert expected.abs().max().item() > 0.1  # not a trivially small output
    assert _max_diff(got, expected) <= TOL


def test_vit_other_image_size_matches_timm(timm: ModuleType) -> None:
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=160, num_classes=10)
    randomize(ref)
    model = _compile("vit_small_patch16_224", img_size=160, num_classes=10).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert _max_diff(model(x), ref(x)) <= TOL


# ---- GPT-2 ---------------------------------------------------------------------------------------
def test_gpt2_logits_match_hf(transformers: ModuleType) -> None:
    """GPT-2 small's width, heads and vocabulary, two blocks (depth is a model parameter)."""
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2))
    randomize(ref)
    model = _compile("gpt2", depth=2).eval()
    model.load_state_dict(zoo.hf_gpt2_to_archc(ref.state_dict()), strict=True)
    tokens = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        expected = ref(tokens).logits
        got = model(tokens)
    assert expected.shape == (2, 24, 50257)
    assert _max_diff(got, expected) <= TOL
    # the head is the embedding: a change to the row of a token not in the input changes that
    # token's logit only
    unused = next(i for i in range(50257) if i not in set(tokens.flatten().tolist()))
    with torch.no_grad():
        model.state_dict()["transformer.wte.weight"][unused] += 1.0
        changed = model(tokens) - got
    assert changed[..., unused].abs().min().item() > 1e-3
    changed[..., unused] = 0
    assert changed.abs().max().item() == 0
    back = zoo.archc_to_hf_gpt2(model.state_dict())
    assert torch.equal(back["lm_head.weight"], back["transformer.wte.weight"])


def test_gpt2_full_size_module(transformers: ModuleType) -> None:
    """Full-size GPT-2 builds with Hugging Face's parameter count (the tie holds in the module)
    and its state_dict (converted) loads strictly; nothing is run."""
    model = _compile("gpt2")
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    with torch.device("meta"):
        ref = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in zoo.hf_gpt2_to_archc(ref.state_dict()).items()}
    assert ours == theirs
