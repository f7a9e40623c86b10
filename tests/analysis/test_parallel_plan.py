"""The tensor-parallel plan and FSDP units derived from the IR (archc/analysis/parallel.py): what
GPT-2, ViT and a hyper-connection GPT-2 get, and the located errors. Numerics under torch.distributed
are in tests/distributed/test_parallelize.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from archc.analysis.parallel import local_axes, plan_parallel
from archc.elaborate import elaborate_file
from archc.errors import ArchError
from archc.resources import specs_root

GPT2 = specs_root() / "models" / "gpt2.arch"
VIT = specs_root() / "models" / "vit_small_patch16_224.arch"
LLAMA = specs_root() / "models" / "llama.arch"
GPT2_TINY = {"vocab": 64, "dim": 32, "depth": 2, "heads": 2, "max_len": 16, "pdrop": 0.0}
VIT_TINY = {"img_size": 32, "patch": 16, "D": 32, "depth": 2, "heads": 2, "num_classes": 8}


def _styles(plan) -> list[tuple[str, str, int]]:
    return [(p.path, p.style, p.chunks) for p in plan.placements]


def test_gpt2_plan_is_megatrons() -> None:
    plan = plan_parallel(elaborate_file(GPT2, overrides=GPT2_TINY), tp=2)
    layer = [("attn.c_attn", "colwise", 3), ("attn.c_proj", "rowwise", 1),
             ("mlp.c_fc", "colwise", 1), ("mlp.c_proj", "rowwise", 1)]
    assert _styles(plan) == [("", "gather_output", 1), ("transformer", "tied_output", 1),
                             ("transformer.wte", "embedding", 1)] + \
        [(f"transformer.h.{i}.{p}", s, c) for i in range(2) for p, s, c in layer]
    assert plan.fsdp_units == ("transformer.h.0", "transformer.h.1", "")  # wte and its tied head: the root's
    assert "transformer.ln_f" in plan.norms and "transformer.h.1.ln_2" in plan.norms


def test_gpt2_local_axes_are_the_heads() -> None:
    graph = elaborate_file(GPT2, overrides=GPT2_TINY)
    axes = local_axes(graph)
    assert sorted(graph.nodes[i].attrs["pattern"] for i in axes) == \
        ["b h t d -> b t (h d)"] * 2 + ["b t (three h d) -> three b h t d"] * 2
    assert set(axes.values()) == {frozenset({"h"})}


def test_vit_plan() -> None:
    plan = plan_parallel(elaborate_file(VIT, overrides=VIT_TINY), tp=2)
    layer = [("attn.qkv", "colwise", 3), ("attn.proj", "rowwise", 1), ("mlp.fc1", "colwise", 1),
             ("mlp.fc2", "rowwise", 1)]
    assert _styles(plan) == [(f"blocks.{i}.{p}", s, c) for i in range(2) for p, s, c in layer] + \
        [("head", "head", 1)]
    assert plan.fsdp_units == ("blocks.0", "blocks.1", "")


@pytest.mark.parametrize("connect", ["hyper(n=2)", "dwa(1)"])
def test_connection_policy_state_stays_replicated(connect: str) -> None:
    """The streams of hyper-connections and DenseFormer's history mix whole residual vectors with
    learned weights: no linear, nothing split; the blocks' attention and MLP are split as before."""
    base = plan_parallel(elaborate_file(GPT2, overrides=GPT2_TINY), tp=2)
    plan = plan_parallel(elaborate_file(GPT2, overrides={**GPT2_TINY, "connect": connect}), tp=2)
    assert _styles(plan) == _styles(base)
    assert plan.fsdp_units == base.fsdp_units


def test_repeated_blocks_are_planned_once_and_alike() -> None:
    graph = elaborate_file(GPT2, overrides={**GPT2_TINY, "depth": 4})
    reused = plan_parallel(graph, tp=2)
    each = plan_parallel(graph, tp=2, replicate=("no.such.module",))  # no reuse: every layer traced
    assert reused.placements == each.placements and reused.local_axes == each.local_axes


