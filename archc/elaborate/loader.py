"""Loading `.arch` files and their imports into module environments.

Imports resolve against the importing file's folder, then the standard library (`specs/`), then
the folders the user allows (`--include`). A path that resolves outside all of those is refused,
so a spec from a stranger can read nothing else on the machine. Import cycles are errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archc import resources
from archc.elaborate.values import BlockTemplate, InterfaceRef, ModuleRef
from archc.errors import ArchError, Span, did_you_mean, register_source
from archc.frontend import ast as A
from archc.frontend.parser import MAX_SOURCE_BYTES, parse

MAX_MODULES = 256


@dataclass
class LazyLet:
    """A top-level `let`, evaluated when first used."""

    definition: A.Let
    value: Any = None
    state: str = "new"  # new | running | done


@dataclass
class ModuleEnv:
    file: str
    folder: Path
    names: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Span] = field(default_factory=dict)
    axes: set[str] = field(default_factory=set)
    ast: A.Module | None = None

    def blocks(self) -> list[A.BlockDef]:
        return [it for it in (self.ast.items if self.ast else []) if isinstance(it, A.BlockDef)]


def refuse_holes(module: A.Module) -> None:
    """A spec with `choice(...)` holes is a search space, not a model: archc.space elaborates
    each of its completions (the holes replaced by options) instead."""
    for item in module.items:
        hole = next((n for n in A.walk(item) if isinstance(n, A.Choice)), None)
        if hole is not None:
            raise ArchError("this spec is a search space (it has choice(...) holes): use archc space", hole.span)


def display_name(path: Path) -> str:
    """How a file is named in messages: relative to the working folder when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


