"""archc's caches never run or trust foreign files (issue 10): the lark grammar tables, the CUDA
library cache of `build.py` and the Triton autotune cache. Files and folders are created 0600 and
0700 whatever the umask; a file planted or changed by another user (another owner, writable by
group or others, a symbolic link, bytes that differ from the recorded hash) is refused with a
clear message, never loaded; a relative $XDG_CACHE_HOME is ignored.

The tests run as any user: another user's file is simulated with os.chown where that is allowed
(root), and skipped otherwise."""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import types
from pathlib import Path
from typing import Any, Iterator

import lark
import pytest

from archc import cachefs
from archc.frontend import parser

ROOT = Path(__file__).resolve().parents[1]
OTHER_UID = 12345
SPEC = "# a comment\naxis D\nblock M (x: [D]) -> [D] {\n    return x  # another\n}\n"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _chown_other(path: Path) -> None:
    try:
        os.chown(path, OTHER_UID, -1, follow_symlinks=False)
    except PermissionError:
        pytest.skip("only root can give a file to another user")


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- the grammar tables ---------------------------------------------------------------------


@pytest.fixture
def grammar_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh cache home; parser._lark forgotten before and after (the next user rebuilds it)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    parser._lark.cache_clear()
    try:
        yield tmp_path / "xdg" / "archc"
    finally:
        parser._lark.cache_clear()


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the parsers read back from a cache file."""
    calls: list[int] = []
    original = lark.Lark._load_from_dict.__func__  # type: ignore[attr-defined]

    def spy(cls: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(lark.Lark, "_load_from_dict", classmethod(spy))
    return calls


def _fill(cache: Path) -> Path:
    """Build the tables once (writing the cache file) and forget them; returns the file."""
    parser._lark()
    parser._lark.cache_clear()
    (file,) = cache.glob("grammar-*.json")
    return file


def _parses() -> None:
    module = parser.parse(SPEC, "m.arch")
    assert [c.text for c in module.comments] == ["# a comment", "# another"]  # the lexer callback works


def test_grammar_cache_is_json_and_read_back(grammar_cache: Path, loads: list[int],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    file = _fill(grammar_cache)
    head, _, body = file.read_bytes().partition(b"\n")
    header = json.loads(head)
    assert header["sha256"] == hashlib.sha256(body).hexdigest()
    json.loads(body)  # plain JSON data, not a pickle
    assert _mode(file) == 0o600 and _mode(grammar_cache) == 0o700

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the tables were rebuilt instead of read back")

    monkeypatch.setattr(lark.Lark, "__init__", never)
    _parses()
    assert loads == [1]


def test_grammar_cache_created_private_under_umask_000(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       umask0: None) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a" / "b"))
    parser._lark.cache_clear()
    try:
        _parses()
    finally:
        parser._lark.cache_clear()
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "archc"):
        assert _mode(folder) == 0o700, folder
    (file,) = (tmp_path / "a" / "b" / "archc").glob("grammar-*.json")
    assert _mode(file) == 0o600


@pytest.mark.parametrize("tamper, reason", [
    ("owner", f"owned by uid {OTHER_UID}"),
    ("mode", "writable by group and others"),
    ("symlink", "symbolic link"),
])
def test_foreign_grammar_cache_is_ignored(grammar_cache: Path, loads: list[int], tamper: str, reason: str,
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = _fill(grammar_cache)
    if tamper == "owner":
        _chown_other(file)
    elif tamper == "mode":
        os.chmod(file, 0o666)
    else:
        elsewhere = tmp_path / "elsewhere.json"
        os.replace(file, elsewhere)
        file.symlink_to(elsewhere)
    _parses()
    assert loads == []  # rebuilt, never read
    err = capsys.readouterr().err
    assert f"ignoring the grammar cache {file}" in err and reason in err
    st = os.lstat(file)  # replaced by a file of our own
    assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and _mode(file) == 0o600


def test_damaged_grammar_cache_is_rebuilt_quietly(grammar_cache: Path, loads: list[int],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    file = _fill(grammar_cache)
    head, _, body = file.read_bytes().partition(b"\n")
    file.write_bytes(head + b"\n" + body.replace(b'"<t>"', b'"<x>"', 1))  # the hash no longer matches
    _parses()
    assert loads == [] and capsys.readouterr().err == ""
    parser._lark.cache_clear()
    _parses()  # rewritten: read back this time
    assert loads == [1]


def test_foreign_grammar_cache_folder_is_not_used(grammar_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grammar_cache.mkdir(parents=True, mode=0o700)
    _chown_other(grammar_cache)
    _parses()
    assert "not caching the grammar tables" in capsys.readouterr().err
    assert list(grammar_cache.iterdir()) == []


def test_relative_xdg_cache_home_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cachefs.cache_home() == tmp_path / "home" / ".cache"
    parser._lark.cache_clear()
    try:
        _parses()
    finally:
        parser._lark.cache_clear()
    assert not (tmp_path / "relative").exists()
    assert list((tmp_path / "home" / ".cache" / "archc").glob("grammar-*.json"))


# --- the CUDA library cache -------------------------------------------------------------------


class FakeBuild:
    """backends/cuda/build.py, loaded as a package loads it, with nvcc and ctypes replaced: nvcc
    writes `library` bytes; CDLL records what it was asked to load."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        spec = importlib.util.spec_from_file_location("archc_cuda_build_test", ROOT / "backends/cuda/build.py")
        assert spec and spec.loader
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.source = tmp_path / "pkg" / "kernels.cu"
        self.source.parent.mkdir(parents=True)
        self.source.write_text('extern "C" int f() { return 1; }\n')
        self.library = b"\x7fELF fake library"
        self.compiled = 0
        self.loaded: list[bytes] = []
        monkeypatch.setattr(self.module, "HERE", self.source.parent)
        monkeypatch.setattr(self.module, "nvcc", lambda: "nvcc")
        monkeypatch.setattr(self.module, "subprocess", types.SimpleNamespace(run=self._nvcc))
        monkeypatch.setattr(self.module, "ctypes", types.SimpleNamespace(CDLL=self._cdll))

    def _nvcc(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.compiled += 1
        out = Path(cmd[cmd.index("-o") + 1])
        out.write_bytes(self.library)
        os.chmod(out, 0o777)  # as a linker may leave it
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def _cdll(self, name: str) -> str:
        self.loaded.append(Path(name).read_bytes())
        return name

    def build(self) -> Path:
        return self.module.build(self.source)  # type: ignore[no-any-return]

    def load(self) -> Any:
        return self.module.load()


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeBuild]:
    monkeypatch.setenv("ARCHC_CUDA_CACHE", str(tmp_path / "cuda"))
    fake = FakeBuild(monkeypatch, tmp_path)
    yield fake
    for _, fd in fake.module._LOADED.values():  # nothing was really loaded through them
        os.close(fd)


