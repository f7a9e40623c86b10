"""The zoo specs against the models they reproduce, without running anything.

For each vision spec in specs/models/ and its timm model: the same parameter count, the same
state_dict keys (parameters and buffers; through archc.zoo.timm_to_archc, the identity for every
vision spec) with the same shapes, dtypes and trainable flags, and the
same output shape. For gpt2.arch the same against Hugging Face's GPT2LMHeadModel at full size,
through archc.zoo.hf_gpt2_to_archc. The reference models are built on the meta device (shapes
only, no memory, no initialization cost).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from archc import zoo
from archc.elaborate import elaborate_file
from archc.ir.graph import Graph

pytestmark = pytest.mark.slow  # builds reference models

VISION = ["resnet18", "resnet50", "vit_small_patch16_224", "convnext_tiny", "poolformer_s12", "repvgg_a0"]

# reference parameter counts (timm 1.0, Hugging Face transformers), written down so that a
# change on either side shows up as a number
PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "vit_small_patch16_224": 22_050_664,
    "convnext_tiny": 28_589_128,
    "poolformer_s12": 11_915_176,
    "repvgg_a0": 9_108_968,
    "gpt2": 124_439_808,
}

_DTYPES = {"f32": "torch.float32", "i64": "torch.int64"}


def _meta_timm(timm: ModuleType, name: str, **kwargs: Any) -> Any:
    import torch

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def _ir_entries(g: Graph) -> dict[str, tuple[tuple[int, ...], str, bool]]:
    return {k: (tuple(p.shape), _DTYPES[p.dtype], p.trainable) for k, p in g.params.items()}


def _timm_entries(name: str, module: Any) -> dict[str, tuple[tuple[int, ...], str, bool]]:
    """timm's state_dict through the key map: key -> (shape, dtype, trainable)."""
    trainable = set(zoo.timm_to_archc(name, dict(module.named_parameters())))
    sd = zoo.timm_to_archc(name, module.state_dict())
    return {k: (tuple(v.shape), str(v.dtype), k in trainable) for k, v in sd.items()}


