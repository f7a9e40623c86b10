"""A mixture of experts whose expert is any block (#15 item 1): moe_select gathers the inputs routed
to one expert into a tensor with a fresh leading axis, the expert block runs on them, moe_combine
adds weight * output back. Tested against mixtures written out by hand in PyTorch (fp32, random
routings with idle experts and input counts the experts do not divide), against moe_experts with
the same weights, and for the module tree (a ModuleList of the block's class, hooks on experts[e])."""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from archc.backends.torch import build_module
from archc.backends.torch.conditional import moe_combine, moe_experts, moe_route, moe_select
from archc.elaborate import elaborate_file, elaborate_text

E, D = 4, 16


def _routing(n: int, k: int, seed: int, idle: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, E, generator=gen)
    if idle:
        logits[:, list(idle)] = -1e4
    return moe_route(logits, k, "softmax", True)


def _reference(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor, expert, experts: int = E,
               capacity: float | None = None) -> torch.Tensor:
    """The mixture by its definition, input by input: y[n] = sum over n's choices (e, weight) that
    expert e takes of weight * expert_e(the inputs e takes)[n's row among them]."""
    n, k = idx.shape
    limit = n * k if capacity is None else math.ceil(capacity * n * k / experts)
    y = torch.zeros(n, x.shape[-1])
    for e in range(experts):
        chosen = [(t, j) for t in range(n) for j in range(k) if int(idx[t, j]) == e][:limit]
        if not chosen:
            continue
        out = expert(e, x[[t for t, _ in chosen]])
        for row, (t, j) in enumerate(chosen):
            y[t] += w[t, j] * out[row]
    return y


