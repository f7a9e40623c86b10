"""Mixture-of-experts ops (#15): the router as Mixtral's, the three lowerings of moe_experts agree
(outputs and gradients, fp32, random routings with idle experts and uneven counts), capacity drops
the same choices in each, and the layer equals Hugging Face's MixtralSparseMoeBlock."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from archc.backends.torch import build_module
from archc.backends.torch.conditional import moe_experts, moe_load, moe_route
from archc.elaborate import elaborate_text
from archc.errors import ArchError

E, D, H = 6, 16, 24


def _weights(seed: int, kind: str = "swiglu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = 2 * H if kind == "swiglu" else H
    return torch.randn(E, rows, D, generator=gen) / D ** 0.5, torch.randn(E, D, H, generator=gen) / H ** 0.5


def _routing(n: int, k: int, seed: int, idle: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, E, generator=gen)
    if idle:  # experts that receive no input at all
        logits[:, list(idle)] = -1e4
    w, i = moe_route(logits, k, "softmax", True)
    return logits, w, i


@pytest.mark.parametrize("kind", ["swiglu", "mlp"])
@pytest.mark.parametrize("n, k, idle", [(13, 2, (1, 4)), (37, 3, ()), (5, 1, (0, 2, 3))])
def test_the_three_lowerings_agree(kind: str, n: int, k: int, idle: tuple[int, ...]) -> None:
    first, second = _weights(0, kind)
    _, w, idx = _routing(n, k, seed=n, idle=idle)
    assert not set(idle) & set(idx.flatten().tolist())
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(7))
    outs, grads = {}, {}
    for impl in ("loop", "grouped", "batched"):
        xs, f, s = (t.clone().requires_grad_() for t in (x, first, second))
        y = moe_experts(xs, w, idx, f, s, kind=kind, act="silu", impl=impl, capacity=None)
        y.backward(torch.ones_like(y))
        outs[impl], grads[impl] = y, (xs.grad, f.grad, s.grad)
    for impl in ("grouped", "batched"):
        assert_close(outs[impl], outs["loop"], rtol=1e-6, atol=1e-6)
        for a, b in zip(grads[impl], grads["loop"]):
            assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the loop, by its definition: sum over the k choices of weight * expert(x)
    want = torch.zeros(n, D)
    for t in range(n):
        for j in range(k):
            e = int(idx[t, j])
            h = first[e] @ x[t]
            h = torch.nn.functional.silu(h[:H]) * h[H:] if kind == "swiglu" else torch.nn.functional.silu(h)
            want[t] += w[t, j] * (second[e] @ h)
    assert_close(outs["loop"], want, rtol=1e-5, atol=1e-6)


def test_capacity_drops_the_same_choices_in_every_lowering() -> None:
    first, second = _weights(1)
    _, w, idx = _routing(40, 2, seed=3)
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(2))
    outs = {impl: moe_experts(x, w, idx, first, second, kind="swiglu", act="silu", impl=impl, capacity=0.5)
            for impl in ("loop", "grouped", "batched")}
    assert_close(outs["grouped"], outs["loop"], rtol=1e-6, atol=1e-6)
    assert_close(outs["batched"], outs["loop"], rtol=1e-6, atol=1e-6)
    dropless = moe_experts(x, w, idx, first, second, kind="swiglu", act="silu", impl="loop", capacity=None)
    assert not torch.allclose(outs["loop"], dropless)
    # each expert took at most ceil(0.5 * 40 * 2 / 6) = 7 choices, the first ones in input order
    limit = 7
    seen = {e: 0 for e in range(E)}
    kept_want = torch.zeros(40, 2, dtype=torch.bool)
    for t in range(40):
        for j in range(2):
            e = int(idx[t, j])
            kept_want[t, j] = seen[e] < limit
            seen[e] += 1
    from archc.backends.torch.conditional import _kept

    assert torch.equal(_kept(idx, E, 0.5), kept_want)


def test_router_and_load_statistics_are_mixtrals(transformers) -> None:
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    gen = torch.Generator().manual_seed(0)
    layers = [torch.randn(30, E, generator=gen) for _ in range(3)]
    stats = [moe_load(lg, moe_route(lg, 2, "softmax", True)[1]) for lg in layers]
    pooled = torch.stack(stats).mean(dim=0)  # f and P pooled over the layers
    ours = E * (pooled[0] * pooled[1]).sum()
    theirs = load_balancing_loss_func(tuple(layers), E, 2)
    assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert_close(stats[0][0].sum(), torch.tensor(2.0))  # each input's 2 choices


@pytest.mark.parametrize("impl", ["loop", "grouped", "batched"])
def test_a_layer_equals_hugging_faces_sparse_moe_block(transformers, impl: str) -> None:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    spec = f"""axis B, T
model M (x: [B, T, {D}]) -> [B, T, {D}] {{
    gate = linear({E}, bias=false)
    weights, index = moe_router(gate(x), 2)
    experts = moe_experts({E}, {H}, impl="{impl}")
    return experts(x, weights, index)
}}
"""
    g = elaborate_text(spec, file="m.arch")
    torch.manual_seed(0)
    m = build_module(g)
    config = MixtralConfig(hidden_size=D, intermediate_size=H, num_local_experts=E, num_experts_per_tok=2)
    ref = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    m.load_state_dict(ref.state_dict())  # the same names: gate.weight, experts.gate_up_proj, experts.down_proj
    x = torch.randn(3, 9, D, generator=torch.Generator().manual_seed(1))
    assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)


def test_grouped_lowering_refuses_unaligned_widths() -> None:
    with pytest.raises(ArchError, match="16 bytes"):
        elaborate_text("""axis B
