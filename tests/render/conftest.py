"""Diagrams read back as data: an SVG parsed into its clusters, nodes, edges and texts."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

NS = "{http://www.w3.org/2000/svg}"


@dataclass
class Svg:
    clusters: list[list[str]] = field(default_factory=list)  # the texts of each cluster's label
    nodes: dict[str, list[str]] = field(default_factory=dict)  # node id -> its texts
    edges: list[tuple[str, str, list[str], str]] = field(default_factory=list)  # src, dst, texts, colour

    def texts(self) -> list[str]:
        out = [t for c in self.clusters for t in c] + [t for ts in self.nodes.values() for t in ts]
        return out + [t for e in self.edges for t in e[2]]

    def has(self, fragment: str) -> bool:
        return any(fragment in t for t in self.texts())


def _texts(g: ET.Element) -> list[str]:
    return [" ".join("".join(t.itertext()).replace("\xa0", " ").split()) for t in g.iter(f"{NS}text")]


def read_svg(path: Path) -> Svg:
    root = ET.parse(path).getroot()  # raises on malformed XML
    out = Svg()
    for g in root.iter(f"{NS}g"):
        kind = g.get("class")
        title = g.findtext(f"{NS}title") or ""
        if kind == "cluster":
            out.clusters.append(_texts(g))
        elif kind == "node":
            out.nodes[title] = _texts(g)
        elif kind == "edge":
            src, _, dst = title.partition("->")
            path_el = g.find(f"{NS}path")
            colour = path_el.get("stroke", "") if path_el is not None else ""
            out.edges.append((src, dst, _texts(g), colour))
    return out


@pytest.fixture
def svg() -> Callable[[Path], Svg]:
    return read_svg