@pytest.mark.parametrize("n, k, idle", [(13, 2, (1,)), (7, 3, ()), (5, 1, (0, 2))])
def test_select_and_combine_are_the_mixture(n: int, k: int, idle: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(n)
    w, idx = _routing(n, k, seed=n, idle=idle)
    assert not set(idle) & set(idx.flatten().tolist())
    x = torch.randn(n, D, generator=gen)
    mats = torch.randn(E, D, D, generator=gen)
    parts = []
    for e in range(E):
        xe, token, we = moe_select(x, w, idx, e, E)
        assert xe.shape[0] == int((idx == e).sum())
        parts += [torch.tanh(xe @ mats[e]), token, we]
    y = moe_combine(x, *parts)
    assert_close(y, _reference(x, w, idx, lambda e, xs: torch.tanh(xs @ mats[e])), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("capacity", [0.5, 1.0])
def test_capacity_drops_what_moe_experts_drops(capacity: float) -> None:
    gen = torch.Generator().manual_seed(3)
    n, k, h = 11, 2, 8
    w, idx = _routing(n, k, seed=5, idle=(3,))  # three busy experts: some go over capacity
    x = torch.randn(n, D, generator=gen)
    first, second = torch.randn(E, 2 * h, D, generator=gen), torch.randn(E, D, h, generator=gen)
    parts = []
    for e in range(E):
        xe, token, we = moe_select(x, w, idx, e, E, capacity=capacity)
        gate, up = (xe @ first[e].t()).chunk(2, dim=-1)
        parts += [(F.silu(gate) * up) @ second[e].t(), token, we]
    want = moe_experts(x, w, idx, first, second, kind="swiglu", act="silu", impl="loop", capacity=capacity)
    assert_close(moe_combine(x, *parts), want, rtol=1e-5, atol=1e-5)
    ffn = lambda e, xs: (F.silu((xs @ first[e].t())[:, :h]) * (xs @ first[e].t())[:, h:]) @ second[e].t()
    assert_close(want, _reference(x, w, idx, ffn, capacity=capacity), rtol=1e-5, atol=1e-5)


HAND_BUILT = """
axis B, T, D
block Mlp2(hidden: int) (x: [*, D]) -> [*, D] {
    fc1 = linear(hidden)
    fc2 = linear(D)
    return x >> fc1 >> gelu >> fc2
}
model M (x: [B, T, 16]) -> [B, T, 16] {
    gate = linear(3, bias=false)
    w, i = moe_router(gate(x), 2)
    x0, p0, w0 = moe_select(x, w, i, expert=0, experts=3)
    @scope("experts.0") y0 = Mlp2(8)(x0)
    x1, p1, w1 = moe_select(x, w, i, expert=1, experts=3)
    @scope("experts.1") y1 = Mlp2(8)(x1)
    x2, p2, w2 = moe_select(x, w, i, expert=2, experts=3)
    @scope("experts.2") y2 = Mlp2(8)(x2)
    return moe_combine(x, y0, p0, w0, y1, p1, w1, y2, p2, w2)
}
"""


def test_the_ops_written_out_in_a_spec() -> None:
    torch.manual_seed(0)
    graph = elaborate_text(HAND_BUILT)
    assert {str(graph.values[n.outputs[0]]) for n in graph.nodes if n.op == "moe_select"} == {"f32[N_e, 16]"}
    m = build_module(graph).eval()
    assert isinstance(m.experts, torch.nn.ModuleList) and len({type(x) for x in m.experts}) == 1
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    w, idx = moe_route(m.gate(x).reshape(-1, 3), 2, "softmax", True)

    def expert(e: int, xs: torch.Tensor) -> torch.Tensor:
        ex = m.experts[e]
        return ex.fc2(F.gelu(ex.fc1(xs)))

    want = _reference(x.reshape(-1, 16), w, idx, expert, experts=3).reshape(3, 5, 16)
    assert_close(m(x), want, rtol=1e-5, atol=1e-6)


# ---- moe(E, Block): the construct --------------------------------------------------------------
BLOCKS = """
axis B, T, D

block Mlp2(hidden: int) (x: [*, D]) -> [*, D] {
    fc1 = linear(hidden)
    fc2 = linear(D)
    return x >> fc1 >> gelu >> fc2
}

# attention among the tokens routed to the expert (heads of width D / heads)
block TokenAttention(heads: int) (x: [T, D]) -> [T, D] {
    qkv = linear(3 * D)
    proj = linear(D)
    q, k, v = x >> qkv >> rearrange("t (three h d) -> three h t d", three=3, h=heads) >> unbind()
    return rearrange(attention(q, k, v), "h t d -> t (h d)") >> proj
}

block SwiGLU(hidden: int) (x: [*, D]) -> [*, D] {
    gate_proj = linear(hidden, bias=false)
    up_proj = linear(hidden, bias=false)
    down_proj = linear(D, bias=false)
    return down_proj(silu(gate_proj(x)) * up_proj(x))
}
"""


def _model(expert: str, k: int = 2, capacity: str = "") -> str:
    return BLOCKS + f"""
model M (x: [B, T, 16]) -> [B, T, 16] {{
    gate = linear({E})
    experts = moe({E}, {expert}{capacity})
    weights, index = moe_router(gate(x), {k})
    return experts(x, weights, index)
}}
"""


def _mlp(m: torch.nn.Module, e: int, xs: torch.Tensor) -> torch.Tensor:
    ex = m.experts[e]
    return ex.fc2(F.gelu(ex.fc1(xs)))


def _attention(m: torch.nn.Module, e: int, xs: torch.Tensor, heads: int = 2) -> torch.Tensor:
    ex = m.experts[e]
    q, k, v = ex.qkv(xs).reshape(xs.shape[0], 3, heads, -1).permute(1, 2, 0, 3)
    o = F.scaled_dot_product_attention(q, k, v)
    return ex.proj(o.permute(1, 0, 2).reshape(xs.shape[0], -1))


def _run(spec: str, batch: int, seq: int, k: int, idle: tuple[int, ...], seed: int
         ) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model, an input, and the routing it makes (idle experts: a router bias of -1e4)."""
    torch.manual_seed(seed)
    m = build_module(elaborate_text(spec, file="m.arch")).eval()
    with torch.no_grad():
        m.gate.bias[list(idle)] = -1e4
    x = torch.randn(batch, seq, 16, generator=torch.Generator().manual_seed(seed + 1))
    w, idx = moe_route(m.gate(x).reshape(-1, E), k, "softmax", True)
    assert not set(idle) & set(idx.flatten().tolist())
    return m, x, w, idx, m(x)


@pytest.mark.parametrize("expert, reference", [("Mlp2(8)", _mlp), ("TokenAttention(2)", _attention)])
@pytest.mark.parametrize("batch, seq, k, idle", [(2, 7, 2, (1,)), (1, 9, 3, ()), (3, 1, 1, (0, 3))])
def test_a_block_expert_is_the_reference_loop(expert: str, reference, batch: int, seq: int, k: int,
                                              idle: tuple[int, ...]) -> None:
    m, x, w, idx, y = _run(_model(expert, k), batch, seq, k, idle, seed=batch * 10 + seq)
    assert (batch * seq * k) % E or batch * seq % E  # counts the experts do not divide
    with torch.no_grad():
        want = _reference(x.reshape(-1, 16), w, idx, lambda e, xs: reference(m, e, xs))
    assert_close(y, want.reshape(batch, seq, 16), rtol=1e-5, atol=1e-6)


def test_capacity_in_the_construct() -> None:
    m, x, w, idx, y = _run(_model("Mlp2(8)", capacity=", capacity=0.75"), 2, 7, 2, (1,), seed=4)
    with torch.no_grad():
        want = _reference(x.reshape(-1, 16), w, idx, lambda e, xs: _mlp(m, e, xs), capacity=0.75)
        full = _reference(x.reshape(-1, 16), w, idx, lambda e, xs: _mlp(m, e, xs))
    assert_close(y, want.reshape(2, 7, 16), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(want, full)  # some choices were dropped


def test_swiglu_block_experts_equal_moe_experts() -> None:
    spec = BLOCKS + f"""
model M (x: [B, T, 16]) -> ([B, T, 16], [B, T, 16]) {{
    gate = linear({E})
    weights, index = moe_router(gate(x), 2)
    blocks = moe({E}, SwiGLU(24))
    stacked = moe_experts({E}, 24)
    return blocks(x, weights, index), stacked(x, weights, index)
}}
"""
    torch.manual_seed(0)
    m = build_module(elaborate_text(spec, file="m.arch"))
    with torch.no_grad():  # the stacked experts get the blocks' weights, in Hugging Face's layout
        m.gate.bias[2] = -1e4  # expert 2 idle
        for e, ex in enumerate(m.blocks):
            m.stacked.gate_up_proj[e] = torch.cat([ex.gate_proj.weight, ex.up_proj.weight])
            m.stacked.down_proj[e] = ex.down_proj.weight
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
    ours, stacked = m(x)
    assert_close(ours, stacked, rtol=1e-5, atol=1e-6)
    ours.sum().backward()  # gradients reach each busy expert's own weights
    assert m.blocks[0].gate_proj.weight.grad.abs().sum() > 0
    assert m.blocks[2].gate_proj.weight.grad is None or not m.blocks[2].gate_proj.weight.grad.any()


def test_hooks_on_one_expert_fire_with_its_tokens() -> None:
    m, x, w, idx, _ = _run(_model("Mlp2(8)"), 2, 7, 2, (), seed=1)
    assert isinstance(m.experts, torch.nn.ModuleList) and len(m.experts) == E
    assert len({type(ex) for ex in m.experts}) == 1 and type(m.experts[0]).__name__ == "Mlp2"
    seen: list[tuple[int, ...]] = []
    handle = m.experts[2].register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    m(x)
    handle.remove()
    assert seen == [(int((idx == 2).sum()), 16)]
    fc1 = []
    m.experts[3].fc1.register_forward_hook(lambda mod, args, out: fc1.append(out.shape[0]))
    m(x)
    assert fc1 == [int((idx == 3).sum())]


def test_the_fx_graph_computes_the_same() -> None:
    from archc.backends.fx import build_graph_module

    graph = elaborate_text(_model("TokenAttention(2)"), file="m.arch")
    torch.manual_seed(3)
    m = build_module(graph).eval()
    flat = build_graph_module(graph).eval()
    flat.load_state_dict(m.state_dict())
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(5))
    assert_close(flat(x), m(x), rtol=0, atol=0)


def test_summary_counts_k_experts_active_at_the_balanced_load() -> None:
    from archc.analysis.conditional import conditional_rows, format_rows
    from archc.analysis.summary import axis_values

    graph = elaborate_text(_model("Mlp2(8)", k=2), file="m.arch")
    env = axis_values(graph, 2, {"T": 10})
    assert env["N_e"] == 2 * 10 * 2 // E  # the routed-tokens axis at ceil(N * k / E)
    (row,) = conditional_rows(graph, env)
    expert = (16 * 8 + 8) + (8 * 16 + 16)  # fc1, fc2 with biases
    assert (row.scope, row.op, row.params, row.active) == ("experts", "moe(Mlp2)", E * expert, 2 * expert)
    assert row.flops_per_row == 2 * (2 * 16 * 8 + 2 * 8 * 16)  # each row through 2 experts
    router = 16 * E + E
    assert format_rows([row], graph)[0].startswith(f"conditional compute: {router + 2 * expert:,} of "
                                                   f"{router + E * expert:,} parameters active")


def test_the_diagram_draws_one_expert_times_e() -> None:
    from archc.backends.graphviz import build_diagram

    graph = elaborate_text(_model("Mlp2(8)"), file="m.arch")
    (moe,) = [c for c in build_diagram(graph).walk() if c.label.startswith("<b>experts</b>")]
    (expert,) = moe.clusters
    assert "experts.0-3  x4" in expert.label and len(expert.boxes) == 3  # fc1, gelu, fc2: drawn once
    assert [b.label.split("<br/>")[0] for b in moe.boxes].count("<b>moe_select \u00d74</b>") == 1
    assert len(moe.boxes) == 2  # the one moe_select and moe_combine


def test_an_op_is_an_expert_too() -> None:
    """`moe(E, linear(16))`: experts.e is an nn.Linear, and the mixture is the reference loop."""
    m, x, w, idx, y = _run(_model("linear(16)"), 2, 7, 2, (2,), seed=9)
    assert all(type(ex) is torch.nn.Linear for ex in m.experts)
    with torch.no_grad():
        want = _reference(x.reshape(-1, 16), w, idx, lambda e, xs: m.experts[e](xs))
    assert_close(y, want.reshape(2, 7, 16), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("expert, message", [
    ("Mlp2(8), capacity=0", "capacity must be a positive number"),
    ("Mlp2(8), hidden=3", "moe() has no argument 'hidden'"),
    ("shared", "cannot be the named instance 'shared'"),
    ("3", "the expert must be a block"),
    ("Mlp2(8), 2", "moe() takes the number of experts and the expert, got 3"),
])
def test_located_errors(expert: str, message: str) -> None:
    from archc.errors import ArchError

    spec = _model(expert).replace("    experts =", "    shared = Mlp2(8)\n    experts =")
    with pytest.raises(ArchError, match=re.escape(message)) as err:
        elaborate_text(spec, file="m.arch")
    assert err.value.span is not None and err.value.span.line > 1


def test_an_expert_that_needs_more_than_tokens_is_a_type_error() -> None:
    from archc.errors import ArchError

    spec = BLOCKS + """
block Seq(n: int) (x: [B, T, D]) -> [B, T, D] { return linear(x, D) }
model M (x: [B, T, 16]) -> [B, T, 16] {
    weights, index = moe_router(linear(x, 4), 2)
    return moe(4, Seq(1))(x, weights, index)
}
"""
    with pytest.raises(ArchError, match="input 'x' of 'Seq'") as err:
        elaborate_text(spec, file="m.arch")
    assert "N_e" in str(err.value)


EXAMPLE = Path(__file__).resolve().parents[2] / "specs" / "examples" / "moe_any_expert.arch"


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_shared_expert_moe_equals_qwen2_moe(transformers, norm_topk_prob: bool) -> None:
    """specs/examples/moe_any_expert.arch's SharedExpertMoe against Hugging Face's
    Qwen2MoeSparseMoeBlock. Hugging Face stacks its experts (`experts.gate_up_proj [E, 2h, D]`);
    the spec's experts are modules (`experts.e.gate_proj.weight`): the key map is the stacking."""
    from transformers.models.qwen2_moe.configuration_qwen2_moe import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    cfg = Qwen2MoeConfig(hidden_size=32, moe_intermediate_size=16, shared_expert_intermediate_size=48, num_experts=E,
                         num_experts_per_tok=2, norm_topk_prob=norm_topk_prob, hidden_act="silu")
    torch.manual_seed(0)
    theirs = Qwen2MoeSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.2)
    model = f"""
model Qwen (x: [B, T, 32]) -> ([B, T, 32], f32[2, {E}]) {{
    return SharedExpertMoe({E}, 2, 16, 48, norm_topk_prob={'true' if norm_topk_prob else 'false'})(x)
}}
"""
    ours = build_module(elaborate_text(EXAMPLE.read_text() + model, file=str(EXAMPLE), model="Qwen")).eval()
    sd = {k: v for k, v in theirs.state_dict().items() if not k.startswith("experts.")}
    for e in range(E):
        gate, up = theirs.experts.gate_up_proj[e].detach().chunk(2)
        sd[f"shared_expert_moe.experts.{e}.gate_proj.weight"] = gate
        sd[f"shared_expert_moe.experts.{e}.up_proj.weight"] = up
        sd[f"shared_expert_moe.experts.{e}.down_proj.weight"] = theirs.experts.down_proj[e].detach()
    sd = {k if k.startswith("shared_expert_moe.") else f"shared_expert_moe.{k}": v for k, v in sd.items()}
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(1))
    y, load = ours(x)
    assert_close(y, theirs(x), rtol=1e-5, atol=1e-6)
    assert_close(load[0].sum(), torch.tensor(2.0))  # k choices per token


