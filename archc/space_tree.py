"""The well-typed completions of a search space as a tree of independent choices, counted and drawn.

A `Part` picks exactly one of its `Alt`s; an `Alt` fixes some holes, adds its cost, and then picks
one alternative in each of its parts independently. archc/space.py builds the tree: the top part's
alternatives are the outer group's combinations that check; each has one part per layer of a
per-layer stack (its alternatives: the layer's options) and one part per region (its
alternatives: the region's combinations that check, each with the parts of its own layers).

Counts multiply over parts and add over alternatives. A budget needs the total cost, which adds
up over the parts: the cost distribution of an alternative is the convolution of its parts'
distributions shifted by its own cost (exact ints), and a draw picks a total cost within the
budget with probability proportional to its completions, then each part's share of it in turn
with probability proportional to the completions of the parts after it: exactly uniform, no
rejection.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

from archc.errors import ArchError
from archc.frontend.holes import Hole

Cost = tuple[int, int]  # (parameters, FLOPs), times the space's scale
Choice = dict[str, int]
Allowed = Mapping[str, set[int]]
MAX_STATES = 2_000_000  # partial cost sums the budget's convolutions keep, over the whole tree
ZERO: Cost = (0, 0)


@dataclass(eq=False)
class Alt:
    picks: tuple[tuple[Hole, int], ...]  # a per-layer hole's picks take their layer from the part
    cost: Cost
    parts: list["Part"] = field(default_factory=list)
    named: dict[int | None, list[tuple[str, int]]] = field(default_factory=dict)  # paths(): by layer


@dataclass(eq=False)
class Part:
    alts: list[Alt]
    layer: int | None = None  # the layer, for a per-layer stack's part


def paths(alt: Alt, layer: int | None) -> list[tuple[str, int]]:
    """The holes `alt` picks, by path (a per-layer hole's in `layer`), and their options."""
    named = alt.named.get(layer)
    if named is None:
        named = alt.named[layer] = [(h.at(layer) if layer is not None and h.per_layer else h.path, k)
                                    for h, k in alt.picks]
    return named


def restrict(part: Part, allowed: Allowed) -> Part:
    """The tree with only the alternatives whose picks are allowed (and whose parts keep one);
    a part that keeps everything is the part itself."""
    alts, same = [], True
    for a in part.alts:
        if all(k in allowed.get(p, (k,)) for p, k in paths(a, part.layer)):
            parts = [restrict(p, allowed) for p in a.parts]
            if all(p.alts for p in parts):
                kept = all(p is q for p, q in zip(parts, a.parts))
                alts.append(a if kept else Alt(a.picks, a.cost, parts, a.named))
                same = same and kept
                continue
        same = False
    return part if same else Part(alts, part.layer)


class Counts:
    """Counts and draws of one tree, memoized (`within`: the budget on a total cost, or None)."""

    def __init__(self, top: Part, within: Callable[[Cost], bool] | None, budget_text: str = "") -> None:
        self.top, self.within, self.budget_text = top, within, budget_text
        self._n: dict[int, int] = {}
        self._dist: dict[int, dict[Cost, int]] = {}
        self._suffix: dict[int, list[dict[Cost, int]]] = {}
        self._cum: dict[int, list[int]] = {}
        self._top: list[tuple[list[Cost], list[int]]] | None = None
        self._states = 0

    # -- counts --
    def count(self) -> int:
        if self.within is None:
            return self._count_part(self.top)
        return sum(cum[-1] for _, cum in self._top_table() if cum)

    def _count_part(self, part: Part) -> int:
        if id(part) not in self._n:
            self._n[id(part)] = sum(self._count_alt(a) for a in part.alts)
        return self._n[id(part)]

    def _count_alt(self, alt: Alt) -> int:
        if id(alt) not in self._n:
            self._n[id(alt)] = math.prod(self._count_part(p) for p in alt.parts)
        return self._n[id(alt)]

    # -- cost distributions --
    def _dist_part(self, part: Part) -> dict[Cost, int]:
        key = id(part)
        if key not in self._dist:
            out: dict[Cost, int] = {}
            for a in part.alts:
                for c, n in self._dist_alt(a).items():
                    out[c] = out.get(c, 0) + n
            self._dist[key] = out
            self._grow(len(out))
        return self._dist[key]

    def _dist_alt(self, alt: Alt) -> dict[Cost, int]:
        if not alt.parts:
            return {alt.cost: 1}
        key = id(alt)
        if key not in self._dist:
            (p, f) = alt.cost
            self._dist[key] = {(p + a, f + b): n for (a, b), n in self._suffixes(alt)[0].items()}
            self._grow(len(self._dist[key]))
        return self._dist[key]

    def _suffixes(self, alt: Alt) -> list[dict[Cost, int]]:
        """suffix[j][s]: the completions of parts j.. whose costs add up to s."""
        if id(alt) not in self._suffix:
            suffix = [{ZERO: 1}]
            for part in reversed(alt.parts):
                after, d = suffix[0], self._dist_part(part)
                out: dict[Cost, int] = {}
                for (a, b), n in d.items():
                    for (x, y), m in after.items():
                        s = (a + x, b + y)
                        out[s] = out.get(s, 0) + n * m
                suffix.insert(0, out)
                self._grow(len(out))
            self._suffix[id(alt)] = suffix
        return self._suffix[id(alt)]

    def _grow(self, n: int) -> None:
        self._states += n
        if self._states > MAX_STATES:
            raise ArchError(f"the budget '{self.budget_text}' splits this space into more than {MAX_STATES:,} "
                            "partial costs: narrow the choices")

    def _top_table(self) -> list[tuple[list[Cost], list[int]]]:
        """Per top alternative: its total costs within the budget, and the running count over them."""
        if self._top is None:
            assert self.within is not None
            self._top = []
            for a in self.top.alts:
                costs = [c for c in self._dist_alt(a) if self.within(c)]
                self._top.append((costs, list(itertools.accumulate(self._dist_alt(a)[c] for c in costs))))
        return self._top

    # -- draws --
    def sample(self, rng: random.Random) -> Choice:
        out: Choice = {}
        if self.within is None:
            self._draw_part(self.top, rng, out)
            return out
        table = self._top_table()
        top = self._cum.get(id(self.top))
        if top is None:
            top = self._cum[id(self.top)] = list(itertools.accumulate(cum[-1] if cum else 0 for _, cum in table))
        i = _pick(top, rng)
        costs, cum = table[i]
        cost = costs[_pick(cum, rng)]
        self._draw_alt_at(self.top.alts[i], None, cost, rng, out)
        return out

    def _draw_part(self, part: Part, rng: random.Random, out: Choice) -> None:
        if part.layer is not None:  # a layer: each option one completion
            alt = part.alts[rng.randrange(len(part.alts))]
        else:
            cum = self._cum.get(id(part))
            if cum is None:
                cum = self._cum[id(part)] = list(itertools.accumulate(self._count_alt(a) for a in part.alts))
            alt = part.alts[_pick(cum, rng)]
        out.update(paths(alt, part.layer))
        for p in alt.parts:
            self._draw_part(p, rng, out)

    def _draw_alt_at(self, alt: Alt, layer: int | None, cost: Cost, rng: random.Random, out: Choice) -> None:
        """A uniform completion of `alt` whose total cost is `cost`."""
        out.update(paths(alt, layer))
        left = (cost[0] - alt.cost[0], cost[1] - alt.cost[1])
        suffix = self._suffixes(alt) if alt.parts else [{ZERO: 1}]
        for j, part in enumerate(alt.parts):
            after = suffix[j + 1]
            if part.layer is not None:  # a layer: each option one completion of its own cost
                weights = list(itertools.accumulate(after.get((left[0] - a.cost[0], left[1] - a.cost[1]), 0)
                                                    for a in part.alts))
                pick = part.alts[_pick(weights, rng)]
                out.update(paths(pick, part.layer))
                left = (left[0] - pick.cost[0], left[1] - pick.cost[1])
                continue
            options = [(c, n * after.get((left[0] - c[0], left[1] - c[1]), 0))
                       for c, n in self._dist_part(part).items()]
            c = options[_pick(list(itertools.accumulate(w for _, w in options)), rng)][0]
            left = (left[0] - c[0], left[1] - c[1])
            weights = list(itertools.accumulate(self._dist_alt(a).get(c, 0) for a in part.alts))
            self._draw_alt_at(part.alts[_pick(weights, rng)], part.layer, c, rng, out)

    # -- listing --
    def completions(self) -> Iterator[Choice]:
        for alt in self.top.alts:
            for choice, cost in _expand(alt, None):
                if self.within is None or self.within(cost):
                    yield choice


def _expand(alt: Alt, layer: int | None) -> Iterator[tuple[Choice, Cost]]:
    own = dict(paths(alt, layer))
    for combo in itertools.product(*([c for a in p.alts for c in _expand(a, p.layer)] for p in alt.parts)):
        choice = dict(own)
        p, f = alt.cost
        for c, (x, y) in combo:
            choice.update(c)
            p, f = p + x, f + y
        yield choice, (p, f)


def _pick(cumulative: list[int], rng: random.Random) -> int:
    """An index drawn with probability proportional to its weight, given the running sums (exact
    for big ints)."""
    return bisect.bisect_right(cumulative, rng.randrange(cumulative[-1]))
