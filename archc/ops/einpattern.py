"""einops-style axis patterns with multi-letter names: `b t (three h d) -> three b h t d`.

Used by `rearrange` and `einsum`. A side is a list of elements; an element is a group of axis
names (a bare name is a group of one; `1` or `()` is an empty group of size 1; `...` stands for
the axes not named).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from archc.ops.registry import OpError

_TOKEN = re.compile(r"\s*(\.\.\.|\(|\)|[A-Za-z_][A-Za-z_0-9]*|1|\S)")


@dataclass(frozen=True)
class Side:
    groups: tuple[tuple[str, ...], ...]  # "..." appears as its own one-name group

    @property
    def names(self) -> list[str]:
        return [n for g in self.groups for n in g]

    @property
    def has_ellipsis(self) -> bool:
        return ("...",) in self.groups


def parse_side(text: str, op: str) -> Side:
    groups: list[tuple[str, ...]] = []
    current: list[str] | None = None
    for tok in _TOKEN.findall(text):
        if tok == "(":
            if current is not None:
                raise OpError(f"{op}: nested parentheses in pattern '{text}'")
            current = []
        elif tok == ")":
            if current is None:
                raise OpError(f"{op}: unbalanced ')' in pattern '{text}'")
            groups.append(tuple(current))
            current = None
        elif tok == "1":
            groups.append(()) if current is None else None
        elif tok == "..." or re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", tok):
            if tok == "..." and current is not None:
                raise OpError(f"{op}: '...' cannot stand inside parentheses in '{text}'")
            (current.append(tok) if current is not None else groups.append((tok,)))
        else:
            raise OpError(f"{op}: unexpected '{tok}' in pattern '{text}'")
    if current is not None:
        raise OpError(f"{op}: unbalanced '(' in pattern '{text}'")
    names = [n for g in groups for n in g]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise OpError(f"{op}: axis '{sorted(dupes)[0]}' appears twice in '{text}'")
    return Side(tuple(groups))


def parse_arrow(pattern: str, op: str) -> tuple[str, str]:
    if pattern.count("->") != 1:
        raise OpError(f"{op}: pattern '{pattern}' needs exactly one '->'")
    left, right = pattern.split("->")
    return left, right


def expand_ellipsis(side: Side, rank: int, op: str, pattern: str) -> Side:
    """Replace `...` by the anonymous axes `_0 _1 ...` so every axis is named."""
    fixed = len(side.groups) - (1 if side.has_ellipsis else 0)
    if side.has_ellipsis:
        n = rank - fixed
        if n < 0:
            raise OpError(f"{op}: pattern '{pattern}' needs at least {fixed} axes, the input has {rank}")
        groups: list[tuple[str, ...]] = []
        for g in side.groups:
            groups.extend([(f"_{i}",) for i in range(n)] if g == ("...",) else [g])
        return Side(tuple(groups))
    if fixed != rank:
        raise OpError(f"{op}: pattern '{pattern}' has {fixed} axes but the input has rank {rank}")
    return side


def expand_right(side: Side, n: int) -> Side:
    groups: list[tuple[str, ...]] = []
    for g in side.groups:
        if g == ("...",):
            groups.extend([(f"_{i}",) for i in range(n)])
        else:
            groups.append(tuple(x for name in g for x in ([f"_{i}" for i in range(n)] if name == "..." else [name])))
    return Side(tuple(groups))
