"""`archc deploy` and the pass options of `archc build`: exit codes, messages, files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from archc.backends.torch import build_module
from archc.cli import main
from archc.elaborate import elaborate_file

from passes_harness import SPECS, TOL, max_error, random_weights, spec


def _weights(tmp_path: Path, name: str = "repvgg") -> Path:
    path = tmp_path / "train.pt"
    torch.save(random_weights(spec(name)), path)
    return path


def test_deploy_writes_weights_and_a_spec_that_compiles_again(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    weights = _weights(tmp_path)
    out = tmp_path / "out"
    assert main(["deploy", str(SPECS / "repvgg.arch"), "--weights", str(weights), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max abs error" in text and "14 ops -> 4" in text
    assert sorted(p.name for p in out.iterdir() if p.name != ".archc-files") == ["deployed.pt", "repvgg.deploy.arch"]
    deployed = elaborate_file(out / "repvgg.deploy.arch")
    assert [n.op for n in deployed.nodes] == ["conv2d", "relu", "conv2d", "relu"]
    sd = torch.load(out / "deployed.pt", weights_only=True)
    build_module(deployed).load_state_dict(sd, strict=True)
    train = spec("repvgg")
    assert max_error(train, torch.load(weights, weights_only=True), deployed, sd) <= TOL


def test_deploy_fails_clearly_above_the_tolerance_and_writes_nothing(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["deploy", str(SPECS / "repvgg.arch"), "--weights", str(_weights(tmp_path)), "-o", str(out),
                 "--tolerance", "1e-12", "--rtol", "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert "deploy check failed" in err and "above the tolerance 1e-12" in err and "nothing was written" in err
    assert not out.exists()


def test_deploy_names_the_keys_that_do_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = _weights(tmp_path, "acnet")  # weights of another model
    code = main(["deploy", str(SPECS / "repvgg.arch"), "--weights", str(weights), "-o", str(tmp_path / "o")])
    assert code == 1
    err = capsys.readouterr().err
    assert "the weights do not fit model RepVgg" in err and "missing (e.g. a.bn1" in err and "unexpected" in err


def test_deploy_refuses_a_file_that_is_not_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "w.pt"
    bad.write_text("not a checkpoint")
    assert main(["deploy", str(SPECS / "repvgg.arch"), "--weights", str(bad), "-o", str(tmp_path / "o")]) == 1
    assert "cannot read the weights" in capsys.readouterr().err


def test_build_levels_and_print_after(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(SPECS / "repvgg.arch"), "-O2", "--print-after", "reparam"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ---- IR after pass 'reparam' ----")
    assert "reparam_conv" in out and "class RepVgg" in out
    assert main(["build", str(SPECS / "cleanup.arch"), "--passes", "dce,cse", "--print-after", "all"]) == 0
    out = capsys.readouterr().out
    assert "IR after pass 'dce'" in out and "IR after pass 'cse'" in out


def test_unknown_pass_and_print_after_a_pass_that_does_not_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(SPECS / "cleanup.arch"), "--passes", "dce,reparm"]) == 1
    assert "unknown pass 'reparm'" in capsys.readouterr().err  # with "did you mean 'reparam'?"
    assert main(["build", str(SPECS / "cleanup.arch"), "-O1", "--print-after", "reparam"]) == 1
    assert "the pass 'reparam' does not run" in capsys.readouterr().err
