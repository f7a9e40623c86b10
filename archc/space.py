"""Search spaces: a spec with `choice(...)` holes, and its well-typed completions.

`Space(path)` reads a spec whose holes (archc/frontend/holes.py names them) stand where values,
ops, blocks, connection policies or depths may; a completion picks one option per hole. A
completion counts only when its concrete spec (the holes replaced by the chosen options, formatted
by `archc fmt`'s printer) type-checks on its own and meets the budget (`where`), so `count()` is
exact and `sample()` never returns a spec that fails.

How it counts without trying every combination:

- the *outer* holes (every hole but the per-layer ones) are checked jointly: each combination of
  their options is elaborated (at most MAX_COMBINATIONS of them);
- a per-layer hole (`choice(..., per_layer=true)`, one hole per layer of its stack) is checked once
  per option, with every layer of its stack on that option: the layers of such a stack must keep
  their input's type (checked on the IR of each probe), so layer i sees the same type whatever
  the other layers chose, and a mixed choice type-checks exactly when each layer's option does
  on its own (the layers must not read their index: archc/frontend/holes.py refuses that). The
  per-layer holes of different stacks are independent for the same reason;
- the static costs add up over layers: a layer on option t costs (P(t) - P(r)) / depth more than
  the reference r, where P is the whole model's cost with every layer on one option, so a budget
  is a sum over layers, and the completions within it are counted by dynamic programming over
  the layers with the partial sums as states (exact rationals).

Sampling draws an outer combination with probability proportional to its number of completions,
then each layer with probability proportional to the completions of the layers after it: uniform
over all well-typed completions, with no rejection and no backtracking.
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
from archc.space_probe import Cost, Outer, Prober, Verdict
from archc.frontend.parser import parse

MAX_COMBINATIONS = 20_000  # combinations of the outer holes' options (each one is elaborated)
MAX_ENUMERATE = 1_000_000  # completions that enumerate() lists
MAX_STATES = 2_000_000  # partial cost sums the budget's dynamic programming keeps, over all layers

Choice = dict[str, int]  # hole path -> index of the chosen option (a per-layer hole: one path per layer)
Allowed = Mapping[str, set[int]]  # hole path -> the options a restricted count or draw may pick


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

    def holds(self, measures: Mapping[str, int]) -> bool:
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
        self._outers: list[Outer] | None = None
        self._tables: dict[tuple[int, ...], list[dict[Cost, int]]] = {}  # outer key -> suffix counts
        self._weights: list[int] | None = None  # completions per outer combination (no restriction)

    # -- the holes --
    def holes(self) -> list[tuple[str, tuple[str, ...]]]:
        """Each hole's path and its options as written, in source order (a per-layer hole once,
        as `stack[*]`)."""
        return [(h.path, h.options) for h in self._holes]

    def combinations(self) -> int:
        """Completions before type-checking: the outer holes' combinations, each times the per-layer
        options over the layers it gives (a combination that fails before its stacks are built
        counts once)."""
        return sum(o.tried for o in self._probed())

    # -- counting, enumerating, sampling --
    def count(self, allowed: Allowed | None = None) -> int:
        """The exact number of completions that type-check (and meet the budget); with `allowed`,
        of those that pick only allowed options (path -> option indices; other holes are free)."""
        return sum(self._count(o, allowed) for o in self._probed())

    def enumerate(self) -> list[Choice]:
        """Every well-typed completion: outer holes in the order of their options (the last varies
        fastest), then the layers."""
        n = self.count()
        if n > MAX_ENUMERATE:
            raise ArchError(f"this space has {n:,} well-typed completions; enumerate() lists at most "
                            f"{MAX_ENUMERATE:,}: count or sample it instead")
        return [c for o in self._probed() for c in self._completions_of(o)]

    def sample(self, rng: random.Random, allowed: Allowed | None = None) -> Choice:
        """One well-typed completion, uniformly: each is drawn with probability 1 / count()."""
        outers = self._probed()
        if allowed is None and self._weights is None:
            self._weights = [self._count(o, None) for o in outers]
        weights = self._weights if allowed is None else [self._count(o, allowed) for o in outers]
        total = sum(weights)
        if not total:
            raise ArchError(self._none_message() if allowed is None else
                            "no well-typed completion picks only the allowed options")
        pick = rng.randrange(total)
        for o, w in zip(outers, weights):
            if pick < w:
                return self._draw(o, rng, allowed)
            pick -= w
        raise AssertionError(pick)

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
        outer = next(o for o in self._probed() if o.key == tuple(picks[h.path] for h in self._outer_holes))
        for st in outer.stacks:
            for i in range(st.depth):
                for h in st.holes:
                    self._suggest_one(trial, h, h.at(i), picks)
        return picks

    def _suggest_one(self, trial: Any, hole: Hole, path: str, picks: Choice) -> None:
        option = trial.suggest_categorical(path, list(hole.options))
        picks[path] = hole.options.index(option)
        if not self.count({p: {k} for p, k in picks.items()}):
            try:
                from optuna import TrialPruned
            except ImportError:
                TrialPruned = None  # noqa: N806
            why = f"no well-typed completion has {' '.join(f'{p}={o}' for p, o in self.describe(picks).items())}"
            raise TrialPruned(why) if TrialPruned is not None else ArchError(why)

    def verdict(self, choice: Choice) -> Verdict:
        """Elaborate one completion as its concrete spec stands (uncached)."""
        return self.prober.judge(fill(self.module, choice, self._holes), ())

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

    # -- probing the outer holes --
    def _probed(self) -> list[Outer]:
        if self._outers is None:
            sizes = [len(h.choice.options) for h in self._outer_holes]
            n = math.prod(sizes)
            if n > self.max_combinations:
                raise ArchError(f"the holes outside per-layer choices have {n:,} combinations of options; archc "
                                f"space checks at most {self.max_combinations:,} jointly: narrow some choice(...), "
                                "or make a choice in a stack's body per_layer=true",
                                self._outer_holes[0].span)
            self._outers = [self.prober.probe(key) for key in itertools.product(*(range(s) for s in sizes))]
        return self._outers

    def _layers(self, o: Outer, allowed: Allowed | None) -> list[list[tuple[tuple[int, ...], Cost]]]:
        """Each layer's allowed options, stacks in order."""
        out = []
        for st in o.stacks:
            for i in range(st.depth):
                paths = [h.at(i) for h in st.holes]
                out.append([(t, c) for t, c in st.options
                            if allowed is None or all(k in allowed.get(p, (k,)) for p, k in zip(paths, t))])
        return out

    def _outer_allowed(self, o: Outer, allowed: Allowed | None) -> bool:
        return o.error is None and (allowed is None or all(
            k in allowed.get(h.path, (k,)) for h, k in zip(self._outer_holes, o.key)))

    def _count(self, o: Outer, allowed: Allowed | None) -> int:
        if not self._outer_allowed(o, allowed):
            return 0
        layers = self._layers(o, allowed)
        if self.budget is None:
            return math.prod(len(options) for options in layers)
        return self._suffix(o, layers, allowed is None)[0].get(o.base, 0)

    def _suffix(self, o: Outer, layers: list[list[tuple[tuple[int, ...], Cost]]], keep: bool) -> list[dict[Cost, int]]:
        """suffix[i][s]: the completions of layers i.. within the budget, given the cost s so far."""
        if keep and o.key in self._tables:
            return self._tables[o.key]
        reach = [{o.base}]
        for options in layers:  # the cost sums each layer can start from
            nxt = {_add(s, c) for s in reach[-1] for _, c in options}
            reach.append(nxt)
            if sum(len(r) for r in reach) > MAX_STATES:
                raise ArchError(f"the budget '{self.budget.text if self.budget else ''}' splits this space into more "
                                f"than {MAX_STATES:,} partial costs over its layers: narrow the per-layer choices")
        assert self.budget is not None
        suffix = [dict.fromkeys(reach[-1], 0)]
        for s in reach[-1]:
            suffix[0][s] = int(self._within(s, o.scale))
        for options, starts in zip(reversed(layers), reversed(reach[:-1])):
            after = suffix[0]
            suffix.insert(0, {s: sum(after[_add(s, c)] for _, c in options) for s in starts})
        if keep:
            self._tables[o.key] = suffix
        return suffix

    def _draw(self, o: Outer, rng: random.Random, allowed: Allowed | None) -> Choice:
        choice = {h.path: k for h, k in zip(self._outer_holes, o.key)}
        layers = self._layers(o, allowed)
        picked = []
        if self.budget is None:
            picked = [options[rng.randrange(len(options))][0] for options in layers]
        else:
            suffix, state = self._suffix(o, layers, allowed is None), o.base
            for i, options in enumerate(layers):
                weights = [suffix[i + 1].get(_add(state, c), 0) for _, c in options]
                t, c = options[_pick(weights, rng)]
                picked.append(t)
                state = _add(state, c)
        return choice | self._layer_choice(o, picked)

    def _layer_choice(self, o: Outer, picked: list[tuple[int, ...]]) -> Choice:
        out, it = {}, iter(picked)
        for st in o.stacks:
            for i in range(st.depth):
                out.update({h.at(i): k for h, k in zip(st.holes, next(it))})
        return out

    def _completions_of(self, o: Outer) -> Iterator[Choice]:
        if not self._count(o, None):
            return
        choice = {h.path: k for h, k in zip(self._outer_holes, o.key)}
        layers = self._layers(o, None)
        for combo in itertools.product(*layers):
            if self.budget is not None:
                total = o.base
                for _, c in combo:
                    total = _add(total, c)
                if not self._within(total, o.scale):
                    continue
            yield choice | self._layer_choice(o, [t for t, _ in combo])

    # -- helpers --
    def _within(self, cost: Cost, scale: int) -> bool:
        assert self.budget is not None
        return self.budget.holds({"params": Fraction(cost[0], scale), "flops": Fraction(cost[1], scale)})

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
        first = next((o.error for o in self._probed() if o.error), None)
        why = f"; the first completion fails with: {first.message}" if first is not None else ""
        return f"none of the {self.combinations():,} completions of this space type-checks{budget}{why}"


def _add(a: Cost, b: Cost) -> Cost:
    return (a[0] + b[0], a[1] + b[1])


def _pick(weights: list[int], rng: random.Random) -> int:
    """An index drawn with probability weights[i] / sum(weights) (exact for big ints)."""
    r = rng.randrange(sum(weights))
    for i, w in enumerate(weights):
        if r < w:
            return i
        r -= w
    raise AssertionError(weights)