class Loader:
    def __init__(self, includes: list[Path] | None = None) -> None:
        self.search = [resources.specs_root().resolve()] + [Path(p).resolve() for p in includes or []]
        self.allowed: list[Path] = list(self.search)
        self.cache: dict[Path, ModuleEnv] = {}
        self.stack: list[Path] = []

    # -- entry points ---------------------------------------------------------------------------
    def load_path(self, path: Path) -> ModuleEnv:
        try:
            path = path.resolve()
            found = path.is_file()
        except (OSError, RuntimeError) as e:  # a symbolic link loop (RuntimeError before Python 3.13)
            raise ArchError(f"cannot open spec file {display_name(path)}: {e}") from None
        if not found:
            raise ArchError(f"no such spec file: {path}")
        self.allowed.append(path.parent)
        return self._load(path, None)

    def load_text(self, text: str, file: str = "<string>", folder: Path | None = None) -> ModuleEnv:
        return self.load_module(parse(text, file), file, folder)

    def load_module(self, module: A.Module, file: str = "<string>", folder: Path | None = None) -> ModuleEnv:
        """A module already parsed (a search space's filled probe), its imports relative to `folder`."""
        folder = (folder or Path.cwd()).resolve()
        if folder not in self.allowed:
            self.allowed.append(folder)
        return self._build(module, file, folder)

    # -- internals ------------------------------------------------------------------------------
    def _load(self, path: Path, span: Span | None) -> ModuleEnv:
        if path in self.cache:
            return self.cache[path]
        if path in self.stack:
            chain = " -> ".join(display_name(p) for p in self.stack[self.stack.index(path):] + [path])
            raise ArchError(f"import cycle: {chain}", span)
        if len(self.cache) + len(self.stack) >= MAX_MODULES:  # loaded, and being loaded (a chain of imports)
            raise ArchError(f"more than {MAX_MODULES} files are imported", span)
        self.stack.append(path)
        try:
            try:
                if path.stat().st_size > MAX_SOURCE_BYTES:  # refuse before reading it all into memory
                    raise ArchError(f"{display_name(path)} is larger than {MAX_SOURCE_BYTES >> 20} MiB", span)
                data = path.read_bytes()
            except OSError as e:
                raise ArchError(f"cannot read {display_name(path)}: {e}", span) from None
            text = decode_source(data, display_name(path))
            file = display_name(path)
            env = self._build(parse(text, file), file, path.parent)
        finally:
            self.stack.pop()
        self.cache[path] = env
        return env

    def _build(self, module: A.Module, file: str, folder: Path) -> ModuleEnv:
        refuse_holes(module)
        env = ModuleEnv(file=file, folder=folder, ast=module)
        for item in module.items:
            if isinstance(item, A.Import):
                self._import(env, item)
            elif isinstance(item, A.AxisDecl):
                env.axes.update(item.names)
            elif isinstance(item, A.Let):
                self._define(env, item.name, LazyLet(item), item.span)
            elif isinstance(item, A.InterfaceDef):
                self._define(env, item.name, InterfaceRef(item, env), item.span)
            elif isinstance(item, A.BlockDef):
                self._define(env, item.name, BlockTemplate(item, env), item.name_span or item.span)
        return env

    def _define(self, env: ModuleEnv, name: str, value: Any, span: Span) -> None:
        if name in env.names:
            raise ArchError(f"'{name}' is already defined", span, notes=[("defined here", env.origins.get(name))])
        env.names[name] = value
        env.origins[name] = span

    def _import(self, env: ModuleEnv, item: A.Import) -> None:
        target = self._load(self.resolve(item.path, env.folder, item.span), item.span)
        if item.alias:
            self._define(env, item.alias, ModuleRef(target), item.span)
            return
        exported = {n: v for n, v in target.names.items() if not isinstance(v, ModuleRef)}
        wanted = item.names if item.names is not None else tuple(exported)
        for name in wanted:
            if name not in exported:
                raise ArchError(f"'{item.path}' defines no '{name}'", item.span,
                                did_you_mean(name, exported))
            if env.names.get(name) is exported[name]:
                continue
            self._define(env, name, exported[name], item.span)
        env.axes.update(target.axes)

    def resolve(self, rel: str, folder: Path, span: Span) -> Path:
        """The file an import names. A path (or a link) that leads outside the allowed folders is
        refused before anything there is read, so a spec cannot probe the rest of the machine."""
        if not rel.endswith(".arch"):
            raise ArchError(f"import '{rel}' must name an .arch file", span)
        bases = [] if os.path.isabs(rel) else [folder] + self.search
        candidates = [Path(rel)] if os.path.isabs(rel) else [b / rel for b in bases]
        escaped = 0
        for cand in candidates:
            try:
                real = cand.resolve()
                if not self._allowed(real):
                    if self._allowed(Path(os.path.normpath(cand))) and real.exists():
                        raise ArchError(f"import '{rel}' is a link to a file outside the allowed folders", span,
                                        _ROOTS_HINT)
                    escaped += 1
                    continue
                if real.is_file():
                    return real
            except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: a link loop, before Python 3.13
                raise ArchError(f"cannot import '{rel}': {e}", span) from None
        if escaped == len(candidates):
            raise ArchError(f"import '{rel}' reaches outside the allowed folders", span, _ROOTS_HINT)
        raise ArchError(f"cannot find '{rel}'", span, did_you_mean(rel, self._known(rel, bases)))

    def _allowed(self, path: Path) -> bool:
        return any(path.is_relative_to(root) for root in self.allowed)

    def _known(self, rel: str, bases: list[Path]) -> list[str]:
        """Importable names near a missing one, for 'did you mean': the standard library and the
        .arch files in the folder the import points into."""
        known = [str(p.relative_to(self.search[0])) for p in self.search[0].rglob("*.arch")]
        sub = os.path.dirname(rel)
        for base in bases:
            near = (base / sub).resolve()
            if self._allowed(near) and near.is_dir():
                known += [os.path.join(sub, f.name) for f in sorted(near.glob("*.arch"))[:1000]]
        return known


_ROOTS_HINT = "imports may only reach the spec's folder, the standard library and folders given with --include"


def decode_source(data: bytes, file: str) -> str:
    """A spec's text from its bytes (UTF-8; a byte-order mark, as Windows editors write, is dropped).
    Bytes that are not UTF-8 are an error at the line and column where they stand."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start
        line_start = data.rfind(b"\n", 0, start) + 1
        line = data.count(b"\n", 0, start) + 1
        col = len(data[line_start:start].decode("utf-8-sig", "replace")) + 1
        register_source(file, data.decode("utf-8-sig", "replace"))
        raise ArchError(f"the file is not UTF-8 text: byte 0x{data[start]:02x} cannot start or continue a "
                        "character", Span(file, line, col, line, col + 1),
                        "save the spec as UTF-8") from None
