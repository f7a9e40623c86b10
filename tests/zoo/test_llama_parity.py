"""llama.arch against Hugging Face's LlamaForCausalLM (eval, fp32), built from the same config.

Tiny configs (hidden 64, 2 layers, 4 heads, 2 key/value heads, vocabulary 128) run in seconds:
the same parameter count, the state_dict loads with strict=True (as it is for an untied head;
less the tied `lm_head.weight`, through archc.zoo.hf_llama_to_archc), the logits agree within
rtol = atol = 1e-5, and `archc summary`'s FLOPs are what FlopCounterMode counts on the built
model. The full-size default (SmolLM-135M's config) is compared on the meta device.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from archc import zoo

torch = pytest.importorskip("torch")

TINY = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5}

CONFIGS = {
    "untied": {**TINY, "tie_word_embeddings": False},
    "tied": {**TINY, "tie_word_embeddings": True},
    # Llama-3-like: one key/value head per 4 query heads, theta 500000, a head size of its own
    "gqa4_headdim": {**TINY, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16,
                     "rope_theta": 500000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "mha_bias": {**TINY, "num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True,
                 "tie_word_embeddings": True},
}


def _reference(transformers: ModuleType, config: dict[str, Any], seed: int = 0) -> Any:
    """A LlamaForCausalLM with random weights, norm gains and biases randomized too (its own
    init leaves them at 1 and 0, which would hide a swapped or missing one)."""
    torch.manual_seed(seed)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5 if name.endswith("norm.weight")
                        else torch.randn(p.shape, generator=g) * 0.1)
    return ref


def _compile(ref: Any) -> Any:
    from archc.api import compile as compile_spec

    return compile_spec(zoo.spec_path("llama"), **zoo.hf_llama_params(ref.config.to_dict())).eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_llama_logits_match_hf(transformers: ModuleType, name: str) -> None:
    config = CONFIGS[name]
    ref = _reference(transformers, config)
    model = _compile(ref)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    sd = ref.state_dict()
    ours = set(model.state_dict())
    if config["tie_word_embeddings"]:
        assert ref.lm_head.weight is ref.model.embed_tokens.weight
        assert ours == set(sd) - {"lm_head.weight"}
    else:
        assert ours == set(sd)  # every key as Hugging Face names it, nothing to map
    model.load_state_dict(zoo.hf_llama_to_archc(sd), strict=True)
    tokens = torch.randint(0, config["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(tokens).logits
        got = model(tokens)
    assert expected.shape == (2, 13, config["vocab_size"])
    assert expected.abs().max().item() > 0.1  # not a trivially small output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    back = zoo.archc_to_hf_llama(model.state_dict())
    assert set(back) == set(sd)


def test_llama_rotary_tables_follow_the_sequence_length(transformers: ModuleType) -> None:
    """The rotary tables are computed for the input's length: one model serves T = 1 and T = 40,
    and the order of the tokens counts."""
    ref = _reference(transformers, CONFIGS["untied"])
    model = _compile(ref)
    model.load_state_dict(ref.state_dict(), strict=True)
    for length in (1, 40):
        tokens = torch.randint(0, 128, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            torch.testing.assert_close(model(tokens), ref(tokens).logits, rtol=1e-5, atol=1e-5)
    # without positions, causal attention cannot tell the order of the earlier tokens: with RoPE
    # swapping two of them changes the last token's logits
    with torch.no_grad():
        a, b = model(torch.tensor([[3, 9, 5]])), model(torch.tensor([[9, 3, 5]]))
    assert (a[0, -1] - b[0, -1]).abs().max().item() > 1e-3


def test_llama_summary_flops_are_what_torch_counts(transformers: ModuleType) -> None:
    import torch.utils.flop_counter as fc

    from archc.analysis.summary import summarize
    from archc.api import build
    from archc.elaborate import elaborate_file

    ref = _reference(transformers, CONFIGS["gqa4_headdim"])
    graph = elaborate_file(zoo.spec_path("llama"), overrides=zoo.hf_llama_params(ref.config.to_dict()))
    module = build(graph).eval()

    def sdpa(q, k, v, *args, out_shape=None, **kwargs):  # type: ignore[no-untyped-def]
        return fc.sdpa_flop_count(q, k, v)  # FlopCounterMode has no formula for the CPU kernel

    mode = fc.FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa})
    with torch.no_grad(), mode:
        module(torch.zeros(2, 16, dtype=torch.long))
    counted = mode.get_total_flops()
    assert counted > 0
    assert summarize(graph, batch=2, axes={"T": 16}).total.flops == counted


def test_hf_llama_params_reads_a_config(transformers: ModuleType) -> None:
    config = transformers.LlamaConfig(**CONFIGS["gqa4_headdim"]).to_dict()
    params = zoo.hf_llama_params(config)
    assert params["rope_theta"] == 500000.0 and params["head_dim"] == 16 and params["num_key_value_heads"] == 2
    assert set(params) <= set(zoo.LLAMA_CONFIG_KEYS)
    with pytest.raises(ValueError, match="rope_type"):
        zoo.hf_llama_params({**config, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}})
    with pytest.raises(ValueError, match="silu"):
        zoo.hf_llama_params({**config, "hidden_act": "gelu"})


@pytest.mark.slow  # builds a 135M-parameter model
def test_llama_default_is_smollm_135m(transformers: ModuleType) -> None:
    """The spec's defaults are SmolLM-135M's config: the same keys, shapes and parameter count as
    Hugging Face's model for that config (on the meta device, nothing allocated there)."""
    from archc.elaborate import elaborate_file

    graph = elaborate_file(zoo.spec_path("llama"))
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                      rms_norm_eps=1e-5, max_position_embeddings=2048, tie_word_embeddings=True)
    with torch.device("meta"):
        ref = transformers.LlamaForCausalLM(config)
    assert graph.param_count() == sum(p.numel() for p in ref.parameters()) == 134_515_008
    theirs = {k: tuple(v.shape) for k, v in zoo.hf_llama_to_archc(ref.state_dict(), True).items()}
    assert {k: tuple(p.shape) for k, p in graph.params.items()} == theirs