@pytest.mark.parametrize("ff", ["shared", "neurons"])
def test_the_example_model_builds_and_runs(ff: str) -> None:
    graph = elaborate_text(EXAMPLE.read_text(), file=str(EXAMPLE), overrides={"ff": ff, "depth": 1})
    torch.manual_seed(0)
    m = build_module(graph)
    layer = m.h[0].shared_expert_moe if ff == "shared" else m.h[0].neuron_moe
    assert len(layer.experts) == 8 and len({type(ex) for ex in layer.experts}) == 1
    router: list[torch.Tensor] = []
    layer.gate.register_forward_hook(lambda mod, args, out: router.append(out.detach().reshape(-1, 8)))
    tokens = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    logits, aux = m(tokens)
    assert logits.shape == (2, 9, 256)
    probs = torch.softmax(router[0], dim=-1)  # the auxiliary loss by its definition: E * sum_e f_e * P_e
    f = torch.bincount(probs.topk(2, dim=-1).indices.flatten(), minlength=8) / probs.shape[0]
    assert_close(aux, 8 * (f * probs.mean(dim=0)).sum(), rtol=1e-5, atol=1e-6)
    aux.backward()
    assert layer.gate.weight.grad is not None and layer.gate.weight.grad.abs().sum() > 0


def test_onnx_runs_the_mixture_at_other_sizes() -> None:
    """The TorchScript exporter keeps the routed counts, the capacity and the load statistics
    dynamic: onnxruntime equals the module at sizes other than the export's, with idle experts at
    the smaller one."""
    pytest.importorskip("onnxruntime")
    from archc.backends.onnx import check, export_onnx

    spec = BLOCKS + f"""
model M (x: [B, T, 16]) -> ([B, T, 16], f32[2, {E}]) {{
    gate = linear({E})
    experts = moe({E}, Mlp2(8), capacity=0.75)
    logits = gate(x)
    weights, index = moe_router(logits, 2)
    return experts(x, weights, index), moe_load(logits, index)
}}
"""
    graph = elaborate_text(spec, file="m.arch")
    torch.manual_seed(0)
    m = build_module(graph).eval()
    data = export_onnx(graph, m)
    for sizes in ({"B": 3, "T": 9}, {"B": 1, "T": 1}):  # one token: 2 of the 4 experts idle
        close = check(graph, m, data, sizes, atol=1e-5, rtol=1e-5)
        assert close.ok, close


