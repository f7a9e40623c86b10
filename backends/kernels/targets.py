"""The kernel targets as `archc build` uses them: `--target triton|cuda -o OUT/ [--explain]`."""

from __future__ import annotations

from pathlib import Path

from archc.errors import ArchError
from archc.files import write_folder_atomic
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


def write_package(graph: Graph, target: str, out: str | None) -> list[Path]:
    """Write the target's package as the folder `out`, all at once (archc.files.write_folder_atomic:
    an interrupted build leaves the old package or the new one, never a mixture); returns the files."""
    if out is None:
        raise ArchError(f"--target {target} writes a Python package: give the folder with -o OUT/")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ArchError(f"-o {out}: --target {target} writes a folder, and this is a file")
    return write_folder_atomic(folder, _backend(target).package(graph))


__all__ = ["KERNEL_TARGETS", "explain", "write_package"]
