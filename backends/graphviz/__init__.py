"""The graphviz backend: a Neural-Circuit-Diagram-style picture of a graph (`archc render`).

`to_dot(graph)` writes dot text (from `diagram.dot.j2`, filled with a `Diagram` built in
`diagram.py`); `render(graph, path)` runs graphviz's `dot` to write SVG, PNG or PDF. Where `dot`
is missing, `render` writes the dot text next to the requested file and says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from archc.backends.quote import c_comment, dot_str
from archc.errors import ArchError
from archc.ir.graph import Graph

from .diagram import SKIP_COLOR, Diagram, block_args, build_diagram, count, lines

FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = "install graphviz to draw it: apt-get install graphviz (or brew install graphviz)"


@lru_cache(maxsize=1)
def _template() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
                             autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters.update(dot_id=dot_id, dot_str=dot_str, dot_comment=c_comment)
    return env.get_template("diagram.dot.j2")


_DOT_KEYWORDS = frozenset({"node", "edge", "graph", "digraph", "subgraph", "strict"})


def dot_id(text: str) -> str:
    """A DOT node or cluster id: as it is when it is a plain ASCII name (`n3`, `cluster_2`, `in_x`),
    else quoted (quote.dot_str), so a port name from an IR file stays one id."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) and text.lower() not in _DOT_KEYWORDS:
        return text
    return dot_str(text)


def _title(graph: Graph) -> str:
    args = f"({block_args(graph.model_args, 160)})" if graph.model_args else ""
    return lines(graph.name + args, f"{count(graph.param_count())} params", small=10)


def diagram_dot(d: Diagram, graph: Graph) -> str:
    return str(_template().render(d=d, title=_title(graph), skip_color=SKIP_COLOR))


def to_dot(graph: Graph, depth: int | None = None, expand: bool = False) -> str:
    """The diagram of `graph` as dot text; `depth` opens that many levels of scopes (all when
    None); `expand` draws every layer of a stack instead of one per run of identical layers."""
    return diagram_dot(build_diagram(graph, depth, expand), graph)


@dataclass(frozen=True)
class Rendered:
    path: Path  # the file written
    fallback: bool  # True when `dot` was missing and `path` is dot text instead of the picture


def output_format(path: str | Path, fmt: str | None = None) -> str:
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt == "gv":
        fmt = "dot"
    if fmt not in FORMATS:
        raise ArchError(f"cannot render to '{path}': the format must be one of {', '.join(FORMATS)}",
                        hint="name the output net.svg, net.png, net.pdf or net.dot")
    return fmt


def render(graph: Graph, path: str | Path, fmt: str | None = None, depth: int | None = None,
           expand: bool = False, dpi: int = 96) -> Rendered:
    """Write the diagram of `graph` to `path` (format from its suffix unless `fmt`)."""
    path = Path(path)
    fmt = output_format(path, fmt)
    dot_text = to_dot(graph, depth, expand)
    if fmt == "dot":
        write_atomic(path, dot_text.encode())
        return Rendered(path, False)
    exe = shutil.which("dot")
    if exe is None:
        fallback = path.with_suffix(".dot")
        write_atomic(fallback, dot_text.encode())
        return Rendered(fallback, True)
    args = [exe, f"-T{fmt}"] + ([f"-Gdpi={dpi}"] if fmt == "png" else [])
    limit = dot_timeout()
    try:
        result = subprocess.run(args, input=dot_text.encode(), capture_output=True, check=False, timeout=limit)
    except subprocess.TimeoutExpired:
        raise ArchError(f"graphviz 'dot' did not finish the diagram of {graph.name} in {limit:g} s",
                        hint="draw fewer levels with --depth N, or write the dot text (-o net.dot); "
                             "$ARCHC_DOT_TIMEOUT sets the limit in seconds") from None
    if result.returncode != 0:
        raise ArchError(f"graphviz 'dot' failed on the diagram of {graph.name}: "
                        f"{result.stderr.decode(errors='replace').strip()[:2000]}")
    write_atomic(path, result.stdout)
    return Rendered(path, False)


DOT_TIMEOUT_S = 120.0  # a wide graph can keep `dot` busy for hours: bounded, as all of archc's work


def dot_timeout() -> float:
    """How long `dot` may run: $ARCHC_DOT_TIMEOUT seconds, else DOT_TIMEOUT_S."""
    try:
        value = float(os.environ.get("ARCHC_DOT_TIMEOUT", DOT_TIMEOUT_S))
    except ValueError:
        return DOT_TIMEOUT_S
    return value if value > 0 else DOT_TIMEOUT_S


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename: no half-written output
    (archc.files.write_atomic, which keeps the mode of the file it replaces)."""
    from archc.files import write_atomic as write

    write(path, data)


__all__ = ["FORMATS", "INSTALL_HINT", "Rendered", "build_diagram", "output_format", "render", "to_dot",
           "write_atomic"]