def test_onnx_runs_an_attention_expert_that_gets_no_token() -> None:
    """An attention expert splits its heads with a reshape. In the torch module the head count is
    read from the tensor (so tensor parallelism can split heads); exported so, onnxruntime's
    optimizer would fold it into Reshape(0, 3, -1, 8), undecided at 0 rows. The export writes the
    module whole, and it runs with idle experts."""
    pytest.importorskip("onnxruntime")
    from archc.backends.onnx import check, export_onnx

    spec = BLOCKS + f"""
model M (x: [B, T, 16]) -> [B, T, 16] {{
    gate = linear({E})
    experts = moe({E}, TokenAttention(2))
    logits = gate(x)
    weights, index = moe_router(logits, 1)
    return experts(x, weights, index)
}}
"""
    graph = elaborate_text(spec, file="m.arch")
    torch.manual_seed(0)
    m = build_module(graph).eval()
    assert ".shape[1] // 24" in inspect.getsource(type(m.experts[0]).forward)  # heads read at run time
    data = export_onnx(graph, m)
    for sizes in ({"B": 3, "T": 9}, {"B": 1, "T": 1}):  # one token: 3 of the 4 experts idle
        close = check(graph, m, data, sizes, atol=1e-5, rtol=1e-5)
        assert close.ok, close


