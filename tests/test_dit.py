"""specs/std/dit.arch and specs/examples/dit_tiny.arch against a diffusion transformer written here
from the equations of the DiT paper (Peebles & Xie 2023, section 3.2 and its reference code's
timestep embedding and unpatchify): outputs within rtol = atol = 1e-5 with random weights, the
adaLN-Zero start (every block the identity, a zero output), and `archc summary`'s FLOPs against
FlopCounterMode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from archc.analysis.summary import summarize
from archc.backends.torch import build_module
from archc.elaborate import elaborate_file, elaborate_text

SPEC = Path(__file__).resolve().parent.parent / "specs" / "examples" / "dit_tiny.arch"
SMALL = {"depth": 2, "hidden": 32, "heads": 2, "img": 8}

Sd = dict[str, torch.Tensor]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f), sin(t f)] with f_i = exp(-ln(max_period) i / half), i < half = dim / 2."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _linear(x: torch.Tensor, sd: Sd, name: str) -> torch.Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def _layernorm(x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-6)


def _attention(x: torch.Tensor, sd: Sd, name: str, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    q, k, v = _linear(x, sd, f"{name}.qkv").reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    return _linear((weights @ v).transpose(1, 2).reshape(b, n, d), sd, f"{name}.proj")


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def reference(sd: Sd, x: torch.Tensor, t: torch.Tensor, depth: int, heads: int, patch: int) -> torch.Tensor:
    """DiT: patchify + positions; c = MLP(timestep embedding); per block (adaLN-Zero)
    shift, scale, gate = W silu(c) + b (six of them), x += gate1 * attn(modulate(LN x)),
    x += gate2 * mlp(modulate(LN x)); the final layer; unpatchify (h w p q c -> c (h p) (w q))."""
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch)
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]
    c = _linear(F.silu(_linear(timestep_embedding(t, 256), sd, "t_embedder.mlp.0")), sd, "t_embedder.mlp.2")
    for i in range(depth):
        p = f"blocks.{i}"
        s1, sc1, g1, s2, sc2, g2 = _linear(F.silu(c), sd, f"{p}.adaLN_modulation.1").chunk(6, dim=1)
        h = h + g1[:, None] * _attention(_modulate(_layernorm(h), s1, sc1), sd, f"{p}.attn", heads)
        mlp_in = _modulate(_layernorm(h), s2, sc2)
        h = h + g2[:, None] * _linear(_gelu_tanh(_linear(mlp_in, sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")
    shift, scale = _linear(F.silu(c), sd, "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = _linear(_modulate(_layernorm(h), shift, scale), sd, "final_layer.linear")
    b, n, _ = out.shape
    side, channels = math.isqrt(n), out.shape[-1] // patch ** 2
    out = out.reshape(b, side, side, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(b, channels, side * patch, side * patch)


def _inputs(seed: int, img: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, img, img, generator=g), torch.rand(3, generator=g) * 999.0


def test_timestep_embedding_is_the_formula() -> None:
    graph = elaborate_text('import "std/dit.arch"\naxis B\n'
                           "model M (t: f32[B]) -> f32[B, 256] { return TimestepEmbedding(256)(t) }", "t.arch")
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    with torch.no_grad():
        got = build_module(graph)(t)
    torch.testing.assert_close(got, timestep_embedding(t, 256), rtol=1e-6, atol=1e-6)


def test_dit_matches_the_paper_with_random_weights() -> None:
    model = build_module(elaborate_file(SPEC, overrides=SMALL)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the zero-initialized modulation and output layers too, so that every term counts;
        for p in model.parameters():  # weights of std 1/sqrt(fan-in) keep activations of order one
            p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.1))
    sd = model.state_dict()
    x, t = _inputs(1, SMALL["img"])
    with torch.no_grad():
        want = reference(sd, x, t, SMALL["depth"], SMALL["heads"], patch=2)
        got = model(x, t)
    assert want.shape == (3, 8, 8, 8) and want.abs().max().item() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_adaln_zero_starts_every_block_as_the_identity() -> None:
    torch.manual_seed(0)
    model = build_module(elaborate_file(SPEC, overrides=SMALL)).eval()
    sd = model.state_dict()
    for key in sd:
        if "adaLN_modulation" in key or key.startswith("final_layer.linear"):
            assert torch.count_nonzero(sd[key]) == 0, key
    x, t = _inputs(2, SMALL["img"])
    with torch.no_grad():
        assert torch.count_nonzero(model(x, t)) == 0  # zero gates, a zero final layer
        torch.testing.assert_close(model(x, t), reference(sd, x, t, SMALL["depth"], SMALL["heads"], patch=2))


def test_summary_flops_are_what_torch_counts() -> None:
    import torch.utils.flop_counter as fc

    graph = elaborate_file(SPEC, overrides=SMALL)

    def sdpa(q, k, v, *args, out_shape=None, **kwargs):  # type: ignore[no-untyped-def]
        return fc.sdpa_flop_count(q, k, v)  # FlopCounterMode has no formula for the CPU kernel

    mode = fc.FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa})
    x, t = _inputs(3, SMALL["img"])
    with torch.no_grad(), mode:
        build_module(graph).eval()(x, t)
    counted = mode.get_total_flops()
    assert counted > 0
    assert summarize(graph, batch=3).total.flops == counted


@pytest.mark.parametrize("overrides", [{}, {"out_channels": 4, "patch": 4, "img": 16}])
def test_dit_sizes(overrides: dict[str, int]) -> None:
    graph = elaborate_file(SPEC, overrides=overrides)
    out = graph.outputs[0].type
    assert [s.value for s in out.sizes[1:]] == [overrides.get("out_channels", 8), overrides.get("img", 16),
                                                overrides.get("img", 16)]


def test_log_is_a_compile_time_function() -> None:
    from archc.errors import ArchError

    graph = elaborate_text("model M (x: [2]) -> [2] { return x * log(10000.0) }", "l.arch")
    assert graph.nodes[0].attrs["other"] == math.log(10000.0)
    with pytest.raises(ArchError, match="log\\(\\) takes one positive number, got the int 0") as info:
        elaborate_text("model M (x: [2]) -> [2] { return x * log(0) }", "l.arch")
    assert info.value.span is not None and info.value.span.col == 38


def test_onnx_runs_the_dit_at_another_batch_size() -> None:
    from archc.backends.onnx import check, export_onnx

    graph = elaborate_file(SPEC, overrides=SMALL)
    model = build_module(graph).eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # not the zero start, whose output is zero whatever the file computes
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.1))
    result = check(graph, model, export_onnx(graph, model), {"B": 5})
    assert result.ok, result
