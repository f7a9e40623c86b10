"""Files (#11 items 7 and 8): one helper writes every output (archc/files.py), keeping the mode of
the file it replaces and the umask's for a new one; a package or deploy's pair is a folder replaced
all at once; an interrupted write leaves the old output; outputs never overwrite inputs; write
failures are clear errors (exit 1); deploy weights are checked and read without running code."""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

import archc.files as files
from archc.cli import main
from archc.errors import ArchError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "passes"))
from passes_harness import SPECS, random_weights  # noqa: E402

SPEC = "axis B\n\nmodel M (x: f32[B, 8]) -> f32[B, 4] {\n    fc = linear(4)\n    return fc(x)\n}\n"


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != files.MANIFEST)


# -- modes ------------------------------------------------------------------------------------------
def test_a_new_file_gets_the_umasks_mode_and_a_replaced_one_keeps_its_own(tmp_path: Path, umask022: None) -> None:
    new = tmp_path / "new.txt"
    files.write_atomic(new, "a")
    assert mode(new) == 0o644 and new.read_text() == "a"
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    os.chmod(kept, 0o664)
    files.write_atomic(kept, b"new")
    assert mode(kept) == 0o664 and kept.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_fmt_keeps_the_specs_mode(tmp_path: Path, umask022: None) -> None:
    spec = tmp_path / "m.arch"
    spec.write_text("axis B\nmodel M (x: [B,8]) -> [B,8] {return x>>relu}\n")
    os.chmod(spec, 0o664)  # -rw-rw-r--
    assert main(["fmt", str(spec)]) == 0
    assert mode(spec) == 0o664 and "return x >> relu" in spec.read_text()


def test_build_and_ir_outputs_get_the_umasks_mode(tmp_path: Path, umask022: None) -> None:
    spec = tmp_path / "m.arch"
    spec.write_text(SPEC)
    for args, out in ((["build", str(spec)], "m.py"), (["ir", str(spec)], "m.json"),
                      (["ir", str(spec), "--arch"], "p.arch")):
        assert main([*args, "-o", str(tmp_path / out)]) == 0
        assert mode(tmp_path / out) == 0o644, out


def test_a_package_folder_gets_the_umasks_modes(tmp_path: Path, umask022: None) -> None:
    out = tmp_path / "pkg"
    files.write_folder_atomic(out, {"a.py": "x = 1\n", "sub/b.txt": b"b"})
    assert mode(out) == 0o755 and mode(out / "a.py") == 0o644 and mode(out / "sub" / "b.txt") == 0o644
    os.chmod(out / "a.py", 0o664)
    os.chmod(out, 0o775)
    files.write_folder_atomic(out, {"a.py": "x = 2\n"})
    assert mode(out) == 0o775 and mode(out / "a.py") == 0o664 and (out / "a.py").read_text() == "x = 2\n"
    assert not (out / "sub").exists()  # the folder is the new package, nothing of the old one
    assert leftovers(tmp_path) == []