def test_cuda_library_is_private_and_recorded(cuda: FakeBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              umask0: None) -> None:
    monkeypatch.setenv("ARCHC_CUDA_CACHE", str(tmp_path / "deep" / "cuda"))
    lib = cuda.build()
    assert lib.parent == tmp_path / "deep" / "cuda" and cuda.compiled == 1
    assert _mode(tmp_path / "deep") == 0o700 and _mode(lib.parent) == 0o700
    assert _mode(lib) == 0o600
    record = cuda.module.record_path(lib)
    assert _mode(record) == 0o600
    assert json.loads(record.read_text())["sha256"] == hashlib.sha256(cuda.library).hexdigest()
    assert cuda.build() == lib and cuda.compiled == 1  # cached
    cuda.load()
    assert cuda.loaded == [cuda.library] and cuda.compiled == 1


@pytest.mark.parametrize("tamper, reason", [
    ("owner", f"it is owned by uid {OTHER_UID}"),
    ("mode", r"it is writable by group or others \(mode 666\)"),
    ("symlink", "it is a symbolic link"),
    ("bytes", r"its sha256 \w+\.\.\. is not the one recorded when it was built"),
    ("record", "its record .* is not a valid record"),
    ("record owner", f"its record .* is refused: it is owned by uid {OTHER_UID}"),
])
def test_tampered_cuda_library_is_refused(cuda: FakeBuild, tmp_path: Path, tamper: str, reason: str) -> None:
    lib = cuda.build()
    record = cuda.module.record_path(lib)
    if tamper == "owner":
        _chown_other(lib)
    elif tamper == "mode":
        os.chmod(lib, 0o666)
    elif tamper == "symlink":
        elsewhere = tmp_path / "other.so"
        os.replace(lib, elsewhere)
        lib.symlink_to(elsewhere)
    elif tamper == "bytes":
        lib.write_bytes(b"\x7fELF another library")
    elif tamper == "record":
        record.write_text("{}")
    else:
        _chown_other(record)
    for step in (cuda.build, cuda.load):
        with pytest.raises(RuntimeError, match=re.escape(f"refusing to load the CUDA library {lib}: ") + reason) as err:
            step()
        assert "remove it and" in str(err.value)
    assert cuda.loaded == [] and cuda.compiled == 1


