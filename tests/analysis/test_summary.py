"""archc summary: per-block parameters, FLOPs and activation memory, against counts made by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archc import cli
from archc.analysis.structure import run_label, runs, scope_tree, signature
from archc.analysis.summary import axis_values, evaluate, format_table, summarize
from archc.elaborate import elaborate_file, elaborate_text
from archc.errors import ArchError
from archc.sizes import Size, parse_size

ROOT = Path(__file__).resolve().parents[2]
GPT = ROOT / "specs" / "examples" / "gpt_tiny.arch"


def gpt_params(vocab: int, D: int, depth: int, max_len: int = 1024) -> int:
    """GPT of gpt_tiny.arch, counted from its definition."""
    layer = 2 * (2 * D) + (3 * D * D + 3 * D) + (D * D + D) + (4 * D * D + 4 * D) + (4 * D * D + D)
    return vocab * D + max_len * D + depth * layer + 2 * D + vocab * D


def gpt_flops(vocab: int, D: int, depth: int, T: int, B: int = 1) -> int:
    """matmul FLOPs (2 per multiply-add) of gpt_tiny.arch: four linears and attention per layer."""
    linears = 2 * B * T * (3 * D * D + D * D + 4 * D * D + 4 * D * D)
    attention = 2 * 2 * B * T * T * D  # q k^T and (attn) v over all heads
    return depth * (linears + attention) + 2 * B * T * D * vocab


def test_totals_match_hand_counts() -> None:
    g = elaborate_file(GPT, overrides={"depth": 3, "D": 96, "heads": 4, "vocab": 500})
    s = summarize(g, batch=2, axes={"T": 64})
    assert s.total.params == g.param_count() == gpt_params(500, 96, 3)
    assert s.total.flops == gpt_flops(500, 96, 3, 64, B=2)
    assert s.total.macs == s.total.flops // 2
    assert s.axes == {"B": 2, "T": 64}


def test_rows_nest_and_collapse_identical_layers() -> None:
    g = elaborate_file(GPT, overrides={"depth": 12, "D": 64, "heads": 4})
    s = summarize(g, max_depth=2)
    names = [r.name for r in s.rows]
    assert names[:3] == ["wte", "wpe", "h"]
    assert "h.0-11 (x12)" in names
    layer = next(r for r in s.rows if r.name == "h.0-11 (x12)")
    stack = next(r for r in s.rows if r.name == "h")
    assert layer.count == 12 and stack.kind == "stack x12"
    assert stack.params == 12 * layer.params and stack.flops == 12 * layer.flops
    assert layer.output == "f32[B, T, D=64]"
    # the numbers of the rows at depth 1 (and the ops written at the top) add up to the total
    top = [r for r in s.rows if r.depth == 1]
    assert sum(r.flops for r in top) == s.total.flops
    assert sum(r.act_bytes for r in top) == s.total.act_bytes
    assert sum(r.params for r in top) == s.total.params


def test_depth_opens_blocks() -> None:
    g = elaborate_file(GPT, overrides={"depth": 2})
    shallow = [r.name for r in summarize(g, max_depth=1).rows]
    deep = [r.name for r in summarize(g, max_depth=3).rows]
    assert "h.0-1 (x2)" not in shallow
    assert {"h.0-1 (x2)", "h.0.attn", "h.0.mlp", "h.0.ln_1"} <= set(deep)


def test_activation_bytes_follow_batch_and_axes() -> None:
    g = elaborate_file(GPT)
    one = summarize(g, batch=1, axes={"T": 32}).total.act_bytes
    four = summarize(g, batch=4, axes={"T": 32}).total.act_bytes
    wpe = next(r for r in summarize(g, batch=4, axes={"T": 32}).rows if r.name == "wpe")
    assert wpe.act_bytes == 32 * 64 * 4  # f32[T, 64] has no batch axis
    assert four - wpe.act_bytes == 4 * (one - wpe.act_bytes)


def test_axis_defaults_to_the_positions_table() -> None:
    g = elaborate_file(GPT)
    assert axis_values(g) == {"B": 1, "T": 1024}
    assert axis_values(g, batch=8, axes={"T": 16}) == {"B": 8, "T": 16}


def test_an_axis_without_a_value_is_an_error() -> None:
    g = elaborate_text("axis B, H\nmodel M () (x: [B, H, 8]) -> [B, H, 4] {\n  return linear(x, 4)\n}\n")
    with pytest.raises(ArchError, match="'H' has no value") as err:
        summarize(g)
    assert "--axis H=N" in (err.value.hint or "")
    assert summarize(g, axes={"H": 3}).total.flops == 2 * 3 * 8 * 4


def test_evaluate_floor_atoms() -> None:
    size = parse_size("floor(H + 1, 2)") * 3 + Size.sym("B")
    assert evaluate(size, {"H": 7, "B": 2}) == 3 * 4 + 2


def test_stack_runs_and_signatures() -> None:
    g = elaborate_file(GPT, overrides={"depth": 3})
    tree = scope_tree(g)
    assert runs(tree, "h") == [["h.0", "h.1", "h.2"]]
    assert run_label(["h.0", "h.1", "h.2"]) == "h.0-2"
    assert signature(tree, "h.0") == signature(tree, "h.2")
    assert signature(tree, "h.0") != signature(tree, "wte")


def test_table_text() -> None:
    text = format_table(summarize(elaborate_file(GPT, overrides={"depth": 4})))
    assert text.splitlines()[0] == "GPT  (B=1, T=1024)"
    assert "h.0-3 (x4)" in text and "total" in text and "stack x4" in text
    assert "rows marked (xN)" in text


def test_cli_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["summary", str(GPT), "--set", "depth=3", "--batch", "2", "--axis", "T=8"]) == 0
    out = capsys.readouterr().out
    assert "GPT  (B=2, T=8)" in out and "h.0-2 (x3)" in out
    assert cli.main(["summary", str(GPT), "--json", "--depth", "1", "--axis", "T=8"]) == 0
    data = json.loads(capsys.readouterr().out)
    g = elaborate_file(GPT)
    assert data["total"]["params"] == g.param_count()
    assert data["axes"] == {"B": 1, "T": 8}
    assert [r["name"] for r in data["rows"]][:3] == ["wte", "wpe", "h"]
    assert all(r["depth"] <= 1 for r in data["rows"])


def test_cli_bad_axis(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["summary", str(GPT), "--axis", "T=zero"]) == 1
    assert "--axis takes NAME=N" in capsys.readouterr().err


TIED = """axis B, T
model Tied(vocab: int = 50, D: int = 8) (tokens: i64[B, T]) -> f32[B, T, vocab] {
    wte = embedding(vocab, D)
    ln = layernorm()
    x = ln(wte(tokens))
    @scope("wte")
    logits = linear(x, vocab, bias = false)
    return logits
}
"""


def test_a_tied_use_counts_where_it_is_used() -> None:
    """The logits reuse wte's weight through @scope: their FLOPs are the model's, not wte's."""
    g = elaborate_text(TIED)
    s = summarize(g, axes={"T": 4})
    wte = next(r for r in s.rows if r.name == "wte")
    ops = next(r for r in s.rows if r.name == "(ops)")
    assert wte.params == 50 * 8 and wte.flops == 0
    assert ops.kind == "linear (shares wte)" and ops.flops == 2 * 4 * 8 * 50
    assert s.total.params == 50 * 8 + 16


def test_human_units() -> None:
    from archc.analysis.summary import human

    assert human(999) == "999" and human(1234567) == "1.23M" and human(3.63e9) == "3.63G"
    assert human(1000 * 1024, "B", 1024) == "1000 KiB" and human(1536, "B", 1024) == "1.5 KiB"
    assert human(512, "B", 1024) == "512 B"