def test_the_optimizing_passes_keep_the_mixture() -> None:
    """-O2 merges each expert's gate_proj and up_proj (and the router with the shared expert's
    gate, which read the same input): the same outputs with the transformed weights, and the
    experts still one class."""
    from archc.passes.manager import LEVELS, run_pipeline

    graph = elaborate_file(EXAMPLE, overrides={"depth": 1})
    torch.manual_seed(0)
    m = build_module(graph).eval()
    tokens = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    done = run_pipeline(graph, LEVELS[2])
    fast = build_module(done.graph).eval()
    fast.load_state_dict(done.weights(m.state_dict()), strict=True)
    for got, want in zip(fast(tokens), m(tokens)):
        assert_close(got, want, rtol=1e-5, atol=1e-6)
    experts = fast.h[0].shared_expert_moe.experts
    assert len({type(ex) for ex in experts}) == 1 and hasattr(experts[0], "gate_proj_up_proj")


def test_the_expert_fills_an_interface_slot() -> None:
    """A block parameter typed by an interface (a MetaFormer-style slot) can be the expert: the
    block given for it is checked against the interface on the routed tokens, then made E times."""
    spec = BLOCKS + f"""
interface TokenExpert (x: [T, D]) -> [T, D]
block Layer(expert: TokenExpert) (x: [B, T, D]) -> [B, T, D] {{
    gate = linear({E})
    experts = moe({E}, expert)
    weights, index = moe_router(gate(x), 2)
    return experts(x, weights, index)
}}
model M (x: [B, T, 16]) -> [B, T, 16] {{
    return Layer(TokenAttention(2))(x)
}}
"""
    graph = elaborate_text(spec, file="m.arch")
    assert {graph.scopes[f"layer.experts.{e}"].slot for e in range(E)} == {"expert: TokenExpert"}
    torch.manual_seed(0)
    m = build_module(graph).eval()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    w, idx = moe_route(m.layer.gate(x).reshape(-1, E), 2, "softmax", True)
    with torch.no_grad():
        want = _reference(x.reshape(-1, 16), w, idx, lambda e, xs: _attention(m.layer, e, xs))
    assert_close(m(x), want.reshape(2, 5, 16), rtol=1e-5, atol=1e-6)