model M (x: [B, 10]) -> [B, 10] {
    weights, index = moe_router(linear(x, 4, bias=false), 2)
    return moe_experts(x, weights, index, 4, 6, impl="grouped")
}
""", file="m.arch")


BIASED = """axis B
model M (x: [B, 8]) -> ([B, 2], i64[B, 2]) {
    gate = linear(4, bias=false)
    return moe_router(gate(x), 2, balance="bias", rate=0.01)
}
"""


def test_bias_balancing_chooses_with_the_bias_and_moves_it_towards_balance() -> None:
    g = elaborate_text(BIASED, file="m.arch")
    torch.manual_seed(0)
    m = build_module(g)
    assert "moe_router.e_score_correction_bias" in dict(m.named_buffers())
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
    bias = m.get_buffer("moe_router.e_score_correction_bias")
    scores = torch.softmax(x @ m.gate.weight.t(), dim=-1)
    # a zero bias: Mixtral's routing exactly
    m.eval()
    w, i = m(x)
    want_w, want_i = moe_route(x @ m.gate.weight.t(), 2, "softmax", True)
    assert torch.equal(i, want_i) and torch.equal(w, want_w)
    # a bias chooses: expert 3 favoured enough to be every input's first choice; weights stay the scores'
    with torch.no_grad():
        bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0]))
    w, i = m(x)
    assert (i[:, 0] == 3).all()
    chosen = scores.gather(-1, i)
    assert_close(w, chosen / chosen.sum(-1, keepdim=True))
    assert torch.equal(bias, torch.tensor([0.0, 0.0, 0.0, 10.0]))  # eval: no update
    # training: each step moves the bias by rate towards the mean load (expert 3 is overloaded)
    m.train()
    before = bias.clone()
    _, i = m(x)
    load = torch.bincount(i.reshape(-1), minlength=4).float()
    assert torch.equal(bias, before + 0.01 * torch.sign(load.mean() - load))
    assert bias[3] < before[3]


def test_bias_balancing_runs_the_same_in_the_flat_fx_graph() -> None:
    from archc.backends.fx import build_graph_module

    g = elaborate_text(BIASED, file="m.arch")
    torch.manual_seed(1)
    m = build_module(g).train()
    flat = build_graph_module(g).train()
    flat.load_state_dict(m.state_dict())
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(4))
    for _ in range(3):  # the bias moves each step, the same way in both
        a, b = m(x), flat(x)
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert torch.equal(m.get_buffer("moe_router.e_score_correction_bias"),
                       flat.get_buffer("moe_router.e_score_correction_bias"))
    assert m.get_buffer("moe_router.e_score_correction_bias").abs().sum() > 0


def test_summary_states_active_parameters_and_the_batched_buffer() -> None:
    from archc.analysis.conditional import conditional_rows

    spec = """axis B, T
model M (x: [B, T, 16]) -> [B, T, 16] {
    weights, index = moe_router(linear(x, 4, bias=false), 2)
    return moe_experts(x, weights, index, 4, 24, impl="batched", capacity=0.5)
}
"""
    (row,) = conditional_rows(elaborate_text(spec.replace("[B, T, 16]", "[2, 10, 16]"), file="m.arch"), {})
    assert (row.params, row.active) == (4 * 3 * 16 * 24, 2 * 3 * 16 * 24)  # 4 SwiGLU experts, 2 per input
    assert row.flops_per_row == 2 * (2 * 16 * 48 + 2 * 24 * 16)
    # capacity ceil(0.5 * 20 * 2 / 4) = 5 rows per expert: a [4, 5, 16] f32 buffer
    assert row.buffer_bytes == 4 * 5 * 16 * 4
    # with a symbolic number of inputs (or dropless) the bound is every input, per expert
    for text in (spec, spec.replace(", capacity=0.5", "")):
        (row,) = conditional_rows(elaborate_text(text, file="m.arch"), {"B": 2, "T": 10})
        assert row.buffer_bytes == 4 * 20 * 16 * 4