def _diff(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    lines = [f"only in the spec: {k} {ours[k]}" for k in sorted(set(ours) - set(theirs))]
    lines += [f"only in the reference: {k} {theirs[k]}" for k in sorted(set(theirs) - set(ours))]
    lines += [f"differs: {k}: spec {ours[k]}, reference {theirs[k]}"
              for k in sorted(set(ours) & set(theirs)) if ours[k] != theirs[k]]
    return lines


@pytest.fixture(scope="module")
def graphs() -> dict[str, Graph]:
    return {}


def _graph(graphs: dict[str, Graph], name: str) -> Graph:
    if name not in graphs:
        graphs[name] = elaborate_file(zoo.spec_path(name))
    return graphs[name]


def test_zoo_has_exactly_the_listed_models() -> None:
    folder = zoo.spec_path("resnet18").parent
    assert sorted(p.stem for p in folder.glob("*.arch")) == sorted(zoo.MODELS)


@pytest.mark.parametrize("name", VISION)
def test_vision_spec_matches_timm(timm: ModuleType, graphs: dict[str, Graph], name: str) -> None:
    g = _graph(graphs, name)
    ref = _meta_timm(timm, name)
    ref_count = sum(p.numel() for p in ref.parameters())
    assert ref_count == PARAM_COUNTS[name]
    assert g.param_count() == ref_count

    theirs = _timm_entries(name, ref)
    assert _diff(_ir_entries(g), theirs) == []

    (out,) = g.outputs
    assert out.type.dtype == "f32"
    assert out.type.rank == 2
    assert not out.type.sizes[0].is_const  # the batch stays symbolic
    assert out.type.sizes[1] == ref.num_classes == 1000
    (inp,) = g.inputs
    assert [s.value for s in inp.type.sizes[1:]] == [3, 224, 224]


@pytest.mark.parametrize("name", VISION)
def test_vision_spec_other_image_size_and_classes(timm: ModuleType, name: str) -> None:
    """img_size and num_classes are model parameters; the ViT's position table follows img_size."""
    g = elaborate_file(zoo.spec_path(name), overrides={"img_size": 256, "num_classes": 10})
    kwargs: dict[str, Any] = {"num_classes": 10}
    if name.startswith("vit"):
        kwargs["img_size"] = 256
    ref = _meta_timm(timm, name, **kwargs)
    theirs = _timm_entries(name, ref)
    assert _diff(_ir_entries(g), theirs) == []
    assert g.inputs[0].type.sizes[2].value == 256
    assert g.outputs[0].type.sizes[1] == 10


def test_repvgg_keys_are_timms(timm: ModuleType, graphs: dict[str, Graph]) -> None:
    """RepVGG's identity-branch BatchNorm is `identity`, as in timm: no key map."""
    sd = _meta_timm(timm, "repvgg_a0").state_dict()
    assert "stages.0.1.identity.running_var" in _graph(graphs, "repvgg_a0").params
    assert set(_graph(graphs, "repvgg_a0").params) == set(sd)
    assert zoo.timm_to_archc("repvgg_a0", sd) == dict(sd) and zoo.archc_to_timm("repvgg_a0", sd) == dict(sd)


# ---- GPT-2 ---------------------------------------------------------------------------------------
def _hf_gpt2(transformers: ModuleType, meta: bool = True, **config: Any) -> Any:
    import torch

    if "vocab_size" in config:  # keep the special tokens inside a reduced vocabulary
        config = {"bos_token_id": 0, "eos_token_id": 0, **config}
    cfg = transformers.GPT2Config(**config)
    if not meta:
        return transformers.GPT2LMHeadModel(cfg)
    with torch.device("meta"):
        return transformers.GPT2LMHeadModel(cfg)


def test_gpt2_spec_matches_hf(transformers: ModuleType, graphs: dict[str, Graph]) -> None:
    g = _graph(graphs, "gpt2")
    ref = _hf_gpt2(transformers)
    assert ref.lm_head.weight is ref.transformer.wte.weight  # Hugging Face ties them
    ref_count = sum(p.numel() for p in ref.parameters())  # counts the tied tensor once
    assert ref_count == PARAM_COUNTS["gpt2"]
    assert g.param_count() == ref_count

    converted = zoo.hf_gpt2_to_archc(ref.state_dict())
    theirs = {k: (tuple(v.shape), str(v.dtype), True) for k, v in converted.items()}
    assert _diff(_ir_entries(g), theirs) == []
    # Conv1D [in, out] became [out, in]
    assert g.params["transformer.h.0.attn.c_attn.weight"].shape == (3 * 768, 768)
    assert g.params["transformer.h.0.mlp.c_fc.weight"].shape == (4 * 768, 768)

    (inp,), (out,) = g.inputs, g.outputs
    assert inp.type.dtype == "i64" and out.type.dtype == "f32"
    assert out.type.sizes[2] == 50257
    assert out.type.sizes[:2] == inp.type.sizes  # [B, T] stay symbolic and pass through


def test_gpt2_head_is_tied_to_the_token_embedding(graphs: dict[str, Graph]) -> None:
    g = _graph(graphs, "gpt2")
    users = [n.op for n in g.nodes if "transformer.wte.weight" in n.params.values()]
    assert sorted(users) == ["embedding", "linear"]
    assert "lm_head.weight" not in g.params


def test_gpt2_reduced_config_matches_hf(transformers: ModuleType) -> None:
    g = elaborate_file(zoo.spec_path("gpt2"), overrides={"depth": 2, "dim": 64, "heads": 4, "vocab": 100,
                                                         "max_len": 32})
    ref = _hf_gpt2(transformers, n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32)
    theirs = {k: (tuple(v.shape), str(v.dtype), True) for k, v in zoo.hf_gpt2_to_archc(ref.state_dict()).items()}
    assert _diff(_ir_entries(g), theirs) == []


def test_gpt2_converter(transformers: ModuleType) -> None:
    import torch

    ref = _hf_gpt2(transformers, meta=False, n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    sd = ref.state_dict()
    ours = zoo.hf_gpt2_to_archc(sd)
    assert "lm_head.weight" not in ours
    assert torch.equal(ours["transformer.h.0.attn.c_attn.weight"], sd["transformer.h.0.attn.c_attn.weight"].t())
    assert torch.equal(ours["transformer.h.0.ln_1.weight"], sd["transformer.h.0.ln_1.weight"])
    back = zoo.archc_to_hf_gpt2(ours)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # a bare GPT2Model checkpoint (no `transformer.` prefix) and old mask buffers are accepted
    bare = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 16, 16)
    assert set(zoo.hf_gpt2_to_archc(bare)) == set(ours)
    # an untied head does not fit the spec
    untied = dict(sd, **{"lm_head.weight": torch.randn_like(sd["lm_head.weight"])})
    with pytest.raises(ValueError, match="ties"):
        zoo.hf_gpt2_to_archc(untied)
