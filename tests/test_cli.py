"""The command line: exit codes, messages, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from archc.cli import main
from archc.ir.graph import SCHEMA_VERSION

GOOD = "axis B\nmodel M(width: int = 4) (x: [B, 8]) -> [B, width] { return linear(x, width) }\n"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archc", *args], capture_output=True, text=True, timeout=120)


def test_check_reports_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "m.arch"
    spec.write_text(GOOD)
    assert main(["check", str(spec), "--set", "width=6"]) == 0
    assert "ok: model M (x: f32[B, 8]) -> f32[B, width=6]" in capsys.readouterr().out


def test_check_prints_location_and_caret_and_exits_1(tmp_path: Path) -> None:
    spec = tmp_path / "bad.arch"
    spec.write_text("axis B\nmodel M (x: [B, 8]) -> [B, 8] {\n    return x >> layernrom\n}\n")
    r = run("check", str(spec))
    assert r.returncode == 1
    assert "bad.arch:3:17: error: unknown name 'layernrom'" in r.stderr
    assert "^" in r.stderr and "did you mean 'layernorm'?" in r.stderr
    assert "Traceback" not in r.stderr


def test_set_values_are_spec_expressions(tmp_path: Path) -> None:
    spec = tmp_path / "m.arch"
    spec.write_text(GOOD)
    r = run("check", str(spec), "--set", "width='x'")
    assert r.returncode == 1 and "unexpected character" in r.stderr
    r = run("check", str(spec), "--set", "width=true")
    assert r.returncode == 1 and "must be an int" in r.stderr
    r = run("check", str(spec), "--set", "depth=3")
    assert r.returncode == 1 and "has no parameter 'depth'" in r.stderr
    r = run("check", str(spec), "--set", "width=loop")  # the shell took the quotes off "loop"
    assert r.returncode == 1 and "--set:1:1: error: unknown name 'loop'" in r.stderr
    assert 'hint: a string is written in quotes: --set \'NAME="loop"\'' in r.stderr


def test_ir_json_loads_back(tmp_path: Path) -> None:
    spec = tmp_path / "m.arch"
    spec.write_text(GOOD)
    out = tmp_path / "m.json"
    assert main(["ir", str(spec), "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["nodes"][0]["op"] == "linear"
    assert main(["ir", "--load", str(out), "--arch"]) == 0


def test_ir_arch_output_compiles_again(tmp_path: Path) -> None:
    spec = tmp_path / "m.arch"
    spec.write_text(GOOD)
    printed = tmp_path / "printed.arch"
    assert main(["ir", str(spec), "--arch", "-o", str(printed)]) == 0
    assert main(["check", str(printed)]) == 0


def test_fmt_check_and_rewrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "m.arch"
    spec.write_text("axis B   # batch\nmodel M (x: [B,8]) -> [B,8] {return x>>relu}\n")
    assert main(["fmt", "--check", str(spec)]) == 1
    assert main(["fmt", str(spec)]) == 0
    text = spec.read_text()
    assert text == "axis B  # batch\n\nmodel M (x: [B, 8]) -> [B, 8] {\n    return x >> relu\n}\n"
    assert main(["fmt", "--check", str(spec)]) == 0


def test_fmt_leaves_a_bad_file_untouched(tmp_path: Path) -> None:
    spec = tmp_path / "bad.arch"
    original = "model M (x: [8]) -> [8] { return x >> }\n"
    spec.write_text(original)
    assert main(["fmt", str(spec)]) == 1
    assert spec.read_text() == original
    assert [p.name for p in tmp_path.iterdir()] == ["bad.arch"]  # no temp file left behind


def test_help_explains_each_command() -> None:
    r = run("--help")
    assert r.returncode == 0 and "check" in r.stdout and "fmt" in r.stdout
    for cmd in ("check", "ir", "fmt"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "usage" in r.stdout
