"""dtypes other than f32 (archc/elaborate/dtypes.py): parameters follow their op's input, the
build's dtype (`dtype=` / `--dtype` / `@dtype`) decides the rest, integer buffers, mixed cases as
located errors before anything runs, and bf16 models built and run against eager PyTorch."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from archc import zoo
from archc.elaborate import elaborate_text
from archc.errors import ArchError
from archc.ir.printer import canonical, print_graph
from archc.ir.verify import VerifyError, verify

torch = pytest.importorskip("torch")

MLP = """axis B, T, D
block Mlp(hidden: int) (x: [B, T, D]) -> [B, T, D] {
    fc1 = linear(hidden)
    fc2 = linear(D)
    return x >> fc1 >> gelu >> fc2
}
model M (x: bf16[B, T, 32]) -> bf16[B, T, 32] {
    norm = layernorm()
    mlp = Mlp(64)
    return x + mlp(norm(x))
}
"""

LM = """axis B, T
model LM (tokens: i64[B, T]) -> [B, T, 50] {
    wte = embedding(50, 16)
    steps = buffer
    x = wte(tokens) >> layernorm
    y = linear(x, 50, bias=false, tied=wte)
    return y + steps([1], dtype="i64")
}
"""


def test_parameters_follow_the_input_dtype() -> None:
    g = elaborate_text(MLP, "t.arch")
    assert {p.dtype for p in g.params.values()} == {"bf16"}
    assert g.outputs[0].type.dtype == "bf16"


def test_the_build_dtype_decides_what_no_input_does() -> None:
    g = verify(elaborate_text(LM, "t.arch", dtype="bf16"))  # the verifier knows the rule too
    assert g.params["wte.weight"].dtype == "bf16" and g.params["layernorm.weight"].dtype == "bf16"
    assert g.params["steps"].dtype == "i64" and not g.params["steps"].trainable  # an integer buffer
    assert g.outputs[0].type.dtype == "bf16"
    f32 = elaborate_text(LM, "t.arch")
    assert {p.dtype for p in f32.params.values()} == {"f32", "i64"}
    # an input without a dtype is of the build's dtype
    g = elaborate_text("axis B\nmodel M (x: [B, 8]) -> [B, 8] { return linear(x, 8) }", "t.arch", dtype="f16")
    assert g.inputs[0].type.dtype == "f16" and g.params["linear.weight"].dtype == "f16"


def test_the_verifier_refuses_a_parameter_of_another_dtype() -> None:
    g = elaborate_text(MLP, "t.arch")
    bad = g.model_copy(update={"params": {**g.params, "mlp.fc1.weight": g.params["mlp.fc1.weight"].model_copy(
        update={"dtype": "f32"})}})
    with pytest.raises(VerifyError, match="'mlp.fc1.weight' is f32, the op makes it bf16"):
        verify(bad)


def test_dtype_annotation_and_printed_ir() -> None:
    text = LM.replace("model LM", '@dtype("bf16")\nmodel LM')
    g = elaborate_text(text, "t.arch")
    assert canonical(g) == canonical(elaborate_text(LM, "t.arch", dtype="bf16"))
    printed = print_graph(g)
    assert '@dtype("bf16") v1 = embedding(' in printed
    assert canonical(elaborate_text(printed, "p.arch")) == canonical(g)  # f32 build: the printed text says it


@pytest.mark.parametrize(("text", "message", "at"), [
    # one weight, two dtypes
    ("axis B\nmodel M (x: [B, 8], y: bf16[B, 8]) -> [B, 8] {\n fc = linear(8)\n return fc(x) + fc(y)\n}",
     "'fc.weight' is shared and is f32; this use makes it bf16", "fc(y)"),
    # a declared output dtype the body does not make
    ("axis B\nmodel M (x: bf16[B, 8]) -> f32[B, 8] {\n y = linear(x, 8)\n return y\n}",
     "dtype bf16 is not f32", "return"),
    # an integer buffer cannot be drawn from a normal
    ("axis B\nmodel M (x: [B, 8]) -> [B, 8] {\n c = buffer([8], init=\"normal(1.0)\", dtype=\"i64\")\n return x + c\n}",
     "an i64 buffer starts as zeros, ones or a constant", "buffer("),
    ("axis B\n@dtype(\"i8\")\nmodel M (x: [B, 8]) -> [B, 8] {\n return linear(x, 8)\n}", "@dtype takes one of", "@dtype"),
])
def test_mixed_dtypes_are_located_errors(text: str, message: str, at: str) -> None:
    with pytest.raises(ArchError, match=message.replace("(", r"\(")) as err:
        elaborate_text(text, "t.arch")
    span = err.value.span
    assert span is not None, err.value.render()
    assert text.splitlines()[span.line - 1][span.col - 1:].lstrip().startswith(at), err.value.render()


def test_a_bf16_spec_runs_as_eager_bf16() -> None:
    from archc.backends.torch import build_module

    from archc.backends.torch import emit_python

    torch.manual_seed(0)
    graph = elaborate_text(MLP, "t.arch")
    m = build_module(graph).eval()
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert isinstance(m.mlp.fc1, torch.nn.Linear) and isinstance(m.norm, torch.nn.LayerNorm)  # torch's own
    assert "nn.Linear(32, 64, bias=True, dtype=torch.bfloat16)" in emit_python(graph)
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(1))
    sd = m.state_dict()
    F = torch.nn.functional
    h = F.layer_norm(x, (32,), sd["norm.weight"], sd["norm.bias"])
    h = F.linear(F.gelu(F.linear(h, sd["mlp.fc1.weight"], sd["mlp.fc1.bias"])), sd["mlp.fc2.weight"], sd["mlp.fc2.bias"])
    with torch.no_grad():
        got = m(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, x + h, rtol=0, atol=0)  # the same ops on the same bf16 tensors


def test_an_integer_buffer_is_built_as_one() -> None:
    from archc.backends.torch import build_module

    m = build_module(elaborate_text(LM, "t.arch", dtype="bf16"))
    assert m.steps.dtype == torch.int64 and "steps" in dict(m.named_buffers())
    assert m.wte.weight.dtype == torch.bfloat16 and m(torch.zeros(1, 3, dtype=torch.long)).dtype == torch.bfloat16


def test_gpt2_in_bf16_matches_hugging_face_in_bf16(transformers: ModuleType) -> None:
    from archc.api import compile as compile_spec

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=2, n_positions=128)
    ref = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # weights large enough that the logits are of order one
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    ref = copy.deepcopy(ref).to(torch.bfloat16)
    ours = compile_spec(zoo.spec_path("gpt2"), dtype="bf16", vocab=1000, dim=64, depth=2, heads=2,
                        max_len=128).eval()
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    ours.load_state_dict(zoo.hf_gpt2_to_archc(ref.state_dict()), strict=True)
    tokens = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, want = ours(tokens), ref(tokens).logits
    assert got.dtype == torch.bfloat16 and want.abs().max().item() > 0.5
    # bf16 keeps 8 bits of mantissa; two programs of the same ops round differently at that level
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=4e-2)


def test_the_command_line_takes_dtype(tmp_path: Path) -> None:
    spec = tmp_path / "lm.arch"
    spec.write_text(LM)
    out = subprocess.run([sys.executable, "-m", "archc", "check", str(spec), "--dtype", "bf16"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "-> bf16[B, T, 50]" in out.stdout
