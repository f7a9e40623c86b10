"""`archc bench` (#17): the JSON report of a run with the cheap variants on a tiny model. No timing is
asserted, only that every field is there and consistent and that -O2 computes what eager computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archc.cli import main
from archc.resources import specs_root

RESNET = specs_root() / "models" / "resnet18.arch"
TINY = ["--set", "img_size=32", "--set", "num_classes=10", "--set", "depths=[1, 1, 1, 1]"]


def test_bench_json_reports_every_variant_and_matches_eager(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", str(RESNET), *TINY, "--batch", "2", "--threads", "1", "--rounds", "3", "--warmup", "1",
                 "--variants", "O2", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""  # the progress bar shows only on a terminal
    report = json.loads(out)
    assert report["model"] == "ResNet18" and report["batch"] == 2 and report["rounds"] == 3
    assert report["machine"]["threads"] == 1 and report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    assert len(report["loadavg"]) == 3
    assert list(report["variants"]) == ["eager", "O2"]  # eager always runs: the ratios are to it
    for v in report["variants"].values():
        assert len(v["times_ms"]) == len(v["ratios"]) == 3
        assert v["median_ms"] > 0 and v["build_s"] > 0 and v["first_call_s"] > 0
        assert v["speedup_p25"] <= v["speedup"] <= v["speedup_p75"]
    assert report["variants"]["eager"]["ratios"] == [1.0, 1.0, 1.0]
    assert report["variants"]["O2"]["max_rel_diff"] <= 1e-5
    assert set(report["variants"]["O2"]["steps"]) == {"passes_s", "code_s", "module_s"}
    assert "O2_over_freeze" not in report


def test_bench_table_and_its_mistakes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(RESNET), *TINY, "--batch", "1", "--rounds", "1", "--warmup", "0",
                 "--variants", "eager"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ResNet18: batch 1,") and "\neager " in out
    assert main(["bench", str(RESNET), *TINY, "--variants", "eager,jit"]) == 1
    assert "unknown variant 'jit'" in capsys.readouterr().err
    assert main(["bench", str(RESNET), *TINY, "--rounds", "0"]) == 1


def test_a_cold_run_leaves_no_kernel_cache_folder_behind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The folder is removed, and a later lookup of Inductor's cache folder (a compile worker, an
    exit handler) does not make it again: TORCHINDUCTOR_CACHE_DIR is what it was before."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from archc.commands.bench import cold_inductor

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    with cold_inductor() as folder:
        assert Path(cache_dir()) == Path(folder).resolve()  # this run's own kernels
    assert not Path(folder).exists()
    assert Path(cache_dir()) == tmp_path / "mine"  # a lookup after the run: the folder from before
    assert not Path(folder).exists()