# -- interrupted writes -----------------------------------------------------------------------------
def _fail_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """os.write fails (disk full) from the `calls`-th call of files' writer on, after half its data."""
    real, count = os.write, [0]

    def write(fd: int, data: memoryview) -> int:
        count[0] += 1
        if count[0] >= calls:
            real(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(files.os, "write", write)


def test_a_failure_mid_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.py"
    path.write_text("old\n")
    _fail_after(monkeypatch, 1)
    with pytest.raises(ArchError, match="cannot write .*out.py: No space left on device"):
        files.write_atomic(path, "new " * 1000)
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []


def test_a_failure_mid_package_leaves_the_old_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "pkg"
    files.write_folder_atomic(out, {"a.py": "old a\n", "b.py": "old b\n"})
    _fail_after(monkeypatch, 2)  # a.py is written, b.py fails
    with pytest.raises(ArchError, match="No space left on device"):
        files.write_folder_atomic(out, {"a.py": "new a\n", "b.py": "new b\n" * 100})
    assert (out / "a.py").read_text() == "old a\n" and (out / "b.py").read_text() == "old b\n"
    assert leftovers(tmp_path) == []


def test_a_failure_mid_deploy_leaves_the_old_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    graph_spec = SPECS / "repvgg.arch"
    from archc.elaborate import elaborate_file

    weights = tmp_path / "w.pt"
    torch.save(random_weights(elaborate_file(graph_spec)), weights)
    out = tmp_path / "out"
    assert main(["deploy", str(graph_spec), "--weights", str(weights), "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    torch.save(random_weights(elaborate_file(graph_spec), seed=1), weights)
    _fail_after(monkeypatch, 2)  # the weights are written, the spec fails
    assert main(["deploy", str(graph_spec), "--weights", str(weights), "-o", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_a_folder_with_other_files_is_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ArchError, match=r"holds other files \(notes.txt\)"):
        files.write_folder_atomic(out, {"a.py": ""})
    assert (out / "notes.txt").read_text() == "keep me"
    monkeypatch.chdir(out)
    with pytest.raises(ArchError, match="current folder"):
        files.write_folder_atomic(Path("."), {"notes.txt": ""})
    pkg = tmp_path / "pkg"  # a folder archc wrote may become another package (cuda -> triton)
    files.write_folder_atomic(pkg, {"build.py": "", "kernels.cu": ""})
    files.write_folder_atomic(pkg, {"runtime.py": ""})
    assert sorted(p.name for p in pkg.iterdir()) == [files.MANIFEST, "runtime.py"]


# -- outputs that are inputs, and write failures --------------------------------------------------------
def test_build_refuses_to_overwrite_its_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "x.arch"
    spec.write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    for args in (["build", "x.arch", "-o", "x.arch"], ["build", "x.arch", "-o", str(spec)],
                 ["ir", "x.arch", "-o", "./x.arch"], ["build", "x.arch", "--target", "triton", "-o", "."]):
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert "overwrite" in err or "holds the input" in err, err
        assert spec.read_text() == SPEC


def test_a_write_failure_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "m.arch"
    spec.write_text(SPEC)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["build", str(spec), "-o", str(blocker / "m.py")]) == 1  # a folder that is a file
    err = capsys.readouterr().err
    assert "cannot write" in err and "internal error" not in err
    assert main(["build", str(spec), "-o", "/proc/nope/x.py"]) == 1
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "m.arch"
    spec.write_text(SPEC)
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        assert main(["build", str(spec), "-o", str(ro / "m.py")]) == 1
        assert "cannot write" in capsys.readouterr().err
    finally:
        os.chmod(ro, 0o755)


def test_write_atomic_writes_into_a_device_not_over_it() -> None:
    files.write_atomic(Path("/dev/null"), "x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# -- deploy weights -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_weights() -> dict[str, torch.Tensor]:
    from archc.elaborate import elaborate_file

    return random_weights(elaborate_file(SPECS / "repvgg.arch"))


def _bad_weights(kind: str, sd: dict[str, torch.Tensor], path: Path) -> None:
    if kind == "truncated":
        torch.save(sd, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "wrong keys":
        torch.save({f"x.{k}": v for k, v in sd.items()}, path)
    elif kind == "wrong shape":
        torch.save({k: v[:1] if k.endswith("conv3.weight") else v for k, v in sd.items()}, path)
    elif kind == "int key":
        torch.save({**sd, 3: torch.zeros(1)}, path)
    elif kind == "nan":
        torch.save({k: v * float("nan") if k.endswith("bn3.weight") else v for k, v in sd.items()}, path)
    elif kind == "not a tensor":
        torch.save({**sd, "a.conv3.weight": [1, 2]}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()


@pytest.mark.parametrize("kind, message", [
    ("truncated", "cannot read the weights"), ("wrong keys", "do not fit model RepVgg"),
    ("wrong shape", "do not fit model RepVgg: size mismatch"), ("int key", "the key 3, which is not a string"),
    ("nan", "holds NaN or infinite values"), ("not a tensor", "is a list, not a tensor"),
    ("empty", "cannot read the weights"), ("fifo", "it is a FIFO"), ("folder", "it is a folder")])
def test_unloadable_weights_are_refused_clearly_and_nothing_is_written(
        kind: str, message: str, tmp_path: Path, good_weights: dict[str, torch.Tensor],
        capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.pt"
    _bad_weights(kind, good_weights, weights)
    out = tmp_path / "out"
    assert main(["deploy", str(SPECS / "repvgg.arch"), "--weights", str(weights), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err, err
    assert not out.exists() and leftovers(tmp_path) == []


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {os.environ['ARCHC_TEST_MARK']}",))


def test_weights_are_read_with_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    mark = tmp_path / "MARK"
    monkeypatch.setenv("ARCHC_TEST_MARK", str(mark))
    weights = tmp_path / "w.pt"
    torch.save({"a.conv3.weight": _Payload()}, weights)
    assert main(["deploy", str(SPECS / "repvgg.arch"), "--weights", str(weights), "-o", str(tmp_path / "o")]) == 1
    assert "cannot read the weights" in capsys.readouterr().err
    assert not mark.exists()  # torch.load(weights_only=True) refused the pickle without running it


def test_deploy_refuses_an_output_folder_holding_its_inputs(tmp_path: Path, good_weights: dict[str, torch.Tensor],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.pt"
    torch.save(good_weights, weights)
    assert main(["deploy", str(SPECS / "repvgg.arch"), "--weights", str(weights), "-o", str(tmp_path)]) == 1
    assert "holds the input" in capsys.readouterr().err and weights.exists()


# -- imports ----------------------------------------------------------------------------------------------
def _chain(folder: Path, n: int) -> Path:
    for i in range(n):
        head = f'import "m{i + 1}.arch"\n' if i < n - 1 else ""
        (folder / f"m{i}.arch").write_text(f"{head}block B{i} (x: [*]) -> [*] {{ return x }}\n")
    main_spec = folder / "main.arch"
    main_spec.write_text('import "m0.arch"\naxis B\nmodel M (x: [B, 4]) -> [B, 4] { return x }\n')
    return main_spec


def test_the_import_limit_holds_for_a_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(_chain(tmp_path, 300))]) == 1
    err = capsys.readouterr().err
    assert "more than 256 files are imported" in err and "internal error" not in err
    short = tmp_path / "short"
    short.mkdir()
    assert main(["check", str(_chain(short, 200))]) == 0


def test_an_interrupted_swap_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "pkg"
    files.write_folder_atomic(out, {"a.py": "old\n"})
    real, calls = os.rename, []

    def rename(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:  # the old folder is aside; the new one is not in place yet
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        files.write_folder_atomic(out, {"a.py": "new\n"})
    monkeypatch.setattr(files.os, "rename", real)
    assert (out / "a.py").read_text() == "old\n" and leftovers(tmp_path) == []