def test_heads_that_tp_does_not_divide_are_a_located_error() -> None:
    with pytest.raises(ArchError) as err:
        plan_parallel(elaborate_file(GPT2, overrides=GPT2_TINY), tp=4)
    assert "axis 'h' (the heads) (2), which 4 does not divide" in err.value.message
    assert err.value.span is not None and err.value.span.file.endswith("gpt2.arch")
    assert "rearrange(" in err.value.render()


def test_vocabulary_that_tp_does_not_divide_is_a_located_error() -> None:
    with pytest.raises(ArchError) as err:
        plan_parallel(elaborate_file(GPT2, overrides={**GPT2_TINY, "vocab": 65, "heads": 4}), tp=4)
    assert "vocabulary of 'transformer.wte'" in err.value.message and err.value.span is not None
    assert "pad it" in (err.value.hint or "")


def test_a_split_axis_that_an_op_reduces_is_a_located_error(tmp_path: Path) -> None:
    spec = tmp_path / "gate.arch"
    spec.write_text("axis B, T, D\n\nmodel Gate(D: int = 8) (x: [B, T, D]) -> [B, T, D] {\n"
                    "    up = linear(16)\n    down = linear(D)\n"
                    "    return x >> up >> softmax(dim=-1) >> down\n}\n")
    graph = elaborate_file(spec)
    with pytest.raises(ArchError) as err:
        plan_parallel(graph, tp=2)
    text = err.value.render()
    assert "softmax reads the 16 output features of 'up'" in text
    assert err.value.span is not None and (err.value.span.line, err.value.span.col) == (6, 23)
    assert "replicate=['up']" in (err.value.hint or "")
    kept = plan_parallel(graph, tp=2, replicate=("up",))  # the way out the hint names
    assert all(p.path != "up" for p in kept.placements)


def test_planner_does_not_import_torch() -> None:
    code = "import sys, archc.analysis.parallel; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sequence_parallel_gpt2_plan_is_torchtitans() -> None:
    plan = plan_parallel(elaborate_file(GPT2, overrides=GPT2_TINY), tp=2, sp=True)
    styles = {(p.path, p.style, p.seq) for p in plan.placements}
    assert ("transformer.h", "split_stream", 1) in styles
    for i in range(2):
        assert {(f"transformer.h.{i}.{n}", "sequence", 1) for n in ("ln_1", "ln_2")} <= styles
        assert {(f"transformer.h.{i}.{n}", "gather_input", 1) for n in ("attn", "mlp")} <= styles
        assert {(f"transformer.h.{i}.{n}.c_proj", "rowwise", 1) for n in ("attn", "mlp")} <= styles
    assert plan.sp


def test_sequence_parallel_llama_plan_is_torchtitans() -> None:
    """Llama's layers also take the rotary tables (an nn.ModuleList, no stack module): the first
    layer slices the stream, the last gathers it; attention gathers the stream and takes the
    tables whole; norms SequenceParallel; o_proj and down_proj reduce-scatter."""
    overrides = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                 "num_attention_heads": 4, "num_key_value_heads": 2}
    plan = plan_parallel(elaborate_file(LLAMA, overrides=overrides), tp=2, sp=True)
    styles = {p.path: p for p in plan.placements}
    assert (styles["model.layers.0"].style, styles["model.layers.0"].inputs) == ("split_layers", (True, False, False))
    assert (styles["model.layers.2"].style, styles["model.layers.2"].outputs) == ("split_layers", (True,))
    assert "model.layers.1" not in styles and "model.layers" not in styles
    for i in range(3):
        layer = f"model.layers.{i}"
        assert (styles[f"{layer}.self_attn"].style, styles[f"{layer}.self_attn"].inputs) == \
            ("gather_input", (True, False, False))
        assert (styles[f"{layer}.mlp"].style, styles[f"{layer}.mlp"].inputs) == ("gather_input", (True,))
        # only their column linears read the gathered input: a DTensor, its gradient reduce-scattered
        assert not styles[f"{layer}.self_attn"].local and not styles[f"{layer}.mlp"].local
        assert {styles[f"{layer}.{n}"].seq for n in ("self_attn.o_proj", "mlp.down_proj")} == {1}
        assert {styles[f"{layer}.{n}"].style for n in ("input_layernorm", "post_attention_layernorm")} == {"sequence"}
    assert "model.norm" not in styles  # after the gather: whole


