"""Tensor-parallel plans of mixtures of experts (archc/analysis/parallel.py): the router stays whole,
stacked experts split their hidden features, block experts split as dense MLPs, and the refusals
are located errors. The numerics under torch.distributed are in
tests/distributed/test_parallelize_moe.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from archc.analysis.parallel import plan_parallel
from archc.elaborate import elaborate_file
from archc.errors import ArchError
from archc.resources import specs_root

MIXTRAL = specs_root() / "models" / "mixtral.arch"
ANY = specs_root() / "examples" / "moe_any_expert.arch"
MIXTRAL_TINY = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 16,
                "num_local_experts": 4, "num_experts_per_tok": 2}
ANY_TINY = {"vocab": 64, "dim": 32, "depth": 2, "heads": 2, "max_len": 16, "num_experts": 4}


def _styles(plan) -> list[tuple[str, str, int]]:
    return [(p.path, p.style, p.chunks) for p in plan.placements]


def test_mixtral_plan_is_torchtitans() -> None:
    """torchtitan's MoE plan: the router (`gate`) replicated, the experts' w1/w3 (here gate_up_proj,
    gate and up alike) column-wise and w2 (down_proj) row-wise; the attention as Llama's."""
    plan = plan_parallel(elaborate_file(MIXTRAL, overrides=MIXTRAL_TINY), tp=2)
    layer = [("self_attn.q_proj", "colwise", 1), ("self_attn.k_proj", "colwise", 1),
             ("self_attn.v_proj", "colwise", 1), ("self_attn.o_proj", "rowwise", 1), ("mlp.experts", "experts", 2)]
    want = [("model.embed_tokens", "embedding", 1)] + \
        [(f"model.layers.{i}.{path}", style, chunks) for i in range(2) for path, style, chunks in layer] + \
        [("lm_head", "head", 1)]
    assert _styles(plan) == want
    assert plan.styles()["model.layers.0.mlp.experts"].why == "4 experts of 64 hidden features, gate and up split alike"


def test_mixtral_written_plan() -> None:
    """`archc build --parallel` writes the experts' style into the layer's plan; the router is not in it."""
    from archc.backends.torch.parallel_emit import parallel_source

    text = parallel_source(plan_parallel(elaborate_file(MIXTRAL, overrides=MIXTRAL_TINY), tp=2), "MixtralForCausalLM")
    assert "'mlp.experts': ExpertsTensorParallel(2),  # 4 experts of 64 hidden features, gate and up split alike" \
        in text
    assert "'mlp.gate'" not in text and "class ExpertsTensorParallel(ParallelStyle)" in text


def test_plain_mlp_experts_split_in_one_block(tmp_path: Path) -> None:
    spec = tmp_path / "mlp.arch"
    spec.write_text("axis B, T, D\n\nmodel M (x: [B, T, 16]) -> [B, T, 16] {\n"
                    "    gate = linear(4, bias=false)\n    experts = moe_experts(4, 8, kind=\"mlp\", act=\"gelu\")\n"
                    "    weights, index = moe_router(gate(x), 2)\n    return experts(x, weights, index)\n}\n")
    assert _styles(plan_parallel(elaborate_file(spec), tp=2)) == [("experts", "experts", 1)]


def test_block_experts_split_as_dense_mlps() -> None:
    """Qwen2-MoE's block: each SwiGLU expert and the shared expert column/row split; the router and
    the shared expert's scalar gate (one output feature) stay whole."""
    plan = plan_parallel(elaborate_file(ANY, overrides=ANY_TINY), tp=2)
    styles = plan.styles()
    moe = "h.0.shared_expert_moe"
    for e in range(4):
        expert = f"{moe}.experts.{e}"
        assert [styles[f"{expert}.{k}"].style for k in ("gate_proj", "up_proj", "down_proj")] == \
            ["colwise", "colwise", "rowwise"]
    assert [styles[f"{moe}.shared_expert.{k}"].style for k in ("gate_proj", "up_proj", "down_proj")] == \
        ["colwise", "colwise", "rowwise"]
    assert f"{moe}.gate" not in styles and f"{moe}.shared_expert_gate" not in styles


