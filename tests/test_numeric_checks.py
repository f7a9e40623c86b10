"""Numeric checks (#11 item 6): `archc deploy` and the ONNX check use absolute and relative tolerances
(|got - want| <= atol + rtol * |want|), report the max error, and fail on any NaN."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from archc.backends.onnx import check, export_onnx, max_diff
from archc.backends.torch import build_module
from archc.cli import main
from archc.deploy import DeployCheckError, deploy, max_abs_error
from archc.elaborate import elaborate_file, elaborate_text
from archc.numeric import compare

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "passes"))
from passes_harness import SPECS, random_weights  # noqa: E402


def test_compare_is_relative_and_absolute() -> None:
    want = torch.tensor([1.0e4, -2.5e4, 1.0, 0.0], dtype=torch.float64)
    close = compare([(want + torch.tensor([2e-3, -2e-3, 5e-5, 5e-5], dtype=torch.float64), want)])
    assert close.ok and math.isclose(close.max_abs, 2e-3, rel_tol=1e-6)
    small = torch.tensor([1.0, 0.0], dtype=torch.float64)  # RMS 0.71: 0 is allowed 1e-4 + 0.71e-4
    far = compare([(want, want), (small + torch.tensor([0.0, 2e-4], dtype=torch.float64), small)])
    assert not far.ok and "max abs error 0.0002" in far.describe() and "where the reference is 0" in far.describe()
    # an element near 0 in an output of scale 1e4 carries the rounding of that scale
    assert compare([(want + torch.tensor([0.0, 0.0, 0.0, 0.5], dtype=torch.float64), want)]).ok
    assert not compare([(want + torch.tensor([0.0, 0.0, 0.0, 5.0], dtype=torch.float64), want)]).ok
    assert not compare([(want, want)], atol=0.0, rtol=0.0).describe().startswith("the outputs")
    assert not compare([(torch.zeros(2), torch.zeros(3))]).ok


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_compare_fails_on_nan_anywhere(bad: float) -> None:
    want = torch.tensor([1.0, 2.0, 3.0])
    for got, ref in ((torch.tensor([1.0, bad, 3.0]), want), (want, torch.tensor([1.0, bad, 3.0])),
                     (torch.tensor([1.0, bad, 3.0]), torch.tensor([1.0, bad, 3.0]))):
        close = compare([(want, want), (got, ref)])  # the NaN is in the second pair, after a close one
        assert not close.ok and close.not_finite == 1 and "NaN or infinite" in close.describe()
        assert math.isnan(close.max_abs)


def _large(sd: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The last block's BatchNorm scales times `scale`: outputs of about that size."""
    return {k: v * scale if k.startswith("b.bn") and k.endswith(".weight") else v for k, v in sd.items()}


def test_deploy_accepts_a_correct_fold_with_large_outputs() -> None:
    graph = elaborate_file(SPECS / "repvgg.arch")
    sd = _large(random_weights(graph), 1e4)
    result = deploy(graph, sd)  # float32 rounding of outputs near 1e4 is about 1e-3: over 1e-4 absolute
    assert result.max_error > 1e-4, "the test needs outputs whose rounding error is over the absolute tolerance"
    assert result.max_rel_error < 1e-4
    with pytest.raises(DeployCheckError, match="max abs error"):
        deploy(graph, sd, rtol=0.0)


def test_deploy_refuses_nan_outputs() -> None:
    graph = elaborate_file(SPECS / "repvgg.arch")
    sd = random_weights(graph)
    sd["b.bn3.running_var"] = torch.full_like(sd["b.bn3.running_var"], float("nan"))
    with pytest.raises(DeployCheckError, match="NaN or infinite"):
        deploy(graph, sd)
    train, deployed = build_module(graph), build_module(graph)
    train.load_state_dict(sd)
    assert math.isnan(max_abs_error(train, deployed, graph))  # never hidden by max(worst, nan)


def test_archc_deploy_prints_both_errors_and_takes_rtol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = elaborate_file(SPECS / "repvgg.arch")
    weights = tmp_path / "w.pt"
    torch.save(_large(random_weights(graph), 1e4), weights)
    assert main(["deploy", str(SPECS / "repvgg.arch"), "--weights", str(weights), "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "max abs error" in out and "max relative error" in out and "rtol 0.0001" in out
    assert main(["deploy", str(SPECS / "repvgg.arch"), "--weights", str(weights), "-o", str(tmp_path / "o2"),
                 "--rtol", "0"]) == 1
    assert "deploy check failed" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert main(["deploy", str(SPECS / "repvgg.arch"), "--weights", str(weights), "-o", str(tmp_path / "o3"),
                 "--rtol", "nan"]) == 1
    assert "--rtol must be a finite number" in capsys.readouterr().err


ONNX_SPEC = """axis B
model M (x: f32[B, 16]) -> f32[B, 8] {
    fc = linear(64)
    out = linear(8)
    return x >> fc >> relu >> out
}
"""


def test_the_onnx_check_is_relative_and_fails_on_nan() -> None:
    graph = elaborate_text(ONNX_SPEC, "m.arch")
    module = build_module(graph)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(300.0)  # outputs of about 1e4 and more
    data = export_onnx(graph, module)
    close = check(graph, module, data)
    assert close.ok, close.describe()
    with torch.no_grad():
        module.out.bias[3] = float("nan")  # the torch side now has a NaN the ONNX file does not
    close = check(graph, module, data)
    assert not close.ok and close.not_finite > 0
    assert math.isnan(max_diff(graph, module, data))  # the old `max(...)` of floats returned it as a number
