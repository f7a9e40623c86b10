"""archc's own cache folder (`$XDG_CACHE_HOME/archc`, default `~/.cache/archc`), kept so that
nobody but its owner can put there something archc reads back and trusts.

- `cache_home()`: `$XDG_CACHE_HOME` when it is an absolute path (as the XDG spec says, a relative
  one is ignored: it would name a folder under whatever directory the process runs in), else
  `~/.cache`.
- `private_dir(path)`: the folder, created with mode 0700 (missing parents too, whatever the
  umask); raises `UnsafeCache` unless it is owned by the current user and not writable by group or
  others.
- `read_private(path)`: a file's bytes, or None when there is none. The file is opened without
  following a symbolic link and checked on the open descriptor (no race between check and read):
  a regular file, owned by the current user, not writable by group or others; else `UnsafeCache`.
- `write_private(path, data)`: atomic: a 0600 temporary file in the same folder, then `os.replace`.

`backends/cuda/build.py` and `backends/triton/runtime.py` are copied into generated packages and
must stay self-contained, so each carries its own small copy of these checks (keep them in step).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


class UnsafeCache(Exception):
    """A cache file or folder that someone other than the current user could have written."""


def cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"


def supported() -> bool:
    """Owner checks need POSIX user ids; elsewhere archc keeps no cache."""
    return hasattr(os, "geteuid") and hasattr(os, "O_NOFOLLOW")


def _check_owner(st: os.stat_result) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise UnsafeCache(f"it is owned by uid {st.st_uid}, not by the current user (uid {me})")
    if st.st_mode & 0o022:
        who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if st.st_mode & bit)
        raise UnsafeCache(f"it is writable by {who} (mode {stat.S_IMODE(st.st_mode):o})")


def private_dir(path: Path) -> Path:
    """Create `path` 0700 where missing and check it; OSError when it cannot be created."""
    missing = []
    for p in (path, *path.parents):
        if os.path.lexists(p):
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)  # the umask can only take bits away: never wider than 0700
        except FileExistsError:
            pass
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCache("it is not a folder")
    _check_owner(st)
    return path


def read_private(path: Path, limit: int = 64 << 20) -> bytes | None:
    """The bytes of `path`, checked on the open descriptor; None when it does not exist."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeCache("it is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeCache("it is not a regular file")
        _check_owner(st)
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write `path` atomically with mode 0600 (a temporary file in its folder, then os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = ["UnsafeCache", "cache_home", "private_dir", "read_private", "supported", "write_private"]