def test_undivided_expert_hidden_size_is_a_located_error() -> None:
    graph = elaborate_file(MIXTRAL, overrides={**MIXTRAL_TINY, "intermediate_size": 33})
    with pytest.raises(ArchError) as err:
        plan_parallel(graph, tp=2)
    assert "splits the hidden features of each expert of 'model.layers.0.mlp.experts' (33), which 2 does not divide" \
        in err.value.message
    assert err.value.span is not None and err.value.span.line == 31  # `experts(x, weights, index)`
    assert "divides 33" in (err.value.hint or "")


def test_grouped_experts_need_whole_rows_per_rank() -> None:
    """impl="grouped" (torch._grouped_mm) needs rows of 16-byte multiples, also of a rank's part."""
    graph = elaborate_file(MIXTRAL, overrides={**MIXTRAL_TINY, "intermediate_size": 36, "experts_impl": "grouped"})
    with pytest.raises(ArchError) as err:
        plan_parallel(graph, tp=2)
    assert "leaves each rank 18 of the 36 hidden features" in err.value.message and err.value.span is not None
    assert plan_parallel(graph, tp=1).tp == 1


def test_single_neuron_experts_are_refused_with_a_hint_for_every_expert() -> None:
    """PEER-like experts (linear(1) then linear(D)): the neuron is whole and the expert's output
    linear would start a split that leaves the expert; the hint keeps it whole in every layer and
    expert, and the plan then holds."""
    graph = elaborate_file(ANY, overrides={**ANY_TINY, "ff": "neurons"})
    with pytest.raises(ArchError) as err:
        plan_parallel(graph, tp=2)
    assert "moe_combine reads the 32 output features of 'h.0.neuron_moe.experts.0.up'" in err.value.message
    assert err.value.span is not None
    assert "replicate=['h.*.neuron_moe.experts.*.up']" in (err.value.hint or "")
    plan = plan_parallel(graph, tp=2, replicate=("h.*.neuron_moe.experts.*.up",))
    assert not any(".experts." in p.path for p in plan.placements)


def test_sequence_parallel_mixtral_gathers_around_the_mixture() -> None:
    """Mixtral's layers take the rotary tables and the load statistics besides the stream: the
    first layer splits the stream (its first input) and the last gathers it (its first output),
    the others pass whole; the mixture runs on the gathered sequence and reduce-scatters its
    experts' partial sums (torchtitan's MoE plan), its load statistics whole."""
    plan = plan_parallel(elaborate_file(MIXTRAL, overrides=MIXTRAL_TINY), tp=2, sp=True)
    styles = {p.path: p for p in plan.placements}
    first, last = styles["model.layers.0"], styles["model.layers.1"]
    assert (first.style, first.inputs, first.outputs) == ("split_layers", (True, False, False, False), ())
    assert (last.style, last.inputs, last.outputs) == ("split_layers", (), (True, False))
    assert first.where == "mixtral.arch:54:14"
    for i in range(2):
        moe = styles[f"model.layers.{i}.mlp"]
        assert (moe.style, moe.seq, moe.inputs, moe.outputs) == ("gathered", 1, (True,), (True, False))
        experts = styles[f"model.layers.{i}.mlp.experts"]  # partial sums, reduce-scattered by the block
        assert (experts.style, experts.shard_output, moe.shard_output) == ("experts", True, True)
        assert f"model.layers.{i}.mlp.gate" not in styles  # the router stays whole
        assert styles[f"model.layers.{i}.self_attn.o_proj"].seq == 1  # reduce-scattered
        assert styles[f"model.layers.{i}.post_attention_layernorm"].style == "sequence"


def test_expert_parallel_plan_splits_the_experts_over_the_data_parallel_ranks() -> None:
    """With ep, the stacked experts leave the tensor-parallel plan; the written function gives them
    ExpertParallel over "dp" and keeps them out of FSDP."""
    from archc.backends.torch.parallel_emit import parallel_source

    plan = plan_parallel(elaborate_file(MIXTRAL, overrides=MIXTRAL_TINY), tp=2, ep=2)
    assert plan.experts == ("model.layers.0.mlp.experts", "model.layers.1.mlp.experts") and plan.ep == 2
    assert all(p.style != "experts" for p in plan.placements)
    text = parallel_source(plan, "MixtralForCausalLM")
    assert "experts = ('model.layers.0.mlp.experts', 'model.layers.1.mlp.experts')  # expert parallelism: 2 ranks" \
        in text
    assert "parallelize_module(model.get_submodule(path), dp_mesh, ExpertParallel())" in text
    assert "'ignored_params': _kept_whole(model, dp_mesh) | _expert_params(model, experts, dp_mesh)" in text