def test_each_balanced_load_has_its_own_routed_axis() -> None:
    """Mixtures with the same inputs, k and E share the routed axis (a stack's layers: one expert
    class); another load gets another axis, and the summary gives each its ceil(N * k / E)."""
    from archc.analysis.conditional import conditional_rows
    from archc.analysis.summary import axis_values

    spec = BLOCKS + f"""
model M (x: [B, T, 16]) -> [B, T, 16] {{
    weights, index = moe_router(linear(x, {E}), 2)
    top1, one = moe_router(linear(x, 2), 1)
    a = moe({E}, Mlp2(8))
    b = moe({E}, Mlp2(8))
    c = moe(2, Mlp2(8))
    return a(x, weights, index) + b(x, weights, index) + c(x, top1, one)
}}
"""
    graph = elaborate_text(spec, file="m.arch")
    axes = {n.scope: n.attrs["axis"] for n in graph.nodes if n.op == "moe_select"}
    assert axes == {"a": "N_e", "b": "N_e", "c": "N_e1"}
    assert graph.scopes["a.0"].key == graph.scopes["b.3"].key != graph.scopes["c.0"].key
    env = axis_values(graph, 3, {"T": 5})
    assert (env["N_e"], env["N_e1"]) == (math.ceil(15 * 2 / E), math.ceil(15 * 1 / 2))
    rows = {r.scope: r for r in conditional_rows(graph, env)}
    per_row = 2 * 16 * 8 + 2 * 8 * 16
    assert rows["c"].flops_per_row == 2 * env["N_e1"] * per_row // 15  # both experts at 8 rows, over 15 inputs


