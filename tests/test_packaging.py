"""Build the wheel, install it outside the repository, and check that archc finds its data.

The wheel is built from a copy of the sources (so no stale ``build/`` is reused), with
``--no-build-isolation`` (offline: uses this venv's setuptools), installed with
``pip install --no-deps --target``, and imported by a subprocess whose cwd is outside
the repository, with ``PYTHONPATH`` pointing at the install (dependencies come from this
venv's site-packages).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("archc", "backends", "grammar", "specs", "setup.py", "pyproject.toml", "README.md")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")


def _files(root: Path, pattern: str) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob(pattern) if "__pycache__" not in p.parts}


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder into which the freshly built wheel is installed; returns it."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=IGNORE)
        elif path.is_file():
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src)], cwd=work)
    (wheel,) = (work / "dist").glob("archc-*.whl")
    target = work / "site"
    _run([*pip, "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)], cwd=work)
    return target


def _env(target: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(target)
    env.pop("PYTHONSAFEPATH", None)
    return env


PROBE = """
import json, archc, archc.backends, archc.resources as r
out = {"archc": archc.__file__, "backends": archc.backends.__file__,
       "backends_root": str(r.backends_root())}
for key, fn in (("grammar", r.grammar_path), ("specs_root", r.specs_root)):
    try:
        out[key] = str(fn())
    except FileNotFoundError:  # the repository has none (yet)
        out[key] = None
print(json.dumps(out))
"""


def test_wheel_ships_code_and_data(installed: Path, tmp_path: Path) -> None:
    pkg = installed / "archc"
    # No top-level `backends` package, ever.
    assert not (installed / "backends").exists()
    # Every module and data file of the source tree is in the wheel, at its mapped place.
    for src, dst, pattern in [
        ("archc", "", "*.py"),
        ("backends", "backends", "*.py"),
        ("backends", "backends", "*.j2"),
        ("grammar", "_grammar", "*.lark"),
        ("specs", "_specs", "*.arch"),
    ]:
        if (REPO / src).is_dir():
            missing = _files(REPO / src, pattern) - _files(pkg / dst, pattern)
            assert not missing, f"not in the wheel ({src}/ -> archc/{dst}): {sorted(missing)}"

    out = json.loads(_run([sys.executable, "-c", PROBE], cwd=tmp_path, env=_env(installed)))
    for key in ("archc", "backends", "backends_root"):
        assert Path(out[key]).resolve().is_relative_to(installed.resolve()), (key, out[key])
    if (REPO / "grammar" / "arch.lark").is_file():
        grammar = Path(out["grammar"])
        assert grammar.is_file() and grammar.resolve().is_relative_to(installed.resolve())
    for sub in ("std", "models"):
        if list((REPO / "specs" / sub).glob("*.arch")):
            specs = Path(out["specs_root"])
            assert specs.resolve().is_relative_to(installed.resolve()), specs
            assert list((specs / sub).glob("*.arch")), f"no .arch files under {specs / sub}"


def test_wheel_cli(installed: Path, tmp_path: Path) -> None:
    if not (REPO / "archc" / "cli.py").is_file():
        pytest.skip("archc/cli.py does not exist yet")
    env = _env(installed)
    assert _run([sys.executable, "-m", "archc.cli", "--help"], cwd=tmp_path, env=env).strip()
    script = installed / "bin" / "archc"  # console script generated from [project.scripts]
    assert script.is_file()
    assert _run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env).strip()