def test_llama_init_is_hugging_faces(transformers: ModuleType) -> None:
    """A fresh model draws each tensor as Hugging Face's `_init_weights` does (mean and std per
    parameter within statistical tolerance), so training from scratch starts at loss ln(vocab)."""
    import math

    from archc.api import compile as compile_spec

    config = {**TINY, "vocab_size": 1000, "tie_word_embeddings": False, "initializer_range": 0.02}
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    ours = compile_spec(zoo.spec_path("llama"), **zoo.hf_llama_params(ref.config.to_dict())).eval()
    theirs, mine = ref.state_dict(), ours.state_dict()
    assert set(mine) == set(theirs)
    for name, t in mine.items():
        a, b = t.double().flatten(), theirs[name].double().flatten()
        n = a.numel()
        spread = max(a.std().item(), b.std().item()) if n > 1 else 0.0
        assert abs(a.mean().item() - b.mean().item()) <= 6 * spread * math.sqrt(2 / n) + 1e-9, name
        assert abs(a.std().item() - b.std().item()) <= 6 * spread * math.sqrt(1 / n) + 1e-9 if n > 1 else True, name
    assert abs(mine["model.layers.0.mlp.down_proj.weight"].std().item() - 0.02) < 1e-3
    tokens = torch.randint(0, 1000, (8, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = ours(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 1000), tokens[:, 1:].reshape(-1))
    assert abs(loss.item() - math.log(1000)) < 0.05, loss.item()


def test_llama_in_bf16_matches_hf_in_bf16(transformers: ModuleType) -> None:
    """`dtype="bf16"` builds bf16 weights; the rotary tables are computed in f32 and meet the
    model in bf16, as Hugging Face's. bf16 rounds at 2^-8 relative, so the tolerance is bf16's."""
    config = CONFIGS["gqa4_headdim"]
    ref = _reference(transformers, config).to(torch.bfloat16)
    from archc.api import compile as compile_spec

    model = compile_spec(zoo.spec_path("llama"), dtype="bf16", **zoo.hf_llama_params(ref.config.to_dict())).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.load_state_dict(ref.state_dict(), strict=True)
    tokens = torch.randint(0, config["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ref(tokens).logits, model(tokens)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=1.6e-2, atol=8e-3)
