"""The kernel targets as `archc build` uses them: `--target triton|cuda -o OUT/ [--explain]`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from archc.errors import ArchError
from archc.ir.graph import Graph

KERNEL_TARGETS = ("triton", "cuda")


def _backend(target: str):  # type: ignore[no-untyped-def]
    if target == "triton":
        from archc.backends.triton import emit
    else:
        from archc.backends.cuda import emit  # type: ignore[no-redef]
    return emit


def explain(graph: Graph, target: str) -> list[str]:
    """One line per region: which kernel or library call runs it, and why a region runs as torch."""
    return _backend(target).explain_lines(graph)


def write_package(graph: Graph, target: str, out: str | None, write: Callable[[Path, str], None]) -> list[Path]:
    """Write the target's package into the folder `out`; returns the files written."""
    if out is None:
        raise ArchError(f"--target {target} writes a Python package: give the folder with -o OUT/")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ArchError(f"-o {out}: --target {target} writes a folder, and this is a file")
    written = []
    for name, text in _backend(target).package(graph).items():
        write(folder / name, text)
        written.append(folder / name)
    return written


__all__ = ["KERNEL_TARGETS", "explain", "write_package"]