def test_expert_parallel_refusals_are_located(tmp_path: Path) -> None:
    with pytest.raises(ArchError) as err:
        plan_parallel(elaborate_file(MIXTRAL, overrides=MIXTRAL_TINY), ep=3)
    assert "splits the 4 experts of 'model.layers.0.mlp.experts', which 3 does not divide" in err.value.message
    assert err.value.span is not None and err.value.span.line == 31
    spec = tmp_path / "capacity.arch"
    spec.write_text("axis B, T, D\n\nmodel M (x: [B, T, 16]) -> [B, T, 16] {\n"
                    "    gate = linear(4, bias=false)\n    experts = moe_experts(4, 8, capacity=1.25)\n"
                    "    weights, index = moe_router(gate(x), 2)\n    return experts(x, weights, index)\n}\n")
    with pytest.raises(ArchError) as err:
        plan_parallel(elaborate_file(spec), ep=2)
    assert "have a capacity" in err.value.message and err.value.span is not None and err.value.span.line == 7
    assert plan_parallel(elaborate_file(spec), tp=2).styles()["experts"].style == "experts"  # TP splits it
    with pytest.raises(ArchError) as err:  # block experts: nothing ep splits
        plan_parallel(elaborate_file(ANY, overrides=ANY_TINY), ep=2)
    assert "this model has none (a mixture of block experts" in err.value.message and err.value.span is not None


def _doc_block(after: str) -> list[str]:
    """The lines of the first ```python block after `after` in docs/parallel.md, stripped."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "parallel.md").read_text(encoding="utf-8")
    block = doc.split(after, 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize(("heading", "ep"), [("### Mixtures of experts", 1), ("The written `parallelize`", 2)])
def test_the_moe_plans_in_the_docs_are_the_ones_built(heading: str, ep: int) -> None:
    from archc.backends.torch.parallel_emit import parallel_source

    built = parallel_source(plan_parallel(elaborate_file(MIXTRAL, overrides=MIXTRAL_TINY), tp=2, ep=ep), "M")
    lines = {line.strip() for line in built.splitlines()}
    assert [line for line in _doc_block(heading) if line not in lines] == []


def test_expert_parallelism_needs_a_data_parallel_mesh() -> None:
    import archc

    class Mesh:  # what parallelize reads of a DeviceMesh before it splits anything
        mesh_dim_names, ndim = ("tp",), 1

    model = archc.compile(MIXTRAL, **MIXTRAL_TINY)
    with pytest.raises(ArchError, match="expert parallelism splits the experts over the data-parallel"):
        archc.parallelize(model, Mesh(), ep=True)


@pytest.mark.parametrize("names, size, has", [(("tp",), 2, "has none"), (("dp",), 4, "has 4")])
def test_the_written_expert_parallel_file_refuses_another_mesh(names: tuple[str, ...], size: int, has: str) -> None:
    """The file `archc build --parallel --ep 2` writes splits the experts for 2 data-parallel ranks:
    on a mesh without "dp" ranks, or with another number, it says so instead of leaving them whole."""
    import archc
    from archc import generated
    from archc.backends.torch.parallel_emit import parallel_source

    class Mesh:  # what the written parallelize reads of a DeviceMesh before it splits anything
        mesh_dim_names, ndim = names, 1

        def size(self) -> int:
            return size

    plan = plan_parallel(elaborate_file(MIXTRAL, overrides=MIXTRAL_TINY), tp=1, ep=2)
    written = generated.load(parallel_source(plan, standalone=True))
    with pytest.raises(ValueError, match=f'over 2 data-parallel \\("dp"\\) ranks; the mesh {has}'):
        written.parallelize(archc.compile(MIXTRAL, **MIXTRAL_TINY), Mesh())
