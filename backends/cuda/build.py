"""Build kernels.cu (next to this file) into a shared library with nvcc, and load it with ctypes.

    python build.py            # compile (if needed) and print the library's path

The library is cached by the hash of the source and the flags, in $ARCHC_CUDA_CACHE (an absolute
path; default $XDG_CACHE_HOME/archc/cuda, or ~/.cache/archc/cuda), so an unchanged model never
recompiles. It holds code for sm_80 (A100) and sm_90 (H100, H200), and PTX for compute_90 that
newer GPUs compile when they load it. $NVCC names the compiler (default: nvcc on PATH, then
/usr/local/cuda/bin/nvcc).

The cache never loads a library someone else could have written: the folder is created 0700 and
must be owned by the current user and not writable by group or others; each library is written
atomically with mode 0600, next to a record `<library>.json` of the sha256 of its bytes; before a
library is loaded it is opened without following a symbolic link, checked on that descriptor (a
regular file, owned by the current user, not writable by group or others), hashed and compared with
its record, and loaded through the same descriptor. A folder or library that fails a check is
refused with a RuntimeError that names it and says why (remove the library and its record to
rebuild); a library without a record (left by an older archc) is rebuilt.

Needs only the CUDA toolkit and the Python standard library (copied into each generated package).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialized
    fcntl = None  # type: ignore[assignment]

HERE = Path(__file__).resolve().parent
ARCHS = ("80", "90")
FLAGS = ["-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo",
         *[f for a in ARCHS for f in ("-gencode", f"arch=compute_{a},code=sm_{a}")],
         "-gencode", f"arch=compute_{ARCHS[-1]},code=compute_{ARCHS[-1]}"]


def nvcc() -> str:
    found = os.environ.get("NVCC") or shutil.which("nvcc")
    if found:
        return found
    for candidate in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if os.path.exists(candidate):
            return candidate
    raise RuntimeError("nvcc (the CUDA compiler) was not found: install the CUDA toolkit or set $NVCC")


def cache_dir() -> Path:
    """$ARCHC_CUDA_CACHE (which must be absolute), else <cache home>/archc/cuda, where the cache
    home is $XDG_CACHE_HOME when absolute (a relative one is ignored, as the XDG spec says)."""
    named = os.environ.get("ARCHC_CUDA_CACHE")
    if named:
        if not os.path.isabs(named):
            raise RuntimeError(f"ARCHC_CUDA_CACHE must be an absolute path, not {named!r}")
        return Path(named)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "archc" / "cuda"


def library_path(source: Path, flags: list[str]) -> Path:
    digest = hashlib.sha256(source.read_bytes() + b"\0" + " ".join(flags).encode()).hexdigest()[:16]
    return cache_dir() / f"lib{source.stem}_{digest}.so"


def record_path(library: Path) -> Path:
    """The record of a built library: {"sha256": ..., "size": ...} of its bytes."""
    return library.with_name(library.name + ".json")


# The owner and mode checks below are a copy of archc/cachefs.py's (this file is copied into each
# generated package and needs the standard library only); keep the two in step.

class _Refused(Exception):
    pass


def _check_owner(st: os.stat_result) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise _Refused(f"it is owned by uid {st.st_uid}, not by the current user (uid {me})")
    if st.st_mode & 0o022:
        raise _Refused(f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def _private_dir(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0700; refuse a folder others can write."""
    missing = []
    for p in (path, *path.parents):
        if os.path.lexists(p):
            break
        missing.append(p)
    try:
        for p in reversed(missing):
            try:
                os.mkdir(p, 0o700)  # the umask can only take bits away
            except FileExistsError:
                pass
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise _Refused("it is not a folder")
        _check_owner(st)
    except (OSError, _Refused) as err:
        reason = err if isinstance(err, _Refused) else f"it cannot be created or read ({err})"
        if os.environ.get("ARCHC_CUDA_CACHE"):
            raise RuntimeError(
                f"ARCHC_CUDA_CACHE={path} cannot hold CUDA libraries: {reason}. A library in a folder that "
                "others can write could be replaced and would run in this process: point ARCHC_CUDA_CACHE "
                "at a folder of your own (created with mode 0700)") from None
        raise RuntimeError(f"refusing the CUDA library cache {path}: {reason}. A library in a folder that "
                           "others can write could be replaced and would run in this process: make it a "
                           "folder of your own with mode 0700") from None


