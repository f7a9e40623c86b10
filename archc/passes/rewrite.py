"""The one driver for local rewrites: a table of rules, applied until none matches.

A rule names the op it matches, the algebra it implements (written as in a comment:
`x * 1 -> x`), and a function that either edits the graph through the `Editor` and returns True,
or returns False. The driver visits nodes in order and applies the first rule that matches, and
repeats until a sweep changes nothing (bounded, so a buggy rule pair cannot loop forever).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from archc.ir.graph import Graph, Node
from archc.passes.editor import Editor, has_annotation

MAX_SWEEPS = 50


@dataclass(frozen=True)
class Rule:
    op: str
    algebra: str
    apply: Callable[[int, Node, Editor], bool]
    respects_no_fuse: bool = True  # a node annotated @no_fuse is left alone


def rewrite(graph: Graph, rules: Sequence[Rule]) -> Graph:
    ed = Editor(graph)
    table: dict[str, list[Rule]] = {}
    for rule in rules:
        table.setdefault(rule.op, []).append(rule)
    for _ in range(MAX_SWEEPS):
        changed = False
        for index in range(len(ed.nodes)):
            node = ed.nodes[index]
            if node is None:
                continue
            for rule in table.get(node.op, ()):
                if rule.respects_no_fuse and has_annotation(node, "no_fuse"):
                    continue
                if rule.apply(index, node, ed):
                    changed = True
                    break
        if not changed:
            return ed.finish()
    raise RuntimeError(f"rewrite rules did not settle after {MAX_SWEEPS} sweeps: {[r.algebra for r in rules]}")
