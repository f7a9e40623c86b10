"""A compiled model pickles: `torch.save(model)` in one process, `torch.load` in another.

Its classes live in `archc.generated.m<digest>`, whose source is kept in the user's cache; the
loading process imports it by that name. A cache file that was edited or planted is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPT = ROOT / "specs" / "models" / "gpt2.arch"

SAVE = """
import torch, archc
torch.manual_seed(0)
m = archc.compile({spec!r}, vocab=100, dim=32, depth=2, heads=2, max_len=16).eval()
x = torch.randint(0, 100, (2, 8))
torch.save(m, {folder!r} + "/model.pt")
torch.save((x, m(x)), {folder!r} + "/io.pt")
print(type(m).__module__)
"""
LOAD = """
import torch
m = torch.load({folder!r} + "/model.pt", weights_only=False)
x, y = torch.load({folder!r} + "/io.pt")
assert type(m.transformer.h[0]).__module__ == type(m).__module__
assert torch.equal(m(x), y)
print("ok", type(m).__name__, len(m.transformer.h))
"""


def _run(code: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_pickled_model_loads_in_another_process(tmp_path: Path) -> None:
    saved = _run(SAVE.format(spec=str(GPT), folder=str(tmp_path)), tmp_path / "cache")
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.startswith("archc.generated.m")
    loaded = _run(LOAD.format(folder=str(tmp_path)), tmp_path / "cache")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["ok", "GPT2", "2"]
    files = list((tmp_path / "cache" / "archc" / "generated").iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("how", ["edited", "world-writable"])
def test_an_edited_or_unsafe_generated_source_is_refused(tmp_path: Path, how: str) -> None:
    saved = _run(SAVE.format(spec=str(GPT), folder=str(tmp_path)), tmp_path / "cache")
    assert saved.returncode == 0, saved.stderr
    (file,) = (tmp_path / "cache" / "archc" / "generated").iterdir()
    marker = tmp_path / "MARK"
    if how == "edited":
        file.write_text(f"open({str(marker)!r}, 'w').close()\n" + file.read_text())
    else:
        file.chmod(0o666)
    loaded = _run(LOAD.format(folder=str(tmp_path)), tmp_path / "cache")
    assert loaded.returncode != 0 and "ImportError" in loaded.stderr
    assert ("does not hash to its name" if how == "edited" else "writable by") in loaded.stderr
    assert not marker.exists()


def test_without_the_cached_source_the_error_says_what_to_do(tmp_path: Path) -> None:
    saved = _run(SAVE.format(spec=str(GPT), folder=str(tmp_path)), tmp_path / "cache")
    assert saved.returncode == 0, saved.stderr
    loaded = _run(LOAD.format(folder=str(tmp_path)), tmp_path / "elsewhere")
    assert loaded.returncode != 0 and "no generated source" in loaded.stderr


def test_the_cache_keeps_a_bounded_number_of_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from archc import generated

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(generated, "KEEP", 3)
    for i in range(5):
        generated.load(f"VALUE = {i}  # test_the_cache_keeps_a_bounded_number_of_sources\n")
    assert len(list((tmp_path / "archc" / "generated").glob("m*.py"))) == 3