def test_sequence_parallel_refusals_are_located() -> None:
    """ViT's 5 tokens do not split over 2 ranks; hyper-connections' streams are rearranged and
    weighted by parameters whose gradients no placement rule sums."""
    with pytest.raises(ArchError) as err:
        plan_parallel(elaborate_file(VIT, overrides=VIT_TINY), tp=2, sp=True)
    assert "splits the 5 positions of the stream of 'blocks'" in err.value.message and err.value.span
    with pytest.raises(ArchError) as err:
        plan_parallel(elaborate_file(GPT2, overrides={**GPT2_TINY, "connect": "hyper(n=2)"}), tp=2, sp=True)
    assert err.value.message.startswith("sequence parallelism: ") and err.value.span is not None


_SIDE_INPUT = """axis B, T, D

block Mlp(hidden: int) (x: [B, T, D], g: [B, T, D]) -> [B, T, D] {
    up = linear(hidden)
    down = linear(D)
    return OUT
}

block Layer(hidden: int) (x: [B, T, D], side: [B, T, D]) -> ([B, T, D], [B, T, D]) {
    ln = rmsnorm()
    mlp = Mlp(hidden)
    BODY
    return x, side
}

model M(vocab: int = 64, dim: int = 32) (tokens: i64[B, T]) -> [B, T, vocab] {
    wte = embedding(vocab, dim)
    layers = stack(2) { Layer(4 * dim) }
    head = linear(vocab, bias=false)
    e = wte(tokens)
    x, _ = layers(e, e * 2.0)
    return head(x)
}
"""


@pytest.mark.parametrize(("out", "body", "message", "line"), [
    # a side input passes whole (Llama's rotary tables: tested with the Llama spec), so it cannot
    # meet the reduce-scattered row output inside the block, nor the split stream in the layer
    ("down(gelu(up(x))) * g", "x = x + mlp(ln(x), side)", "mul reads the stream split along the sequence with a "
     "tensor that is whole along it", 6),
    ("down(gelu(up(x))) + g", "x = x + mlp(ln(x), ln(x))", "'layers.0.mlp' reads the split stream in more than its "
     "first input", 6),
    ("down(gelu(up(x)))", "x = x + side", "add reads the stream split along the sequence with a tensor that is "
     "whole along it", 12),
])
def test_sequence_parallel_side_inputs(tmp_path: Path, out: str, body: str, message: str, line: int) -> None:
    """A stack whose layers take a second [B, T, D] input besides the stream: located refusals."""
    spec = tmp_path / "side.arch"
    spec.write_text(_SIDE_INPUT.replace("OUT", out).replace("BODY", body))
    with pytest.raises(ArchError) as err:
        plan_parallel(elaborate_file(spec), tp=2, sp=True)
    assert err.value.message == f"sequence parallelism: {message}" and err.value.span.line == line


