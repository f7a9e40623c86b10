"""`archc summary llama` without --axis: a model with no positions table takes its token axis at
its context length (`max_position_embeddings`) and says so in a note; the numbers are those of
`--axis T=<that length>`, and an axis given wins. Elsewhere an axis without a value is still an error."""

from __future__ import annotations

import json

import pytest

from archc import zoo
from archc.analysis.summary import summarize
from archc.cli import main
from archc.elaborate import elaborate_file, elaborate_text
from archc.errors import ArchError

SMALL = ["--set", "num_hidden_layers=2", "--set", "hidden_size=64", "--set", "intermediate_size=96",
         "--set", "num_attention_heads=4", "--set", "num_key_value_heads=2", "--set", "vocab_size=128"]
OVERRIDES = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 128}


def test_llama_summary_runs_at_its_context_length(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "llama", *SMALL, "--set", "max_position_embeddings=96", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    graph = elaborate_file(zoo.spec_path("llama"), overrides={**OVERRIDES, "max_position_embeddings": 96})
    given = summarize(graph, axes={"T": 96})
    assert got["axes"] == {"B": 1, "T": 96}
    assert got["total"]["flops"] == given.total.flops > 0
    assert got["total"]["act_bytes"] == given.total.act_bytes
    assert got["axis_notes"] == ["T = 96: the model's max_position_embeddings (the spec has no positions table); "
                                 "give --axis T=N for another length"]
    assert given.axis_notes == ()  # T was given: nothing to say


def test_the_note_is_in_the_table_and_an_axis_given_wins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "llama", *SMALL]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "LlamaForCausalLM  (B=1, T=2048)"
    assert "T = 2048: the model's max_position_embeddings" in out
    assert main(["summary", "llama", *SMALL, "--axis", "T=16"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "LlamaForCausalLM  (B=1, T=16)" and "max_position_embeddings" not in out


def test_only_the_token_axis_of_a_model_with_a_context_length() -> None:
    # a float input's axis is no token axis; a model without the parameter has no default
    floats = "axis B, T\nmodel M (max_position_embeddings: int = 8) (x: [B, T, 4]) -> [B, T, 4] {\n" \
             "  return linear(x, 4)\n}\n"
    with pytest.raises(ArchError, match="'T' has no value"):
        summarize(elaborate_text(floats))
    tokens = "axis B, T\nmodel M (width: int = 8) (x: i64[B, T]) -> [B, T, 4] {\n" \
             "  return embedding(x, 10, 4)\n}\n"
    with pytest.raises(ArchError, match="'T' has no value"):
        summarize(elaborate_text(tokens))
    counted = elaborate_text(tokens.replace("width", "max_position_embeddings"))
    assert summarize(counted).axes == {"B": 1, "T": 8}