def test_a_named_mixture_applied_twice_shares_its_experts() -> None:
    """MoEUT reuses its layers: a named mixture applied twice is one set of experts."""
    spec = BLOCKS + f"""
model M (x: [B, T, 16]) -> [B, T, 16] {{
    gate = linear({E})
    experts = moe({E}, Mlp2(8))
    w1, i1 = moe_router(gate(x), 2)
    y = x + experts(x, w1, i1)
    w2, i2 = moe_router(gate(y), 2)
    return y + experts(y, w2, i2)
}}
"""
    graph = elaborate_text(spec, file="m.arch")
    assert graph.scopes["experts"].applied == 2
    torch.manual_seed(0)
    m = build_module(graph).eval()
    assert sum(p.numel() for p in m.parameters()) == 16 * E + E + E * (16 * 8 + 8 + 8 * 16 + 16)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = x
        for _ in range(2):
            w, idx = moe_route(m.gate(want).reshape(-1, E), 2, "softmax", True)
            want = want + _reference(want.reshape(-1, 16), w, idx, lambda e, xs: _mlp(m, e, xs)).reshape(2, 5, 16)
        assert_close(m(x), want, rtol=1e-5, atol=1e-6)


def test_peft_lora_reaches_each_expert() -> None:
    import peft  # after tests/conftest.py's torchvision workaround (peft imports transformers)

    m, x, w, idx, y = _run(_model("Mlp2(8)"), 2, 7, 2, (1,), seed=6)
    model = peft.get_peft_model(m, peft.LoraConfig(r=2, lora_alpha=4, target_modules=r"experts\.\d+\.fc1"))
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(lora) == 2 * E and all(".experts." in n and ".fc1.lora_" in n for n in lora)
    with torch.no_grad():
        assert_close(model(x), y, rtol=0, atol=0)  # lora_B starts at zero
    model(x).square().sum().backward()
    for e in range(E):
        grad = lora[next(n for n in lora if f".experts.{e}.fc1.lora_B" in n)].grad
        assert (grad is not None and grad.abs().sum() > 0) == (e != 1), e  # expert 1 got no token