def test_sequence_parallel_layer_that_is_its_own_mixture_is_a_located_error(tmp_path: Path) -> None:
    """A layer that holds its router itself (no block of its own for the mixture) and takes a load
    accumulator: the layer would gather the stream and also be the stack's split end."""
    spec = tmp_path / "moe_layer.arch"
    spec.write_text("""axis B, T, D

block Layer(experts: int) (x: [B, T, D], load: f32[2, experts]) -> ([B, T, D], f32[2, experts]) {
    gate = linear(experts, bias=false)
    mix = moe_experts(experts, 64)
    logits = gate(x)
    weights, index = moe_router(logits, 2)
    return x + mix(x, weights, index), load + moe_load(logits, index)
}

model M(vocab: int = 64, dim: int = 32) (tokens: i64[B, T]) -> [B, T, vocab] {
    wte = embedding(vocab, dim)
    layers = stack(2) { Layer(4) }
    head = linear(vocab, bias=false)
    x, _ = layers(wte(tokens), full(tokens, [2, 4]))
    return head(x)
}
""")
    with pytest.raises(ArchError) as err:
        plan_parallel(elaborate_file(spec), tp=2, sp=True)
    assert "the layer 'layers.0' is itself the block that gathers the stream" in err.value.message
    assert err.value.span is not None and err.value.span.line == 13


def test_a_split_that_leaves_the_model_is_a_located_error(tmp_path: Path) -> None:
    """A linear whose split features reach the output through gelu is not a head (its output is
    not the model's output as is): nothing gathers it, so the plan refuses it at the linear."""
    spec = tmp_path / "up.arch"
    spec.write_text("axis B, D\n\nmodel Up(D: int = 8) (x: [B, D]) -> [B, 16] {\n"
                    "    up = linear(16)\n    return x >> up >> gelu\n}\n")
    with pytest.raises(ArchError) as err:
        plan_parallel(elaborate_file(spec), tp=2)
    assert "the 16 output features of 'up' would leave the block split over the ranks" in err.value.message
    assert err.value.span is not None and err.value.span.line == 5


def test_llama_plan_is_torchtitans() -> None:
    """q, k, v (and gate, up) read one input and are split together; rotary's rotate_half concats
    along the head dimension, not the split heads; grouped-query attention keeps 2 of 4 heads and
    1 of 2 key/value heads per rank."""
    graph = elaborate_file(specs_root() / "models" / "llama.arch",
                           overrides={"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                      "max_position_embeddings": 16})
    plan = plan_parallel(graph, tp=2)
    layer = {(p.path.removeprefix("model.layers.0."), p.style, p.chunks) for p in plan.placements
             if p.path.startswith("model.layers.0.")}
    assert layer == {("self_attn.q_proj", "colwise", 1), ("self_attn.k_proj", "colwise", 1),
                     ("self_attn.v_proj", "colwise", 1), ("self_attn.o_proj", "rowwise", 1),
                     ("mlp.gate_proj", "colwise", 1), ("mlp.up_proj", "colwise", 1), ("mlp.down_proj", "rowwise", 1)}
    assert ("model.embed_tokens", "embedding") in {(p.path, p.style) for p in plan.placements}
    with pytest.raises(ArchError, match="axis 'h' \\(the heads\\) \\(2\\), which 4 does not divide"):
        plan_parallel(graph, tp=4)  # 2 key/value heads


def test_replicate_patterns_cover_every_layer() -> None:
    """DiT's adaLN modulation is chunked along its split features (no rule): the error's hint names
    the module in every layer with `*`, and with it (and the final layer) kept whole the attention
    and MLPs are split. The heads are read from the tensor even when the strict plan fails."""
    graph = elaborate_file(specs_root() / "examples" / "dit_tiny.arch")
    with pytest.raises(ArchError) as err:
        plan_parallel(graph, tp=2)
    assert "replicate=['blocks.*.adaLN_modulation.1']" in (err.value.hint or "")
    plan = plan_parallel(graph, tp=2, replicate=("blocks.*.adaLN_modulation", "final_layer"))
    styles = {(p.path, p.style, p.chunks) for p in plan.placements}
    assert ("blocks.1.attn.qkv", "colwise", 3) in styles and ("blocks.1.mlp.fc2", "rowwise", 1) in styles
    assert not any("adaLN" in p.path or p.path.startswith("final_layer") for p in plan.placements)
    assert set(local_axes(graph).values()) == {frozenset({"h"})}