def test_planted_cuda_library_is_refused_or_rebuilt(cuda: FakeBuild, tmp_path: Path) -> None:
    lib = cuda.module.library_path(cuda.source, cuda.module.FLAGS)
    lib.parent.mkdir(mode=0o700)
    lib.write_bytes(b"planted")
    os.chmod(lib, 0o600)
    _chown_other(lib)
    with pytest.raises(RuntimeError, match=f"owned by uid {OTHER_UID}"):
        cuda.load()
    os.chown(lib, os.geteuid(), -1)  # ours but without a record (an older archc's): rebuilt, not loaded
    cuda.load()
    assert cuda.compiled == 1 and cuda.loaded == [cuda.library] and lib.read_bytes() == cuda.library


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_two_cuda_packages_load_their_own_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each library is loaded through its checked descriptor (/proc/self/fd/N), which stays open:
    the dynamic loader would hand back the first library for a second one opened under a reused N."""
    monkeypatch.setenv("ARCHC_CUDA_CACHE", str(tmp_path / "cuda"))
    libs = []
    for n in (1, 2):
        fake = FakeBuild(monkeypatch, tmp_path / f"p{n}")
        fake.source.write_text(f"int answer(void) {{ return {n}; }}\n")
        monkeypatch.setattr(fake.module, "subprocess", subprocess)
        monkeypatch.setattr(fake.module, "ctypes", ctypes)
        monkeypatch.setattr(fake.module, "nvcc", lambda: "cc")
        monkeypatch.setattr(fake.module, "FLAGS", ["-shared", "-fPIC", "-x", "c"])
        libs.append(fake.load())
        assert fake.load() is libs[-1]
    assert [lib.answer() for lib in libs] == [1, 2]


@pytest.mark.parametrize("tamper, reason", [("mode", "writable by group or others"),
                                            ("owner", f"owned by uid {OTHER_UID}")])
def test_shared_cuda_cache_folder_is_refused(cuda: FakeBuild, tmp_path: Path, tamper: str, reason: str) -> None:
    shared = tmp_path / "cuda"
    shared.mkdir(mode=0o700)
    if tamper == "mode":
        os.chmod(shared, 0o1777)
    else:
        _chown_other(shared)
    with pytest.raises(RuntimeError, match=f"ARCHC_CUDA_CACHE={shared} cannot hold CUDA libraries: .*{reason}"):
        cuda.load()
    assert cuda.compiled == 0 and cuda.loaded == []


def test_cuda_cache_paths(cuda: FakeBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHC_CUDA_CACHE", "relative/cuda")
    with pytest.raises(RuntimeError, match="ARCHC_CUDA_CACHE must be an absolute path"):
        cuda.build()
    monkeypatch.delenv("ARCHC_CUDA_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert cuda.module.cache_dir() == tmp_path / "home" / ".cache" / "archc" / "cuda"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cuda.module.cache_dir() == tmp_path / "xdg" / "archc" / "cuda"


# --- the Triton autotune cache ----------------------------------------------------------------


@pytest.fixture
def runtime() -> Any:
    pytest.importorskip("triton")
    from archc.backends.triton import runtime

    return runtime


KEY = "NVIDIA H100|r8_gemm_kernel@abc|64,64,64,torch.float16"
GOOD = {"kwargs": {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64}, "num_warps": 8, "num_stages": 3}


def _tune_file(folder: Path, content: Any) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "tune.json"
    path.write_text(json.dumps(content))
    os.chmod(path, 0o600)
    return path


def test_tune_cache_drops_tampered_entries(runtime: Any, tmp_path: Path) -> None:
    bad = [{"kwargs": {"BLOCK_M": "__import__('os')"}, "num_warps": 4, "num_stages": 2},
           {"kwargs": {"BLOCK_M": 64}, "num_warps": -1, "num_stages": 2},
           {"kwargs": {"BLOCK_M": 1 << 40}, "num_warps": 4, "num_stages": 2},
           {"kwargs": [64], "num_warps": 4, "num_stages": 2},
           {"kwargs": {"BLOCK_M": 64}, "num_warps": 4, "num_stages": 2, "pre_hook": "x"},
           {"kwargs": {"BLOCK_M": True}, "num_warps": 4, "num_stages": 2}, "nonsense"]
    path = _tune_file(tmp_path / "t", {KEY: GOOD, **{f"bad{i}": b for i, b in enumerate(bad)}})
    cache = runtime.TuneCache(path)
    assert cache.get(KEY).kwargs == GOOD["kwargs"]
    assert all(cache.get(f"bad{i}") is None for i in range(len(bad)))
    assert runtime.TuneCache(_tune_file(tmp_path / "u", ["not", "a", "dict"])).get(KEY) is None
    # a config that is not one of the kernel's own is not launched
    assert cache.get(KEY, runtime.GEMM_CONFIGS) is not None
    assert cache.get(KEY, runtime.ATTENTION_CONFIGS) is None


@pytest.mark.parametrize("tamper, reason", [("owner", f"owned by uid {OTHER_UID}"),
                                            ("mode", "writable by group or others"),
                                            ("symlink", "symbolic link"),
                                            ("folder", "writable by group or others")])
def test_foreign_tune_cache_is_ignored(runtime: Any, tmp_path: Path, tamper: str, reason: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = _tune_file(tmp_path / "t", {KEY: GOOD})
    if tamper == "owner":
        _chown_other(path)
    elif tamper == "mode":
        os.chmod(path, 0o666)
    elif tamper == "symlink":
        os.replace(path, tmp_path / "elsewhere.json")
        path.symlink_to(tmp_path / "elsewhere.json")
    else:
        os.chmod(path.parent, 0o777)
    assert runtime.TuneCache(path).get(KEY) is None
    err = capsys.readouterr().err
    assert "ignoring the autotune cache" in err and reason in err


def test_tune_cache_written_private_under_umask_000(runtime: Any, tmp_path: Path, umask0: None) -> None:
    import triton

    path = tmp_path / "a" / "b" / "tune.json"
    runtime.TuneCache(path).put(KEY, triton.Config(dict(GOOD["kwargs"]), num_warps=8, num_stages=3))
    assert _mode(tmp_path / "a") == 0o700 and _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(path) == 0o600
    assert runtime.TuneCache(path).get(KEY).num_warps == 8


def test_tune_cache_relative_paths_are_ignored(runtime: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARCHC_TUNE_CACHE", "tune.json")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert runtime.TuneCache().path == tmp_path / "home" / ".cache" / "archc" / "triton-tune.json"
    monkeypatch.setenv("ARCHC_TUNE_CACHE", str(tmp_path / "mine.json"))
    assert runtime.TuneCache().path == tmp_path / "mine.json"
