"""The in-memory module as torch users use it: torch.compile, torch.export, a training step,
state_dict save and load, pickling within the process."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch

import archc
from archc.backends.torch import emit_python
from archc.backends.torch.inputs import example_inputs
from archc.elaborate import elaborate_file
from archc.resources import specs_root

from backend_harness import import_file

GPT_TINY = specs_root() / "examples" / "gpt_tiny.arch"
SMALL_GPT = {"D": 32, "depth": 1, "vocab": 50, "heads": 2}
DROPOUT_SPEC = """axis B, T
model Net (x: [B, 4, 8, 8]) -> [B, 10] {
    y = x >> conv2d(8, 3, padding=1) >> batchnorm >> relu >> global_avgpool
    return y >> dropout(0.1) >> linear(10)
}"""


def small_gpt() -> torch.nn.Module:
    return archc.compile(GPT_TINY, **SMALL_GPT)


def test_torch_compile_traces_the_whole_model_as_one_graph() -> None:
    model = small_gpt().eval()
    x = torch.randint(0, 50, (2, 8))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
    model.train()
    out = compiled(x)
    out.sum().backward()
    assert model.h[0].attn.qkv.weight.grad is not None


@pytest.mark.slow  # redundant with the aot_eager test above; inductor's C++ build takes ~40 s on a CPU
def test_torch_compile_with_inductor() -> None:
    model = small_gpt().eval()
    x = torch.randint(0, 50, (2, 8))
    torch.testing.assert_close(torch.compile(model)(x), model(x), atol=1e-5, rtol=1e-5)


def test_torch_export_with_dynamic_batch_and_length() -> None:
    model = small_gpt().eval()
    x = torch.randint(0, 50, (2, 8))
    b, t = torch.export.Dim("B", min=1, max=64), torch.export.Dim("T", min=2, max=1024)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: b, 1: t},))
    x2 = torch.randint(0, 50, (3, 11))
    torch.testing.assert_close(program.module()(x2), model(x2))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.export.load(buf).module()(x2), model(x2))


def test_torch_export_of_a_convnet_with_batchnorm_and_dropout(tmp_path: Path) -> None:
    spec = tmp_path / "net.arch"
    spec.write_text(DROPOUT_SPEC)
    model = archc.compile(spec).eval()
    x = torch.randn(2, 4, 8, 8)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x))


def test_a_training_step_lowers_the_loss_and_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = small_gpt().train()
    tokens = torch.randint(0, 50, (4, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        if not losses:
            missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
            assert not missing, f"no gradient reaches {missing}"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_state_dict_round_trips_through_a_file_and_into_the_emitted_module(tmp_path: Path) -> None:
    spec = tmp_path / "net.arch"
    spec.write_text(DROPOUT_SPEC)
    model = archc.compile(spec)
    model.train()(torch.randn(4, 4, 8, 8))  # move the running statistics
    torch.save(model.state_dict(), tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    fresh = archc.compile(spec)
    fresh.load_state_dict(state, strict=True)
    (tmp_path / "net.py").write_text(emit_python(elaborate_file(spec)))
    emitted = import_file(tmp_path / "net.py", "Net")
    emitted.load_state_dict(state, strict=True)
    gm = archc.compile(spec, target="fx")
    gm.load_state_dict(state, strict=True)
    x = torch.randn(2, 4, 8, 8)
    want = model.eval()(x)
    for other in (fresh, emitted, gm):
        torch.testing.assert_close(other.eval()(x), want)


def test_modules_pickle_and_deepcopy_within_the_process() -> None:
    import copy

    model = small_gpt().eval()
    x = torch.randint(0, 50, (1, 5))
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(x), model(x))
    torch.testing.assert_close(copy.deepcopy(model)(x), model(x))


def test_example_inputs_follow_the_input_types() -> None:
    graph = elaborate_file(GPT_TINY)
    (tokens,) = example_inputs(graph, {"T": 5})
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 5) and int(tokens.max()) < 1000
