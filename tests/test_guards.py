"""Run-time guards (#11 item 2): what an op needs of a symbolic size that no check can prove is
recorded in the IR, listed by `archc check`, checked at the model's entry with a message naming the
axis, and stated to torch.export as dynamic-shape constraints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from archc.api import build
from archc.backends.fx.build import build_graph_module
from archc.backends.torch import emit_python
from archc.backends.torch.inputs import dynamic_shapes
from archc.cli import main
from archc.elaborate import elaborate_text
from archc.errors import ArchError
from archc.ir.graph import Graph
from archc.ir.printer import print_graph
from archc.ir.verify import InvalidIR, load_json

SPEC = """axis B, T
model M (x: [B, T, 8], tokens: i64[B, T]) -> [B, T/2, 8] {
    a, b = chunk(x, 2, dim=1)
    p = positions(tokens, 16, 8)
    y = x[:, 3:] + 1.0
    z = x[:, 0:3] * 2.0
    return a + b
}
"""

CONDITIONS = [("T", "divisible", 2, 3), ("T", "at_most", 16, 4), ("T", "at_least", 4, 5), ("T", "at_least", 3, 6)]


@pytest.fixture(scope="module")
def graph() -> Graph:
    return elaborate_text(SPEC, "guards.arch")


@pytest.fixture(scope="module")
def model(graph: Graph) -> torch.nn.Module:
    return build(graph)


def _inputs(t: int, b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(t)
    return torch.randn(b, t, 8, generator=gen), torch.zeros(b, t, dtype=torch.long)


def test_the_ir_records_each_condition_with_the_span_of_its_op(graph: Graph) -> None:
    got = [(g.size, g.kind, g.bound, g.span.line if g.span else None) for g in graph.guards]
    assert got == CONDITIONS


def test_a_condition_archc_can_prove_is_no_guard() -> None:
    spec = "axis B, K\nmodel M (x: [B, 2*K, 8]) -> [B, K, 8] {\n    a, b = chunk(x, 2, dim=1)\n    return a\n}\n"
    assert elaborate_text(spec, "proven.arch").guards == ()
    fixed = "axis B\nmodel M (x: [B, 8, 8]) -> [B, 4, 8] {\n    a, b = chunk(x, 2, dim=1)\n    return a\n}\n"
    assert elaborate_text(fixed, "fixed.arch").guards == ()


@pytest.mark.parametrize("t, message", [
    (5, "T must be divisible by 2, got 5 (guards.arch:3:12: chunk into 2 equal parts)"),
    (18, "T must be at most 16, got 18 (guards.arch:4:9: positions(max_len=16))"),
    (2, "T must be at least 4, got 2 (guards.arch:5:14: slice 3:)"),
])
def test_each_guard_fires_at_the_entry_with_its_message(model: torch.nn.Module, t: int, message: str) -> None:
    with pytest.raises(ValueError) as err:
        model(*_inputs(t))
    assert str(err.value) == message


@pytest.mark.parametrize("t, message", [
    (5, "T must be divisible by 2 (guards.arch:3:12: chunk into 2 equal parts)"),
    (18, "T must be at most 16 (guards.arch:4:9: positions(max_len=16))"),
    (2, "T must be at least 4 (guards.arch:5:14: slice 3:)"),
])
def test_the_fx_target_checks_the_same_guards(graph: Graph, model: torch.nn.Module, t: int, message: str) -> None:
    """The GraphModule asserts each condition at its entry (torch._assert: a constant message, so it
    names no size), and runs what the guards allow like the module."""
    gm = build_graph_module(graph, model)
    assert gm.code.count("torch._assert(") == len(CONDITIONS)
    with pytest.raises(AssertionError) as err:
        gm(*_inputs(t))
    assert str(err.value) == message
    for ok in (4, 6, 16):
        torch.testing.assert_close(gm(*_inputs(ok)), model(*_inputs(ok)), rtol=0, atol=0)


def test_inputs_the_guards_allow_run_and_match_torch(model: torch.nn.Module) -> None:
    for t in (4, 6, 16):
        x, tokens = _inputs(t)
        a, b = torch.chunk(x, 2, dim=1)
        torch.testing.assert_close(model(x, tokens), a + b, rtol=1e-6, atol=1e-6)


def test_check_lists_the_guards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "guards.arch"
    spec.write_text(SPEC)
    assert main(["check", str(spec)]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
    assert lines == [f"run-time guard: T must be divisible by 2 ({spec}:3:12: chunk into 2 equal parts)",
                     f"run-time guard: T must be at most 16 ({spec}:4:9: positions(max_len=16))",
                     f"run-time guard: T must be at least 4 ({spec}:5:14: slice 3:)",
                     f"run-time guard: T must be at least 3 ({spec}:6:14: slice 0:3)"]


def test_the_guards_are_printed_and_kept_in_json(graph: Graph) -> None:
    text = print_graph(graph)
    assert "# run-time guard: T must be divisible by 2 (chunk into 2 equal parts, guards.arch:3:12)" in text
    loaded = load_json(graph.to_json())
    assert loaded.guards == graph.guards


def test_a_loaded_graph_must_record_the_guards_its_ops_need(graph: Graph) -> None:
    data = json.loads(graph.to_json())
    data["guards"] = data["guards"][1:]
    with pytest.raises(InvalidIR, match="needs the run-time guard 'T must be divisible by 2'"):
        load_json(json.dumps(data))


@pytest.mark.parametrize("guard, message", [
    ({"size": "Q", "kind": "divisible", "bound": 2}, "no input gives the axis 'Q'"),
    ({"size": "T)", "kind": "divisible", "bound": 2}, "not a symbolic size"),
    ({"size": "T", "kind": "divisible", "bound": 0}, "greater than or equal to 1"),
    ({"size": "T", "kind": "even", "bound": 2}, "kind"),
    ({"size": "T", "kind": "at_most", "bound": "2"}, "bound"),
])
def test_a_malformed_guard_in_an_ir_file_is_refused(graph: Graph, guard: dict, message: str) -> None:
    data = json.loads(graph.to_json())
    data["guards"] = data["guards"] + [guard]
    with pytest.raises(InvalidIR, match=message):
        load_json(json.dumps(data))


def test_the_emitted_check_reads_the_axis_from_the_right_input() -> None:
    """K is read as y.shape[1] // 2 (y: [B, 2*K]); x names no K. The guard is on K itself."""
    spec = ("axis B, K\nmodel M (x: [B, 8], y: [B, 2*K]) -> [B, 3] {\n"
            "    z = y[:, 0:3]\n    return z + 1.0\n}\n")
    graph = elaborate_text(spec, "twok.arch")
    assert [(g.size, g.kind, g.bound) for g in graph.guards] == [("2*K", "at_least", 3)]
    text = emit_python(graph)
    assert "if 2 * (y.shape[1] // 2) < 3:" in text
    model = build(graph)
    assert model(torch.randn(2, 8), torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="2\\*K must be at least 3, got 2"):
        model(torch.randn(2, 8), torch.randn(2, 2))
    gm = build_graph_module(graph, model)  # fx reads it the same way
    assert gm(torch.randn(2, 8), torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(AssertionError, match="2\\*K must be at least 3"):
        gm(torch.randn(2, 8), torch.randn(2, 2))


def test_a_guard_on_an_axis_no_input_gives_is_a_located_error() -> None:
    spec = "axis B, T\nmodel M (x: [B, T + 1, 8]) -> [B, *, 8] {\n    a, b = chunk(x, 2, dim=1)\n    return a\n}\n"
    with pytest.raises(ArchError, match="no input of the model gives the axis 'T'") as info:
        elaborate_text(spec, "hidden.arch")
    assert info.value.span is not None and (info.value.span.line, info.value.span.col) == (3, 12)


def test_torch_export_with_dynamic_t_states_the_guards(graph: Graph, model: torch.nn.Module) -> None:
    shapes = dynamic_shapes(graph)
    assert str(shapes[0][1]) == str(shapes[1][1]) and "T_over_2" in str(shapes[0][1])
    program = torch.export.export(model, _inputs(8), dynamic_shapes=shapes)
    for t in (6, 10, 16):  # export treats a dynamic size as neither 0 nor 1: T - 3 >= 2
        torch.testing.assert_close(program.module()(*_inputs(t, b=3)), model(*_inputs(t, b=3)), rtol=0, atol=0)
    with pytest.raises(Exception, match="% 2 == 0|divisible|Guard"):
        program.module()(*_inputs(7, b=3))
    with pytest.raises(Exception):
        program.module()(*_inputs(18, b=3))


AFFINE = """axis B, T
model M (x: [B, T, 8], tokens: i64[B, T], first: i64[B, 1]) -> [B, T + 1, 8] {
    t = concat(first, tokens, dim=1)
    y = concat(x[:, 0:1], x, dim=1)
    return y + positions(t, 16, 8)
}
"""


def test_a_guard_on_an_affine_size_is_solved_for_its_axis() -> None:
    """`T + 1 <= 16` (positions on one more token) is stated to export as T <= 15, and `2*T`
    divisible by 4 as T divisible by 2; export then accepts a dynamic T and keeps the bound."""
    graph = elaborate_text(AFFINE, "affine.arch")
    assert ("T + 1", "at_most", 16) in [(g.size, g.kind, g.bound) for g in graph.guards]
    shapes = dynamic_shapes(graph)
    assert str(shapes[0][1]) == "Dim('T', min=1, max=15)"
    model = build(graph).eval()

    def inputs(t: int) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(t)
        return torch.randn(2, t, 8, generator=gen), torch.zeros(2, t, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)
    program = torch.export.export(model, inputs(8), dynamic_shapes=shapes)
    for t in (3, 15):
        torch.testing.assert_close(program.module()(*inputs(t)), model(*inputs(t)), rtol=0, atol=0)
    with pytest.raises(Exception, match="15"):
        program.module()(*inputs(16))
    doubled = ("axis B, T\nmodel M (x: [B, T, 8]) -> [B, T / 2, 8] {\n"
               "    a, b, c, d = chunk(concat(x, x, dim=1), 4, dim=1)\n    return a\n}\n")
    graph = elaborate_text(doubled, "doubled.arch")
    assert [(g.size, g.kind, g.bound) for g in graph.guards] == [("2*T", "divisible", 4)]
    assert "T_over_2" in str(dynamic_shapes(graph)[0][1])


def test_without_the_constraints_export_refuses_a_dynamic_t(model: torch.nn.Module) -> None:
    """The guards are real: a plain Dim('T') conflicts with T % 2 == 0, and torch.export says so."""
    t = torch.export.Dim("T")
    with pytest.raises(Exception, match="T"):
        torch.export.export(model, _inputs(8), dynamic_shapes=({1: t}, {1: t}))


def test_a_hostile_file_name_reaches_the_guard_only_as_a_string() -> None:
    """The span's file name is spec text: it reaches the generated check only through quote.py_str
    (verify_python passes), and the message shows it as it is."""
    name = "x');import os;os.system('id')#\"\n.arch"
    model = build(elaborate_text(SPEC, name))
    with pytest.raises(ValueError) as err:
        model(*_inputs(5))
    assert str(err.value) == f"T must be divisible by 2, got 5 ({name}:3:12: chunk into 2 equal parts)"
    with pytest.raises(AssertionError) as fx_err:  # in fx's code, a repr'd constant
        build_graph_module(elaborate_text(SPEC, name))(*_inputs(5))
    assert str(fx_err.value) == f"T must be divisible by 2 ({name}:3:12: chunk into 2 equal parts)"


def test_a_rearrange_that_splits_a_symbolic_axis_is_guarded() -> None:
    """`b (t k) d -> b t k d` with k=2 on [B, T, 8] types t as T/2: T must be even, checked on entry
    (einops' own error used to be the first word on an odd T)."""
    spec = 'axis B, T\nmodel M (x: [B, T, 8]) -> [B, *, 2, 8] {\n    return rearrange(x, "b (t k) d -> b t k d", k=2)\n}\n'
    graph = elaborate_text(spec, "split.arch")
    assert [(g.size, g.kind, g.bound, g.why) for g in graph.guards] == [("T", "divisible", 2, "split into (t k)")]
    model = build(graph)
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), x.reshape(2, 3, 2, 8), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^T must be divisible by 2, got 5 \(split.arch:3:12: split into \(t k\)\)$"):
        model(torch.randn(2, 5, 8))
    program = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes(graph))
    assert program.module()(torch.randn(3, 10, 8)).shape == (3, 5, 2, 8)
