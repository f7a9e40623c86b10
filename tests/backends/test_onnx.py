"""--target onnx: the exported file runs in onnxruntime and matches the torch target, at input
sizes other than the export's (the symbolic axes are dynamic axes named after them)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from archc.backends.onnx import export_onnx, max_diff
from archc.backends.torch import build_module
from archc.cli import main
from archc.elaborate import elaborate_file

ROOT = Path(__file__).resolve().parents[2]
CASES = {
    "gpt_tiny": ("specs/examples/gpt_tiny.arch", {}),
    "resnet18": ("specs/models/resnet18.arch", {"img_size": 64}),
    "vit": ("specs/models/vit_small_patch16_224.arch", {"img_size": 32, "patch": 8, "D": 64, "heads": 2, "depth": 2}),
    "gpt2_hyper": ("specs/models/gpt2.arch", {"vocab": 100, "dim": 32, "depth": 2, "heads": 2, "max_len": 16,
                                              "connect": "hyper(n=2)"}),  # rmsnorm with a weight
    "gpt2_mudd": ("specs/models/gpt2.arch", {"vocab": 100, "dim": 32, "depth": 2, "heads": 2, "max_len": 16,
                                             "connect": "mudd"}),  # rmsnorm without one
    "llama": ("specs/models/llama.arch", {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 48,
                                          "num_hidden_layers": 2, "num_attention_heads": 4,
                                          "num_key_value_heads": 2}),  # rotary tables, grouped-query heads
}


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_matches_the_torch_target_at_other_sizes(name: str) -> None:
    path, overrides = CASES[name]
    graph = elaborate_file(ROOT / path, overrides=overrides)
    module = build_module(graph)
    data = export_onnx(graph, module)
    assert max_diff(graph, module, data) < 1e-4
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    dims = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
    assert dims == set(graph.axes)  # B (and T): dynamic, named as in the spec


def test_build_writes_an_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpt.onnx"
    assert main(["build", str(ROOT / "specs/examples/gpt_tiny.arch"), "--target", "onnx", "-o", str(out)]) == 0
    assert onnx.load(str(out)).graph.output[0].name == "out"
    assert "onnxruntime matches the torch target" in capsys.readouterr().out
    assert main(["build", str(ROOT / "specs/examples/gpt_tiny.arch"), "--target", "onnx"]) == 1  # needs -o
