"""Generated model modules, importable by name: `archc.generated.m<digest>`.

`archc.compile` runs the source that `emit_python` writes. For a model to pickle (`torch.save(model)`)
and load in another process, its classes must live in a module that process can import. So the
source is kept in the user's cache (`~/.cache/archc/generated/m<digest>.py`, folder 0700, file 0600,
see archc/cachefs.py) and imported through the finder below, as any module is.

The name is the file's identity: `<digest>` is the first 32 hex digits of the sha256 of its text,
and the finder runs a file only when its text hashes to its name and it passes the owner and mode
checks. A planted or edited file is refused (ImportError with the reason), never run.

    >>> module = load("x = 1\\n")          # doctest: +SKIP
    >>> module.__name__                     # doctest: +SKIP
    'archc.generated.m2b8f0c1e...'
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import re
import sys
import types
from pathlib import Path

from archc import cachefs

__path__: list[str] = []  # type: ignore[no-redef]  # a package whose modules come only from the finder below
_NAME = re.compile(re.escape(__name__) + r"\.m([0-9a-f]{32})")
_SOURCES: dict[str, str] = {}  # digest -> text, for sources made in this process (no cache folder needed)


KEEP = 1000  # generated sources kept in the cache folder; the oldest go first


def _prune(where: Path, keep: int) -> None:
    """Remove the least recently written generated sources beyond `keep` (a pickled model whose
    source went loads again after its spec is compiled once more)."""
    try:
        files = sorted(where.glob("m*.py"), key=lambda f: f.stat().st_mtime)
        for old in files[:max(0, len(files) - keep)]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:32]


def folder() -> Path:
    return cachefs.cache_home() / "archc" / "generated"


class _Loader(importlib.abc.Loader):
    def __init__(self, source: str, filename: str) -> None:
        self.source, self.filename = source, filename

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        module.__file__ = self.filename
        linecache.cache[self.filename] = (len(self.source), None, self.source.splitlines(keepends=True),
                                          self.filename)
        exec(compile(self.source, self.filename, "exec"), module.__dict__)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        m = _NAME.fullmatch(fullname)
        if m is None:
            return None
        key = m.group(1)
        source = _SOURCES.get(key)
        file = folder() / f"m{key}.py"
        if source is None:
            try:
                data = cachefs.read_private(file)
            except cachefs.UnsafeCache as err:
                raise ImportError(f"{fullname}: refusing {file}: {err}", name=fullname) from None
            if data is None:
                raise ImportError(f"{fullname}: no generated source at {file}; rebuild the model with archc "
                                  "(a pickled archc model loads where it was compiled, or after the same "
                                  "spec was compiled there)", name=fullname)
            text = data.decode("utf-8", "replace")
            if digest(text) != key:
                raise ImportError(f"{fullname}: refusing {file}: its text does not hash to its name "
                                  "(edited or planted)", name=fullname)
            source = _SOURCES[key] = text
        return importlib.util.spec_from_loader(fullname, _Loader(source, str(file)))


def load(source: str) -> types.ModuleType:
    """Import generated `source` as `archc.generated.m<digest>`, keeping it in the cache folder
    (when there is a private one) so that the same name imports in other processes."""
    key = digest(source)
    name = f"{__name__}.m{key}"
    if name in sys.modules:
        return sys.modules[name]
    _SOURCES[key] = source
    if cachefs.supported():
        try:
            cachefs.private_dir(folder())
            file = folder() / f"m{key}.py"
            if cachefs.read_private(file) != source.encode():
                cachefs.write_private(file, source.encode())
                _prune(folder(), keep=KEEP)
        except (cachefs.UnsafeCache, OSError):
            pass  # pickles of this model then load in this process only
    return importlib.import_module(name)


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
