"""mixtral.arch against Hugging Face's MixtralForCausalLM (tiny configs, eval, fp32): the same
parameter count, HF's state_dict loads with strict=True, the logits within 1e-5, and the router's
auxiliary loss equal to HF's load_balancing_loss_func over its router logits; every experts
lowering gives the same model."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch.testing import assert_close

from archc import zoo
from archc.api import compile as compile_spec
from archc.elaborate import elaborate_file

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64)


def _reference(transformers: ModuleType, **extra: object):
    config = transformers.MixtralConfig(**{**TINY, **extra})
    torch.manual_seed(0)
    ref = transformers.MixtralForCausalLM(config).eval()
    with torch.no_grad():  # weights away from the init, routers with clear preferences
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref


@pytest.mark.parametrize("impl", ["loop", "grouped", "batched"])
def test_mixtral_logits_and_aux_loss_match_hf(transformers: ModuleType, impl: str) -> None:
    ref = _reference(transformers)
    model = compile_spec(zoo.spec_path("mixtral"), experts_impl=impl,
                         **zoo.hf_mixtral_params(ref.config.to_dict())).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    model.load_state_dict(ref.state_dict(), strict=True)
    tokens = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, aux = model(tokens)
        out = ref(tokens, output_router_logits=True)
    assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)
    want = transformers.models.mixtral.modeling_mixtral.load_balancing_loss_func(
        out.router_logits, TINY["num_local_experts"], TINY["num_experts_per_tok"])
    assert_close(aux, want, rtol=1e-5, atol=1e-6)
    assert_close(aux, out.aux_loss, rtol=1e-5, atol=1e-6)


def test_mixtral_trains_with_its_aux_loss(transformers: ModuleType) -> None:
    ref = _reference(transformers)
    model = compile_spec(zoo.spec_path("mixtral"), **zoo.hf_mixtral_params(ref.config.to_dict()))
    model.load_state_dict(ref.state_dict(), strict=True)
    model.train()
    tokens = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(2))
    logits, aux = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()) + 0.001 * aux
    loss.backward()
    gate = model.get_parameter("model.layers.0.mlp.gate.weight")
    assert gate.grad is not None and gate.grad.abs().sum() > 0  # the router learns, through the weights and aux


def test_mixtral_default_is_8x7b() -> None:
    graph = elaborate_file(zoo.spec_path("mixtral"))
    assert graph.param_count() == 46_702_792_704  # Mixtral-8x7B's 46.7B parameters
    assert graph.params["model.layers.31.mlp.experts.gate_up_proj"].shape == (8, 2 * 14336, 4096)


def test_hf_mixtral_params_refuses_what_the_spec_does_not_build(transformers: ModuleType) -> None:
    config = transformers.MixtralConfig(**TINY).to_dict()
    assert zoo.hf_mixtral_params(config)["num_local_experts"] == 4
    with pytest.raises(ValueError, match="sliding"):
        zoo.hf_mixtral_params({**config, "sliding_window": 16})
    with pytest.raises(ValueError, match="jitter"):
        zoo.hf_mixtral_params({**config, "router_jitter_noise": 0.1})