def test_a_pipeline_expert_is_a_module_of_its_own() -> None:
    from archc.analysis.conditional import conditional_rows
    from archc.analysis.summary import axis_values

    spec = _model("linear(8) >> gelu >> linear(16)")
    graph = elaborate_text(spec, file="m.arch")
    (row,) = conditional_rows(graph, axis_values(graph, 2, {"T": 7}))
    assert row.op == "moe(Expert)" and row.active == 2 * (16 * 8 + 8 + 8 * 16 + 16)
    m, x, w, idx, y = _run(spec, 2, 7, 2, (3,), seed=8)
    assert type(m.experts[0]).__name__ == "Expert"
    seen: list[int] = []
    m.experts[0].register_forward_hook(lambda mod, args, out: seen.append(out.shape[0]))
    with torch.no_grad():
        want = _reference(x.reshape(-1, 16), w, idx, lambda e, xs: m.experts[e].linear_1(F.gelu(m.experts[e].linear(xs))))
        assert_close(m(x), want.reshape(2, 7, 16), rtol=1e-5, atol=1e-6)
    assert seen == [int((idx == 0).sum())]


def test_a_named_instance_through_a_slot_is_refused() -> None:
    from archc.errors import ArchError

    spec = BLOCKS + f"""
interface TokenExpert (x: [*, D]) -> [*, D]
block Layer(expert: TokenExpert) (x: [B, T, D]) -> [B, T, D] {{
    experts = moe({E}, expert)
    weights, index = moe_router(linear(x, {E}), 2)
    return experts(x, weights, index)
}}
model M (x: [B, T, 16]) -> [B, T, 16] {{
    one = Mlp2(8)
    return Layer(one)(x)
}}
"""
    with pytest.raises(ArchError, match="cannot be the named instance 'one'") as err:
        elaborate_text(spec, file="m.arch")
    assert err.value.span is not None
    assert elaborate_text(spec.replace("    one = Mlp2(8)\n    return Layer(one)(x)", "    return Layer(Mlp2(8))(x)"),
                          file="m.arch").scopes["layer.experts"].args["expert"] == "Mlp2"


def test_the_generated_forward_loops_over_the_experts() -> None:
    """As Hugging Face writes it: one loop over the ModuleList, not E unrolled calls."""
    from archc.backends.torch import emit_python

    text = emit_python(elaborate_text(_model("Mlp2(8)"), file="m.arch"))
    assert "for e, expert in enumerate(self.experts):" in text
    assert text.count("moe_select(x, ") == 1 and "moe_combine(x, *parts)" in text
    unrolled = emit_python(elaborate_text(HAND_BUILT, file="m.arch"))  # no mixture scope: as written
    assert "enumerate(" not in unrolled and unrolled.count("= moe_select(") == 3


def test_a_block_named_expert_is_a_block_expert() -> None:
    """A block whose name is `Expert` (the kind a pipeline expert gets) is still a block: each
    expert an instance of its class, applied once, and the forward one loop over them (its name
    made each expert look applied twice, so they were parameter holders run inline)."""
    spec = ("axis B, D\nblock Expert() (x: [B, D]) -> [B, D] {\n    fc = linear(D)\n    return fc(x)\n}\n"
            "model M (x: [B, 16]) -> [B, 16] {\n    weights, index = moe_router(linear(x, 4, bias=false), 2)\n"
            "    experts = moe(4, Expert())\n    return experts(x, weights, index)\n}\n")
    graph = elaborate_text(spec, "expert.arch")
    assert all(graph.scopes[f"experts.{e}"].applied == 1 for e in range(4))
    model = build_module(graph)
    assert all(type(m).__name__ == "Expert" for m in model.experts)
