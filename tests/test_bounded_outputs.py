"""Work on the way out is bounded too (#11): a model too large for this machine is refused before
anything is allocated, and graphviz's `dot` runs under a time limit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import archc
from archc import api
from archc.cli import main as cli
from archc.elaborate import elaborate_text
from archc.errors import ArchError

SPEC = "axis B\nmodel Big (x: [B, 1000]) -> [B, 1000] {\n    fc = linear(1000)\n    return fc(x)\n}\n"


def test_a_model_larger_than_memory_is_a_located_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "memory_bytes", lambda: 1 << 20)  # 1 MiB: the 4 MB of fc do not fit
    graph = elaborate_text(SPEC, "big.arch")
    with pytest.raises(ArchError) as err:
        api.build(graph)
    shown = err.value.render()
    assert shown.startswith("big.arch:4:12: error:") and "need 3.8 MiB" in shown and "'fc.weight'" in shown


def test_the_check_counts_bytes_by_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = elaborate_text(SPEC, "big.arch")
    need = 1000 * 1000 * 4 + 1000 * 4
    monkeypatch.setattr(api, "memory_bytes", lambda: need)
    assert api.build(graph) is not None  # exactly fits
    monkeypatch.setattr(api, "memory_bytes", lambda: need - 1)
    with pytest.raises(ArchError):
        api.build(graph)


def test_compile_refuses_before_allocating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "big.arch").write_text(SPEC)
    monkeypatch.setattr(api, "memory_bytes", lambda: 1 << 20)
    with pytest.raises(ArchError, match="more than this machine's"):
        archc.compile(tmp_path / "big.arch")


def test_a_dot_that_does_not_finish_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ARCHC_DOT_TIMEOUT", "0.5")
    (tmp_path / "m.arch").write_text(SPEC)
    assert cli(["render", str(tmp_path / "m.arch"), "-o", str(tmp_path / "m.svg")]) == 1
    err = capsys.readouterr().err
    assert "did not finish" in err and "--depth" in err and "Traceback" not in err
    assert not (tmp_path / "m.svg").exists()


def test_a_dot_that_fails_is_an_error_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Error: syntax error in line 1' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "m.arch").write_text(SPEC)
    assert cli(["render", str(tmp_path / "m.arch"), "-o", str(tmp_path / "m.svg")]) == 1
    assert "graphviz 'dot' failed" in capsys.readouterr().err
