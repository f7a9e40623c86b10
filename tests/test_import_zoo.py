"""Coverage of `archc.import_module` over timm's families and Hugging Face GPT-2 (issue #19).

One model per timm family (its defining module), random weights (`pretrained=False`), BatchNorm
statistics randomized, a small input; each import is verified by the importer itself (the spec
builds, the state_dict loads with strict=True, outputs within 1e-5) and again here on another
batch size. A fixed sample runs by default; `ARCHC_FULL=1` runs every family (minutes; the ones that do not
round-trip yet are strict xfails naming their blocker). `python
tests/test_import_zoo.py` prints the per-family table recorded in docs/import.md.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pytest

import archc
from archc.errors import ArchError

torch = pytest.importorskip("torch")

# name -> create_model keywords and the example input's (C, H, W): one model per timm family.
FAMILIES: dict[str, dict[str, Any]] = {
    "resnet18": {}, "resnetv2_50": {}, "vit_tiny_patch16_224": {"img_size": 32}, "deit_tiny_patch16_224": {"img_size": 32},
    "convnext_atto": {}, "efficientnet_b0": {}, "mobilenetv3_small_050": {}, "regnetx_002": {}, "repvgg_a0": {},
    "densenet121": {}, "poolformer_s12": {}, "mixer_s16_224": {"img_size": 32},
    "swin_tiny_patch4_window7_224": {"img_size": 56}, "vgg11": {}, "dla34": {}, "dpn68": {}, "ghostnet_050": {},
    "hrnet_w18_small": {}, "inception_v3": {"size": 80}, "nf_resnet26": {}, "rexnet_100": {}, "selecsls42": {},
    "legacy_seresnet18": {}, "skresnet18": {}, "cspresnet50": {}, "levit_128s": {"size": 224},
    "pit_ti_224": {"img_size": 64}, "cait_xxs24_224": {"img_size": 32}, "convit_tiny": {"img_size": 32},
    "visformer_tiny": {"img_size": 64}, "xcit_nano_12_p16_224": {"img_size": 32},
    "eva02_tiny_patch14_224": {"img_size": 28}, "edgenext_xx_small": {}, "mobilevit_xxs": {}, "fastvit_t8": {},
    "res2net50_26w_4s": {}, "resnest14d": {}, "repvit_m0_9": {}, "ese_vovnet19b_dw": {}, "legacy_xception": {"size": 72},
    "tresnet_m": {}, "mambaout_femto": {}, "starnet_s1": {}, "hgnetv2_b0": {}, "efficientvit_b0": {},
    "tiny_vit_5m_224": {"size": 224},
}
SAMPLE = ["resnet18", "vit_tiny_patch16_224"]


def _randomized(module: Any, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return module.eval()


def build(timm: Any, name: str) -> tuple[Any, Any]:
    kwargs = dict(FAMILIES[name])
    size = kwargs.pop("size", kwargs.get("img_size", 64))
    torch.manual_seed(0)
    module = _randomized(timm.create_model(name, pretrained=False, num_classes=10, **kwargs))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return module, x


def import_one(timm: Any, name: str) -> tuple[str, str]:
    """(family, '' when it round-trips, else the importer's message)."""
    module, x = build(timm, name)
    family = timm.models._registry._model_to_module.get(name, type(module).__module__.removeprefix("timm.models."))
    try:
        archc.import_module(module, x, source=f"timm:{name}")
    except ArchError as err:
        return family, err.message.splitlines()[0]
    return family, ""


def _round_trip(module: Any, text: str, x: Any) -> None:
    from archc.api import build as build_ir
    from archc.elaborate import elaborate_text

    built = build_ir(elaborate_text(text, "imported.arch")).eval()
    built.load_state_dict(module.state_dict(), strict=True)
    g = torch.Generator().manual_seed(7)
    other = torch.randn(3, *x.shape[1:], generator=g) if x.is_floating_point() else torch.randint(0, 2, (3, *x.shape[1:]), generator=g)
    with torch.no_grad():
        for inp in (x, other):
            torch.testing.assert_close(built(inp), module(inp), rtol=1e-5, atol=1e-5)


def _check(timm: Any, name: str) -> None:
    module, x = build(timm, name)
    text = archc.import_module(module, x, source=f"timm:{name}")
    _round_trip(module, text, x)


@pytest.mark.parametrize("name", SAMPLE)
def test_sample_round_trips(timm: Any, name: str) -> None:
    _check(timm, name)


# What stops the families that do not round-trip yet (docs/import.md); strict: one that starts to
# round-trip fails here until it is moved out of this list and the table is measured again.
KNOWN_FAILING: dict[str, str] = {}  # family -> what stops it (a strict xfail); none left
FULL = pytest.mark.skipif(not os.environ.get("ARCHC_FULL"), reason="every timm family: set ARCHC_FULL=1 (minutes)")


@pytest.mark.slow
@FULL
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(raises=ArchError, strict=True, reason=KNOWN_FAILING[n]))
    if n in KNOWN_FAILING else n for n in FAMILIES if n not in SAMPLE])
def test_family_round_trips(timm: Any, name: str) -> None:
    _check(timm, name)


class _Logits(torch.nn.Module):
    """A Hugging Face causal LM as a module that returns its logits."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, tokens: Any) -> Any:
        return self.lm(tokens).logits


def test_gpt2_round_trips_with_its_blocks_in_a_stack(transformers: Any) -> None:
    """Hugging Face GPT-2 (a tiny config, random weights, untied head): its causal mask (built from
    sizes alone) becomes `causal=true`, its Conv1D layers blocks with `parameter`s named `weight`
    and `bias`, and its `h.0`, `h.1`, `h.2` one block in a stack."""
    config = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=100, n_positions=64,
                                     use_cache=False, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    module = _Logits(transformers.GPT2LMHeadModel(config)).eval()
    tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, tokens, source="gpt2")
    assert "    h = stack(3) { GPT2Block() }\n" in text and text.count("block GPT2Block ") == 1
    assert "causal=true" in text and "model _Logits (x: i64[B, 16]) -> [B, 16, 100]" in text
    _round_trip(module, text, tokens)


if __name__ == "__main__":  # the per-family table of docs/import.md
    sys.path.insert(0, "tests")
    import _timm_compat

    timm_module = _timm_compat.import_timm()
    names = sys.argv[1:] or list(FAMILIES)
    ok = 0
    for model_name in names:
        start = time.time()
        try:
            fam, why = import_one(timm_module, model_name)
        except Exception as err:  # noqa: BLE001  (a model timm cannot build here)
            fam, why = "?", f"TRACEBACK {type(err).__name__}: {err}"
        ok += not why
        print(f"| {fam} | `{model_name}` | {'yes' if not why else 'no'} | {why.replace('|', '/')} | {time.time() - start:.1f}",
              flush=True)
    print(f"{ok}/{len(names)} families round-trip")