def _open_checked(path: Path) -> int:
    """A read-only descriptor of `path`: never through a symbolic link, and only for a regular file
    owned by the current user that group and others cannot write. FileNotFoundError if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as err:
        if os.path.islink(path):
            raise _Refused("it is a symbolic link") from None
        raise _Refused(f"it cannot be opened ({err})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("it is not a regular file")
        _check_owner(st)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _verified(library: Path) -> int | None:
    """A descriptor of `library` once it has passed every check; None when it is to be built (absent,
    or without a record); RuntimeError naming the file and the reason when it is refused."""
    record = record_path(library)

    def refuse(reason: str) -> RuntimeError:
        return RuntimeError(f"refusing to load the CUDA library {library}: {reason}. It was not built by this "
                            f"user, or was changed after it was built; remove it and {record.name} to rebuild")

    try:
        fd = _open_checked(library)
    except FileNotFoundError:
        return None
    except _Refused as err:
        raise refuse(str(err)) from None
    try:
        try:
            rfd = _open_checked(record)
        except FileNotFoundError:
            os.close(fd)
            return None  # an older archc's library, never hashed: rebuilt, not loaded
        except _Refused as err:
            raise refuse(f"its record {record} is refused: {err}") from None
        try:
            raw = _read(rfd)
        finally:
            os.close(rfd)
        try:
            expected = json.loads(raw)["sha256"]
            assert isinstance(expected, str) and len(expected) == 64
        except Exception:
            raise refuse(f"its record {record} is not a valid record") from None
        found = hashlib.sha256(_read(fd)).hexdigest()
        if found != expected:
            raise refuse(f"its sha256 {found[:16]}... is not the one recorded when it was built "
                         f"({expected[:16]}...)")
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    return fd


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One build at a time per cache folder (several processes of one job start together)."""
    try:
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        fd = -1
    try:
        if fd >= 0 and fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd >= 0:
            os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _compile(source: Path, flags: list[str], out: Path) -> None:
    work = tempfile.mkdtemp(dir=out.parent, prefix=".build.")  # 0700: nvcc's output is private at once
    try:
        tmp = os.path.join(work, out.name)
        result = subprocess.run([nvcc(), *flags, str(source), "-o", tmp], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"nvcc failed on {source}:\n{result.stderr}")
        os.chmod(tmp, 0o600)
        with open(tmp, "rb") as f:
            data = f.read()
        os.replace(tmp, out)  # the library first: a library without its record is rebuilt, never loaded
        record = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "source": source.name,
                  "flags": flags}
        _write_private(record_path(out), json.dumps(record, indent=1).encode())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(source: Path, flags: list[str] | None) -> tuple[Path, int]:
    flags = list(FLAGS if flags is None else flags)
    out = library_path(source, flags)
    _private_dir(out.parent)
    with _locked(out.parent):
        fd = _verified(out)
        if fd is None:
            _compile(source, flags, out)
            fd = _verified(out)
            if fd is None:
                raise RuntimeError(f"{out} was built but is gone")
    return out, fd


def build(source: Path = HERE / "kernels.cu", flags: list[str] | None = None) -> Path:
    """Compile `source` unless the cache already has it (checked); returns the library's path."""
    out, fd = _build(source, flags)
    os.close(fd)
    return out


_LOADED: dict[str, tuple[ctypes.CDLL, int]] = {}  # library path -> (handle, descriptor kept open)


def load() -> ctypes.CDLL:
    """Build (if needed) and load the library, through the descriptor that was checked, so the
    file cannot be swapped between the check and the load. That descriptor stays open while the
    library is loaded (ctypes never unloads one): the dynamic loader knows a library by the name it
    was opened under (/proc/self/fd/N), and a reused N must never name another library."""
    out, fd = _build(HERE / "kernels.cu", None)
    if str(out) in _LOADED:
        os.close(fd)
        return _LOADED[str(out)][0]
    via = f"/proc/self/fd/{fd}"
    if not os.path.exists(via):  # no /proc: the checked folder is the user's alone
        os.close(fd)
        return ctypes.CDLL(str(out))
    try:
        lib = ctypes.CDLL(via)
    except OSError as err:
        os.close(fd)
        raise OSError(f"cannot load the CUDA library {out}: {err}") from None
    _LOADED[str(out)] = (lib, fd)
    return lib


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "kernels.cu"))
