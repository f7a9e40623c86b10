"""Search spaces: a spec with `choice(...)` holes, and its well-typed completions.

`Space(path)` reads a spec whose holes (archc/frontend/holes.py names them) stand where values,
ops, blocks, connection policies or depths may; a completion picks one option per hole. A
completion counts only when its concrete spec (the holes replaced by the chosen options, formatted
by `archc fmt`'s printer) type-checks on its own and meets the budget (`where`), so `count()` is
exact and `sample()` never returns a spec that fails.

How it counts without trying every combination (docs/language.md, "How counting scales"):

- the holes but the per-layer ones fall into independent groups (archc/space_groups.py): the
  model's stacks that nothing but their input crosses into, each with its holes, and the outer
  group of the rest; each combination of the outer group's options is elaborated, and each
  stack's group once per combination of its own, the other such stacks taken out (depth 0); an
  application that changes its input's type makes the stack join the outer group;
- a per-layer hole (`choice(..., per_layer=true)`, one hole per layer of its stack) is checked once
  per option, with every layer of its stack on that option (layers that read their index: one
  layer at a time, the stack cut after it); each layer must keep its input's type (watched while
  the probe elaborates), so layer i sees the same type whatever the other layers chose, and a
  mixed choice type-checks exactly when each layer's option does (archc/space_probe.py);
- the static costs add up over groups and layers, so a budget is counted by convolving their cost
  distributions (exact ints, archc/space_tree.py).

Sampling draws an outer combination (within a budget: and a total cost) with probability
proportional to its number of completions, then each group and layer in proportion to the
completions of the rest: uniform over all well-typed completions, with no rejection and no
backtracking.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping

from archc.errors import ArchError
from archc.frontend.fmt import format_module
from archc.frontend.holes import Hole, fill, find_holes
from archc.frontend.parser import parse
from archc.space_groups import Region, find_regions, shared_with_layers
from archc.space_probe import Outer, Prober, Unsealed, Verdict, depth_expr
from archc.space_tree import ZERO, Allowed, Alt, Choice, Cost, Counts, Part, restrict
from archc.space_tree import paths as tree_paths

MAX_COMBINATIONS = 20_000  # combinations of the outer holes' options (each one is elaborated)
MAX_ENUMERATE = 1_000_000  # completions that enumerate() lists


# ---- budgets -----------------------------------------------------------------------------------
_MEASURES = ("params", "flops")
_COMPARE = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b,
            ">": lambda a, b: a > b}
_CLAUSE = re.compile(r"\s*([A-Za-z_]\w*)\s*(<=|>=|<|>)\s*([0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?)\s*")


@dataclass(frozen=True)
class Budget:
    """`params <= 25e6 and flops <= 4e9`: limits on the static cost model, all of which must hold."""

    clauses: tuple[tuple[str, str, float], ...]  # (measure, operator, bound)
    text: str

    @property
    def needs_flops(self) -> bool:
        return any(m == "flops" for m, _, _ in self.clauses)

    def holds(self, measures: Mapping[str, int | Fraction]) -> bool:
        return all(_COMPARE[op](measures[m], bound) for m, op, bound in self.clauses)


def parse_budget(text: str) -> Budget:
    """Parse `MEASURE OP NUMBER (and MEASURE OP NUMBER)*` (MEASURE: params, flops; OP: <= < >= >).
    Nothing is evaluated: anything else is an error that quotes the clause."""
    clauses = []
    for part in re.split(r"\band\b", text):
        m = _CLAUSE.fullmatch(part)
        if not m:
            raise ArchError(f"--where: cannot read '{part.strip()}': write MEASURE OP NUMBER joined by 'and', "
                            f"e.g. 'params <= 25e6 and flops <= 4e9'")
        measure, op, number = m.groups()
        if measure not in _MEASURES:
            raise ArchError(f"--where: unknown measure '{measure}' (known: {', '.join(_MEASURES)})")
        clauses.append((measure, op, float(number.replace("_", ""))))
    return Budget(tuple(clauses), text.strip())


# ---- the space ----
class Space:
    def __init__(self, path: str | Path, model: str | None = None, where: str | None = None,
                 axes: Mapping[str, int] | None = None, includes: list[Path] | None = None,
                 max_combinations: int = MAX_COMBINATIONS) -> None:
        from archc.elaborate.loader import decode_source, display_name
        from archc.files import read_regular
        from archc.frontend.parser import MAX_SOURCE_BYTES

        path = Path(path)
        self.file = display_name(path.resolve())
        self.folder = path.resolve().parent
        self.module = parse(decode_source(read_regular(path, "spec file", MAX_SOURCE_BYTES), self.file), self.file)
        self._holes = find_holes(self.module)
        self._outer_holes = [h for h in self._holes if not h.per_layer]
        self.model = model
        self.includes = includes or []
        self.budget = parse_budget(where) if where else None
        self.axes = dict(axes or {})
        self.max_combinations = max_combinations
        self.prober = Prober(self.module, self._holes, self.file, self.folder, model, self.includes, self.budget,
                             self.axes)
        self.regions: list[Region] = find_regions(self.module, self._holes, model)
        shared = shared_with_layers(self.module, self._holes) if self.budget is not None else None
        if shared is not None:
            raise ArchError(f"a budget over per-layer choices needs layers that add up: this stack's layers read "
                            f"'{shared[1]}', which the block binds (weights they would share count once)",
                            shared[0].span)
        self._tree: Part | None = None
        self._counts: Counts | None = None
        self._tried = 0
        self._first_error: ArchError | None = None
        self._scale = 1

    # -- the holes --
    def holes(self) -> list[tuple[str, tuple[str, ...]]]:
        """Each hole's path and its options as written, in source order (a per-layer hole once,
        as `stack[*]`)."""
        return [(h.path, h.options) for h in self._holes]

    def groups(self) -> list[list[str]]:
        """The holes by independent group (archc/space_groups.py): the outer group first, then each
        region's (a per-layer family as `stack[*]`); counted and drawn group by group."""
        self._built()
        inner = {id(h) for r in self.regions for h in r.all_holes}
        outer = [h.path for h in self._holes if id(h) not in inner]
        return [outer] + [[h.path for h in r.all_holes] for r in self.regions]

    def combinations(self) -> int:
        """Completions before type-checking: the outer holes' combinations, each times the per-layer
        options over the layers it gives (a combination that fails before its stacks are built
        counts once)."""
        self._built()
        return self._tried

    # -- counting, enumerating, sampling --
    def count(self, allowed: Allowed | None = None) -> int:
        """The exact number of completions that type-check (and meet the budget); with `allowed`,
        of those that pick only allowed options (path -> option indices; other holes are free)."""
        return self._counter(allowed).count()

    def enumerate(self) -> list[Choice]:
        """Every well-typed completion: outer holes in the order of their options (the last varies
        fastest), then the layers."""
        n = self.count()
        if n > MAX_ENUMERATE:
            raise ArchError(f"this space has {n:,} well-typed completions; enumerate() lists at most "
                            f"{MAX_ENUMERATE:,}: count or sample it instead")
        return list(self._counter(None).completions())

    def sample(self, rng: random.Random, allowed: Allowed | None = None) -> Choice:
        """One well-typed completion, uniformly: each is drawn with probability 1 / count()."""
        counts = self._counter(allowed)
        if not counts.count():
            raise ArchError(self._none_message() if allowed is None else
                            "no well-typed completion picks only the allowed options")
        return counts.sample(rng)

    def mutate(self, choice: Choice, rng: random.Random) -> Choice:
        """A well-typed neighbour of `choice`: one hole (one layer's, for a per-layer hole) on
        another option, drawn uniformly from the neighbours that type-check (and meet the budget),
        holes tried in a random order; `choice` itself when no hole can change."""
        self._known(choice)
        paths = list(choice)
        rng.shuffle(paths)
        for path in paths:
            others = {p: {k} for p, k in choice.items() if p != path}
            n = len(self._hole_of(path).choice.options)
            allowed = {**others, path: set(range(n)) - {choice[path]}}
            if n > 1 and self.count(allowed):
                return self.sample(rng, allowed)
        return dict(choice)

    def crossover(self, a: Choice, b: Choice, rng: random.Random) -> Choice:
        """A well-typed child of `a` and `b`: each hole on `a`'s option or `b`'s, drawn uniformly
        from the children that type-check (and meet the budget); `a` and `b` are such children, so
        one always exists. A hole only one parent has (a layer of the deeper stack) is free."""
        self._known(a)
        self._known(b)
        return self.sample(rng, {p: {a[p], b[p]} for p in a if p in b})

    def suggest(self, trial: Any) -> Choice:
        """A well-typed completion chosen by an Optuna trial, define-by-run: each hole is named by its
        path and offered all its options (`trial.suggest_categorical(path, options as written)`:
        Optuna keeps one list of choices per name), outer holes first, then the per-layer holes of
        the layers that the outer picks give (a conditional space). A pick that leaves no well-typed
        completion within the budget ends the trial as pruned (`optuna.TrialPruned`; without optuna,
        an ArchError), so the study learns where the space is empty."""
        picks: Choice = {}
        for h in self._outer_holes:
            self._suggest_one(trial, h, h.path, picks)
        for hole, path in self._layer_holes(self._built(), picks):
            self._suggest_one(trial, hole, path, picks)
        return picks

    def _layer_holes(self, part: Part, picks: Choice) -> Iterator[tuple[Hole, str]]:
        """The per-layer holes of the completions that the outer picks give, in order."""
        alt = next(a for a in part.alts if all(picks.get(p) == k for p, k in tree_paths(a, part.layer)))
        for p in alt.parts:
            if p.layer is not None:
                yield from ((h, h.at(p.layer)) for h, _ in p.alts[0].picks)
            else:
                yield from self._layer_holes(p, picks)

    def _suggest_one(self, trial: Any, hole: Hole, path: str, picks: Choice) -> None:
        option = trial.suggest_categorical(path, list(hole.options))
        picks[path] = hole.options.index(option)
        if not self.count({p: {k} for p, k in picks.items()}):
            why = f"no well-typed completion has {' '.join(f'{p}={o}' for p, o in self.describe(picks).items())}"
            try:
                from optuna import TrialPruned
            except ImportError:
                raise ArchError(why) from None
            raise TrialPruned(why)

    def verdict(self, choice: Choice) -> Verdict:
        """Elaborate one completion as its concrete spec stands (uncached)."""
        return self.prober.judge(fill(self.module, choice, self._holes), (), whole=True)

    # -- concrete specs --
    def concrete(self, choice: Choice) -> str:
        """The spec with each hole replaced by its chosen option, formatted: it checks on its own."""
        return format_module(fill(self.module, choice, self._holes))

    def elaborate(self, choice: Choice) -> Any:
        """The typed IR (archc.ir.Graph) of one completion, from its concrete spec."""
        from archc.elaborate import elaborate_text

        return elaborate_text(self.concrete(choice), file=f"{self.file} (completion)", model=self.model,
                              includes=self.includes, folder=self.folder)

    def describe(self, choice: Choice) -> dict[str, str]:
        """path -> the chosen option as written."""
        return {p: self._hole_of(p).options[k] for p, k in choice.items()}

    # -- the tree of independent choices (archc/space_tree.py) --
    def _counter(self, allowed: Allowed | None) -> Counts:
        tree = self._built()
        within = self._within if self.budget is not None else None
        text = self.budget.text if self.budget else ""
        if allowed is not None:
            return Counts(restrict(tree, allowed), within, text)
        if self._counts is None:
            self._counts = Counts(tree, within, text)
        return self._counts

    def _built(self) -> Part:
        while self._tree is None:
            try:
                self._tree = self._build()
            except Unsealed as err:  # that stack is not independent of the rest: it joins the outer group
                self.regions = [r for r in self.regions if r.stack is not err.stack]
        return self._tree

    def _build(self) -> Part:
        regions = self.regions if len(self.regions) > 1 else []  # one region alone saves no probe
        inner = {id(h) for r in regions for h in r.holes}
        outer = [h for h in self._outer_holes if id(h) not in inner]
        sizes = [math.prod(len(h.choice.options) for h in r.holes) for r in regions]
        n = math.prod(len(h.choice.options) for h in outer)
        probes = n * (1 + sum(sizes)) if regions else n
        if probes > self.max_combinations:
            where = outer[0].span if outer else regions[0].holes[0].span
            raise ArchError(f"the holes outside per-layer choices have {probes:,} combinations of options to check "
                            f"(each independent group's on its own); archc space checks at most "
                            f"{self.max_combinations:,}: narrow some choice(...), or make a choice in a stack's body "
                            "per_layer=true", where)
        self.regions = regions
        v0 = self.prober.variant(regions)
        variants = [self.prober.variant([o for o in regions if o is not r], r) for r in regions]
        alts: list[list[tuple[Alt, tuple[Fraction, Fraction]]]] = []  # per outer combination: its alternatives' costs
        self._tried, self._first_error = 0, None
        for key in itertools.product(*(range(len(h.choice.options)) for h in outer)):
            picks = {h.path: k for h, k in zip(outer, key)}
            o = self.prober.probe(v0, picks)
            if o.error is not None:
                self._tried += o.tried * math.prod(self._untried(r, picks) for r in regions)
                self._first_error = self._first_error or o.error
                continue
            fixed: dict[str, int] = {}  # the outer group's per-layer stacks stay on their reference options
            for g, t in zip(v0.families, o.ref):
                if t and isinstance(t[0], tuple):  # layers that read their index: one option each
                    fixed.update((h.at(i), k) for i, ti in enumerate(t) for h, k in zip(g, ti))
                else:
                    fixed.update((h.path, k) for h, k in zip(g, t))
            alt = Alt(tuple((h, k) for h, k in zip(outer, key)), ZERO, self._layer_parts(o))
            base = (Fraction(o.base[0], o.scale), Fraction(o.base[1], o.scale))
            costs = [(alt, base)]
            tried = o.tried
            for r, v in zip(regions, variants):
                part, region_tried = Part([]), 0
                for rkey in itertools.product(*(range(len(h.choice.options)) for h in r.holes)):
                    ro = self.prober.probe(v, picks | {h.path: k for h, k in zip(r.holes, rkey)} | fixed)
                    region_tried += ro.tried
                    if ro.error is not None:
                        self._first_error = self._first_error or ro.error
                        continue
                    ralt = Alt(tuple(zip(r.holes, rkey)), ZERO, self._layer_parts(ro))
                    part.alts.append(ralt)
                    costs.append((ralt, (Fraction(ro.base[0], ro.scale) - base[0],
                                         Fraction(ro.base[1], ro.scale) - base[1])))
                alt.parts.append(part)
                tried *= region_tried
            self._tried += tried
            alts.append(costs)
        return self._scaled(alts)

    def _layer_parts(self, o: Outer) -> list[Part]:
        """One part per layer of each per-layer stack; costs as exact fractions for now (_scaled)."""
        parts: list[Part] = []
        for st in o.stacks:
            def alts(options: list[tuple[tuple[int, ...], Cost]], holes: list[Hole] = st.holes) -> list[Alt]:
                return [Alt(tuple(zip(holes, t)), (Fraction(c[0], o.scale), Fraction(c[1], o.scale)))  # type: ignore[arg-type]
                        for t, c in options]

            if st.by_layer is not None:  # layers that read their index: each its own options
                parts.extend(Part(alts(options), i) for i, options in enumerate(st.by_layer))
            else:
                shared = alts(st.options)
                parts.extend(Part(shared, i) for i in range(st.depth))
        return parts

    def _scaled(self, alts: list[list[tuple[Alt, tuple[Fraction, Fraction]]]]) -> Part:
        """The tree with every cost an exact int pair, times one scale (the least common multiple of
        the denominators): the outer and group alternatives' costs are given, the layers' are theirs."""
        every = {id(a): (a, c) for costs in alts for a, c in costs}
        todo = [costs[0][0] for costs in alts]
        while todo:
            for p in todo.pop().parts:
                for a in p.alts:
                    if id(a) not in every and isinstance(a.cost[0], Fraction):
                        every[id(a)] = (a, a.cost)  # type: ignore[assignment]
                    todo.append(a)
        scale = math.lcm(*(x.denominator for _, c in every.values() for x in c)) if every else 1
        for a, c in every.values():
            a.cost = (int(c[0] * scale), int(c[1] * scale))
        self._scale = scale
        return Part([costs[0][0] for costs in alts])

    def _untried(self, r: Region, picks: Choice) -> int:
        """A region's combinations before type-checking, when the outer combination fails first: its
        per-layer options over the depth its stack is written with (a depth that is not a literal
        or a hole counts once)."""
        total = 0
        for rkey in itertools.product(*(range(len(h.choice.options)) for h in r.holes)):
            depth = _written_depth(self.module, r.stack, picks | {h.path: k for h, k in zip(r.holes, rkey)}, self._holes)
            total += math.prod(len(h.choice.options) for h in r.families) ** depth
        return total

    # -- helpers --
    def _within(self, cost: Cost) -> bool:
        assert self.budget is not None
        return self.budget.holds({"params": Fraction(cost[0], self._scale), "flops": Fraction(cost[1], self._scale)})

    def _hole_of(self, path: str) -> Hole:
        for h in self._holes:
            if h.path == path or (h.per_layer and re.sub(r"\[\d+\]", "[*]", path, count=1) == h.path):
                return h
        raise ArchError(f"the spec has no hole {path}")

    def _known(self, choice: Choice) -> None:
        for path in choice:
            self._hole_of(path)

    def _none_message(self) -> str:
        budget = f" within the budget '{self.budget.text}'" if self.budget else ""
        self._built()
        first = self._first_error
        why = f"; the first completion fails with: {first.message}" if first is not None else ""
        return f"none of the {self.combinations():,} completions of this space type-checks{budget}{why}"


def _written_depth(module: Any, stack: Any, picks: Choice, holes: tuple[Hole, ...]) -> int:
    from archc.frontend import ast as A

    expr = depth_expr(module, stack)[2]  # through a model parameter's default, as the probes read it
    hole = next((h for h in holes if h.choice is expr and h.path in picks), None)
    if hole is not None:
        expr = hole.choice.options[picks[hole.path]]
    return expr.value if isinstance(expr, A.Const) and type(expr.value) is int and expr.value >= 0 else 1
