"""hoist_constants: tables computed from constants alone become non-persistent buffers, computed
once when the module is built. The hoisted build equals the one that computes them per forward
(bit for bit), keeps its state_dict (Hugging Face's Llama loads with strict=True and its logits
agree), keeps the table's dtype and follows the device under `.to()` and `to_empty()`, and runs
under the fx backend and torch.compile."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from passes_harness import SPECS

from archc import zoo
from archc.elaborate import elaborate_file
from archc.ir.graph import Graph
from archc.passes.hoist_constants import constant_nodes
from archc.passes.manager import LEVELS, run_pipeline

torch = pytest.importorskip("torch")

from archc.backends.torch import build_module

EXAMPLES = Path(__file__).resolve().parents[2] / "specs" / "examples"
TINY = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False}


def _llama(**over: Any) -> Graph:
    return elaborate_file(zoo.spec_path("llama"), overrides={**TINY, **over})


def _hoisted(graph: Graph) -> Graph:
    return run_pipeline(graph, ["hoist_constants"]).graph


def _marked(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes if any(a.name == "constant" for a in n.annotations)]


def _pair(graph: Graph, seed: int = 0) -> tuple[Any, Any]:
    """The model as written and hoisted, with the same weights."""
    torch.manual_seed(seed)
    plain = build_module(graph).eval()
    hoisted = build_module(_hoisted(graph)).eval()
    hoisted.load_state_dict(plain.state_dict(), strict=True)
    return plain, hoisted


def _tokens(length: int, seed: int = 1) -> Any:
    return torch.randint(0, 128, (2, length), generator=torch.Generator().manual_seed(seed))


def test_what_is_constant() -> None:
    """In the test spec: the frequencies (arange with a fixed end, then mul/pow/div) and exp of a
    full are hoisted; the angles over T, the lone `full` and the dropout after exp are not."""
    graph = elaborate_file(SPECS / "rotary.arch")
    ops = [n.op for n in graph.nodes]
    const = {ops[i] + str(i) for i in constant_nodes(graph)}
    assert const == {"arange0", "mul1", "pow2", "div3", "full10", "full13", "exp14"}, const
    assert _marked(_hoisted(graph)) == ["div", "exp"]


def test_llama_marks_only_inv_freq() -> None:
    assert _marked(_hoisted(_llama())) == ["div"]  # inv_freq; cos/sin depend on T
    assert "hoist_constants" in LEVELS[1] and LEVELS[2][-1] == "hoist_constants"


def test_llama_hoisted_equals_per_forward_and_keeps_its_state_dict() -> None:
    plain, hoisted = _pair(_llama())
    assert set(hoisted.state_dict()) == set(plain.state_dict())
    buffers = dict(hoisted.named_buffers())
    assert list(buffers) == ["model.rotary_emb.const_div"]
    assert "model.rotary_emb.const_div" not in hoisted.state_dict()
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))  # Hugging Face's
    assert torch.equal(buffers["model.rotary_emb.const_div"], inv_freq)
    for length in (1, 13):
        with torch.no_grad():
            assert torch.equal(hoisted(_tokens(length)), plain(_tokens(length)))


def test_llama_hoisted_matches_hf(transformers: ModuleType) -> None:
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).eval()
    model = build_module(_hoisted(_llama())).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(_tokens(13)), ref(_tokens(13)).logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.model.rotary_emb.const_div, ref.model.rotary_emb.inv_freq)


def test_the_table_keeps_its_dtype_under_to() -> None:
    """`.to(bf16)` casts the weights; the table stays the f32 one the spec computes (Hugging Face
    computes inv_freq in f32 too), so the bf16 hoisted model equals the bf16 per-forward one."""
    plain, hoisted = _pair(_llama())
    plain, hoisted = plain.to(torch.bfloat16), hoisted.to(torch.bfloat16)
    table = hoisted.model.rotary_emb.const_div
    assert table.dtype == torch.float32 and hoisted.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(table, 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16)))
    with torch.no_grad():
        assert torch.equal(hoisted(_tokens(13)), plain(_tokens(13)))


def test_llama_bf16_build_hoisted_equals_per_forward() -> None:
    graph = elaborate_file(zoo.spec_path("llama"), overrides=TINY, dtype="bf16")
    plain, hoisted = _pair(graph)
    assert hoisted.model.rotary_emb.const_div.dtype == torch.float32
    with torch.no_grad():
        got, expected = hoisted(_tokens(13)), plain(_tokens(13))
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)


def test_meta_then_to_empty_computes_the_table_again() -> None:
    graph = _hoisted(_llama())
    with torch.device("meta"):
        model = build_module(graph)
    assert model.model.rotary_emb.const_div.is_meta
    model.to_empty(device="cpu")
    expected = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))
    assert torch.equal(model.model.rotary_emb.const_div, expected)


def test_copies_keep_the_table() -> None:
    _, hoisted = _pair(_llama())
    with torch.no_grad():
        expected = hoisted(_tokens(5))
    for other in (copy.deepcopy(hoisted), pickle.loads(pickle.dumps(hoisted))):
        assert torch.equal(other.model.rotary_emb.const_div, hoisted.model.rotary_emb.const_div)
        with torch.no_grad():
            assert torch.equal(other(_tokens(5)), expected)


def test_fx_backend_and_torch_compile() -> None:
    from archc.backends.fx import build_graph_module

    graph = _llama(num_hidden_layers=1)
    plain, hoisted = _pair(graph)
    with torch.no_grad():
        expected = plain(_tokens(7))
        gm = build_graph_module(_hoisted(graph), hoisted)
        assert torch.equal(gm(_tokens(7)), expected)
        compiled = torch.compile(hoisted, backend="aot_eager", dynamic=False)
        torch.testing.assert_close(compiled(_tokens(7)), expected, rtol=1e-5, atol=1e-5)


def test_dit_timestep_frequencies_are_hoisted() -> None:
    graph = elaborate_file(EXAMPLES / "dit_tiny.arch", overrides={"depth": 1})
    assert _marked(_hoisted(graph)) == ["exp"]
    plain, hoisted = _pair(graph)
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.rand(2, generator=g) * 1000
    with torch.no_grad():
        for p in plain.parameters():  # DiT's zero-initialized layers would hide a wrong table
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        hoisted.load_state_dict(plain.state_dict(), strict=True)
        assert torch.equal(hoisted(x, t), plain(x, t))


def test_the_generated_file_computes_the_table_once() -> None:
    from archc.backends.torch import emit_python

    text = emit_python(_hoisted(_llama(num_hidden_layers=1)))
    assert text.count("register_buffer('const_div', torch.empty(0), persistent=False)") == 1
    assert "div = self.const_div" in text and text.count("torch.arange(0, 16, 2") == 1
    methods = text.split("    def ")
    assert any(m.startswith("reset_constants(") and "torch.arange(0, 16, 2" in m for m in methods)
    assert not any(m.startswith("forward(") and "torch.arange(0, 16, 2" in m for m in methods)


@pytest.mark.slow  # Inductor compiles C++ kernels: tens of seconds on a small CPU
def test_torch_compile_inductor() -> None:
    graph = _llama(num_hidden_layers=1)
    plain, hoisted = _pair(graph)
    with torch.no_grad():
        expected = plain(_tokens(7))
        torch.testing.assert_close(torch.compile(hoisted)(_tokens(7)), expected, rtol=1e-5, atol=1e-5)
