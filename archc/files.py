"""Reading and writing the user's files: the one place where archc's commands touch them.

    read_regular(path, what, limit)     the bytes of a regular file, refused before it is read when it
                                        is a FIFO, a device or a folder, or larger than `limit`
    write_atomic(path, data)            one file, replaced all at once: a reader (or a crash, or a
                                        kill) sees the old content or the new one, never a part
    write_folder_atomic(path, files)    a folder of files (a kernel package, deploy's weights and spec),
                                        written beside it and renamed into place, then the old one removed
    refuse_overwrite(output, inputs)    an output that is one of the command's inputs is an error

A file keeps the mode of the file it replaces (`-rw-rw-r--` stays so); a new one gets the mode the
umask gives (0644 under umask 022), like any file an editor or `cp` makes. Every failure to read or
write (a read-only folder, a full disk, a path through a file) is an ArchError that names the path,
never a traceback. The private caches (archc/cachefs.py, the CUDA and Triton package runtimes) keep
their own code: they are 0600 by design and must not depend on archc.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Iterable, Mapping

from archc.errors import ArchError

KEEP_IN_FOLDER = frozenset({"__pycache__"})  # what a folder being replaced may hold besides its own files
MANIFEST = ".archc-files"  # in a folder write_folder_atomic wrote: the names it wrote, one a line


def _why(err: OSError) -> str:
    return err.strerror or str(err)


def read_regular(path: Path | str, what: str, limit: int) -> bytes:
    """The bytes of the regular file `path`. A FIFO or a device would block or never end, so the
    file is opened without blocking and checked on that descriptor before anything is read."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ArchError(f"cannot read the {what} {path}: {_why(e)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else \
                "not a regular file"
            raise ArchError(f"cannot read the {what} {path}: it is {kind}")
        if info.st_size > limit:
            raise ArchError(f"the {what} {path} is larger than {limit >> 20} MiB")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:  # it grew while being read
                raise ArchError(f"the {what} {path} is larger than {limit >> 20} MiB")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise ArchError(f"cannot read the {what} {path}: {_why(e)}") from None
    finally:
        os.close(fd)


def refuse_overwrite(output: Path | str, inputs: Iterable[Path | str], flag: str = "-o") -> None:
    """An ArchError when `output` is (a link to) one of `inputs`, or a folder that holds one."""
    out = Path(output)
    for item in inputs:
        src = Path(item)
        try:
            if out.exists() and src.exists() and os.path.samefile(out, src):
                raise ArchError(f"{flag} {output}: this is the input {item}; writing would overwrite it",
                                hint="name another output file")
        except OSError:
            continue
        if out.resolve() in src.resolve().parents:
            raise ArchError(f"{flag} {output}: this folder holds the input {item}, and archc replaces the "
                            "whole folder", hint="name a new folder for the output")


def _target(path: Path) -> Path:
    """Where writing `path` lands: through a symbolic link to the file it names."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _temp_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{kind}")


def _write_new(tmp: Path, data: bytes, mode: int | None) -> None:
    """Create `tmp` (O_EXCL: never someone else's file), with the umask's mode unless `mode`."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _mode_of(path: Path) -> int | None:
    """The permission bits of the regular file `path`, or None if there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else None


def write_atomic(path: Path | str, data: str | bytes) -> None:
    """Write `data` (text is UTF-8) to `path` through a temporary file in the same folder, renamed
    over it: a reader sees the old content or the new one. The mode of the file it replaces is kept."""
    path = _target(Path(path))
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if path.is_dir():
        raise ArchError(f"cannot write {path}: it is a folder")
    if path.exists() and _mode_of(path) is None:  # /dev/null, /dev/stdout, a FIFO: write into it, not over it
        _write_special(path, payload)
        return
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(path, "tmp")
        _write_new(tmp, payload, _mode_of(path))
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise ArchError(f"cannot write {path}: {_why(e)}") from None
    finally:
        if tmp is not None:
            _unlink(tmp)


def _write_special(path: Path, data: bytes) -> None:
    try:  # O_NONBLOCK: a FIFO that nobody reads fails at once (ENXIO) instead of blocking
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            os.set_blocking(fd, True)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError as e:
        raise ArchError(f"cannot write {path}: {_why(e)}") from None


def write_folder_atomic(path: Path | str, files: Mapping[str, str | bytes]) -> list[Path]:
    """Make the folder `path` hold exactly `files` (name -> content; a name may hold `/`). They are
    written into a temporary folder beside it, which is then renamed into place; an old folder is
    moved aside first and removed only after, so an interruption leaves the old folder or the new
    one (or both, side by side), never a mixture. An existing folder is replaced only when it holds
    nothing but these files, those its manifest (`.archc-files`) lists and `__pycache__`, so a user's
    other files are never removed. Returns the paths written."""
    path = _target(Path(path))
    if path.exists() and not path.is_dir():
        raise ArchError(f"cannot write the folder {path}: it is a file")
    if path.is_dir():
        _check_replaceable(path, files)
    tmp = old = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(path, "new")
        os.mkdir(tmp)
        if path.is_dir():
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        manifest = "".join(f"{name}\n" for name in sorted(files))
        for name, data in {**files, MANIFEST: manifest}.items():
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            _write_new(dest, data.encode("utf-8") if isinstance(data, str) else data, _mode_of(path / name))
        if path.is_dir():
            old = _temp_name(path, "old")
            os.rename(path, old)
        os.rename(tmp, path)
        tmp = None
    except OSError as e:
        raise ArchError(f"cannot write the folder {path}: {_why(e)}") from None
    finally:  # also on KeyboardInterrupt: the old folder is removed only when the new one is in place
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if os.path.lexists(path):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(old, path)  # put the old folder back
    return [path / name for name in files]


def _check_replaceable(path: Path, files: Mapping[str, str | bytes]) -> None:
    cwd = Path.cwd().resolve()
    if path.resolve() == cwd or path.resolve() in cwd.parents:
        raise ArchError(f"cannot replace the folder {path}: it is (or holds) the current folder",
                        hint="name a new folder for the output")
    ours = {name.split("/")[0] for name in files} | KEEP_IN_FOLDER | {MANIFEST}
    try:
        ours |= {line.split("/")[0] for line in (path / MANIFEST).read_text(encoding="utf-8").splitlines() if line}
    except (OSError, UnicodeDecodeError):
        pass  # not a folder archc wrote: it may hold only the new files' names
    try:
        others = sorted(entry.name for entry in os.scandir(path) if entry.name not in ours)
    except OSError as e:
        raise ArchError(f"cannot write the folder {path}: {_why(e)}") from None
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ArchError(f"the folder {path} holds other files ({shown}); archc replaces the whole folder, "
                        "so it writes only into a new folder or one it wrote before",
                        hint="name a new folder for the output")


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


__all__ = ["read_regular", "refuse_overwrite", "write_atomic", "write_folder_atomic"]
