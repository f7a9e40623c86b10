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
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping

from archc.errors import ArchError
from archc.frontend import ast as A
from archc.frontend.fmt import format_module
from archc.frontend.holes import Hole, fill, find_holes, substitute
from archc.frontend.parser import parse

MAX_COMBINATIONS = 20_000  # combinations of the outer holes' options (each one is elaborated)
MAX_ENUMERATE = 1_000_000  # completions that enumerate() lists
MAX_STATES = 2_000_000  # partial cost sums the budget's dynamic programming keeps, over all layers

Choice = dict[str, int]  # hole path -> index of the chosen option (a per-layer hole: one path per layer)
Allowed = Mapping[str, set[int]]  # hole path -> the options a restricted count or draw may pick
Cost = tuple[int, int]  # (parameters, FLOPs), times the outer combination's scale


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
@dataclass(frozen=True)
class Verdict:
    """What elaborating one probe gave: its measures and the depth of each per-layer stack, or the
    error that rejects it."""

    params: int = 0
    flops: int | None = None
    error: ArchError | None = None
    depths: tuple[int, ...] = ()


@dataclass
class _Stack:
    """The per-layer holes of one stack, given the outer holes: its depth, and the per-layer options
    (one index per hole of the family) that type-check, with what each layer on them adds to the cost."""

    holes: list[Hole]
    depth: int = 0
    options: list[tuple[tuple[int, ...], Cost]] = field(default_factory=list)


@dataclass
class _Outer:
    """One combination of the outer holes' options, probed."""

    key: tuple[int, ...]
    error: ArchError | None = None
    base: Cost = (0, 0)
    stacks: list[_Stack] = field(default_factory=list)
    tried: int = 1  # combinations before type-checking: the per-layer options over all layers
    scale: int = 1  # costs are kept times this (a multiple of each probed depth), as exact ints


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
        self._families: list[list[Hole]] = []  # per-layer holes by stack, stacks in source order
        for h in self._holes:
            if h.per_layer:
                group = next((g for g in self._families if g[0].stack is h.stack), None)
                group.append(h) if group is not None else self._families.append([h])
        self._depth_holes = [self._depth_hole(g[0].stack) for g in self._families]
        self.model = model
        self.includes = includes or []
        self.budget = parse_budget(where) if where else None
        self.axes = dict(axes or {})
        self.max_combinations = max_combinations
        self._verdicts: dict[tuple[Any, ...], Verdict] = {}
        self._outers: list[_Outer] | None = None
        self._tables: dict[tuple[int, ...], list[dict[Cost, int]]] = {}  # outer key -> suffix counts
        self._loader: Any = None
        self._shallow: dict[tuple[int | None, ...], A.Module] = {}  # the module at probe depths
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
        return self._judge(fill(self.module, choice, self._holes), ())

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
    def _probed(self) -> list[_Outer]:
        if self._outers is None:
            sizes = [len(h.choice.options) for h in self._outer_holes]
            n = math.prod(sizes)
            if n > self.max_combinations:
                raise ArchError(f"the holes outside per-layer choices have {n:,} combinations of options; archc "
                                f"space checks at most {self.max_combinations:,} jointly: narrow some choice(...), "
                                "or make a choice in a stack's body per_layer=true",
                                self._outer_holes[0].span)
            self._outers = [self._probe(key) for key in itertools.product(*(range(s) for s in sizes))]
        return self._outers

    def _probe(self, key: tuple[int, ...]) -> _Outer:
        picks = {h.path: k for h, k in zip(self._outer_holes, key)}
        if not self._families:
            v = self._verdict(picks)
            return _Outer(key, v.error, _cost(v))
        per_stack = [list(itertools.product(*(range(len(h.choice.options)) for h in g))) for g in self._families]
        # a stack whose depth is a hole is probed with one layer (none at depth 0): its layers'
        # options type-check and cost the same at any depth, so the probes serve every depth
        shallow = tuple(None if h is None else min(self._depth(h, picks), 1) for h in self._depth_holes)
        ref, first = None, None
        for combo in itertools.product(*per_stack):  # the first combination of per-layer options that checks
            v = self._verdict(picks, combo, shallow)
            if v.error is None:
                ref = combo
                break
            first = first or v
        if ref is None:
            assert first is not None
            depths = [1 if h is None else self._depth(h, picks) for h in self._depth_holes]
            return _Outer(key, first.error, tried=math.prod(len(o) ** d for o, d in zip(per_stack, depths)))
        rv = self._verdict(picks, ref, shallow)
        depths = [d if h is None else self._depth(h, picks) * d for h, d in zip(self._depth_holes, rv.depths)]
        base = _cost(rv)
        if any(d is not None for d in shallow) and self.budget is not None:  # the cost at the real depths
            full = self._verdict(picks, ref, (None,) * len(shallow))
            if full.error is not None:
                return _Outer(key, full.error, tried=math.prod(len(o) ** d for o, d in zip(per_stack, depths)))
            base = _cost(full)
        # a layer on t costs (P(t) - P(ref)) / probed more than on ref: kept times `scale`, as ints
        scale = math.lcm(*(d or 1 for d in rv.depths))
        stacks = []
        for s, (group, options) in enumerate(zip(self._families, per_stack)):
            stack = _Stack(group, depths[s])
            probed = rv.depths[s]  # the layers each probe has: 1 for a shallow probe, else the depth
            for t in options:
                v = self._verdict(picks, ref[:s] + (t,) + ref[s + 1:], shallow)
                if v.error is not None:
                    continue
                if v.depths[s] != probed:
                    raise ArchError(f"this stack's depth depends on its per-layer choices ({probed} and "
                                    f"{v.depths[s]} layers)", group[0].stack.span if group[0].stack else None)
                per = scale // (probed or 1)
                stack.options.append((t, ((v.params - rv.params) * per, ((v.flops or 0) - (rv.flops or 0)) * per)))
            stacks.append(stack)
        tried = math.prod(len(o) ** st.depth for o, st in zip(per_stack, stacks))
        return _Outer(key, None, (base[0] * scale, base[1] * scale), stacks, tried, scale)

    def _depth(self, hole: Hole, picks: dict[str, int]) -> int:
        option = hole.choice.options[picks[hole.path]]
        assert isinstance(option, A.Const) and isinstance(option.value, int)
        return option.value

    def _verdict(self, picks: dict[str, int], combo: tuple[tuple[int, ...], ...] = (),
                 shallow: tuple[int | None, ...] = ()) -> Verdict:
        """Elaborate the outer picks with every layer of stack s on the options combo[s], and stack s
        at depth shallow[s] where that is not None (cached)."""
        module, holes = self.module, self._holes
        if any(d is not None for d in shallow):  # the depth holes stand at 0 or 1 layer: one probe for every depth
            table = {id(h.choice): A.Const(d, h.span, str(d)) for h, d in zip(self._depth_holes, shallow)
                     if h is not None and d is not None}
            module, holes = self._shallow_module(shallow, table), [h for h in holes if id(h.choice) not in table]
            picks = {h.path: picks[h.path] for h in holes if h.path in picks}
        key = (tuple(picks.items()), combo, shallow)
        if key not in self._verdicts:
            uniform = {h.path: k for g, t in zip(self._families, combo) for h, k in zip(g, t)}
            stacks = [g[0].stack for g in self._families]
            self._verdicts[key] = self._judge(fill(module, {**picks, **uniform}, holes), stacks)
        return self._verdicts[key]

    def _shallow_module(self, shallow: tuple[int | None, ...], table: dict[int, A.Expr]) -> A.Module:
        if shallow not in self._shallow:
            self._shallow[shallow] = substitute(self.module, table)
        return self._shallow[shallow]

    def _depth_hole(self, stack: A.Stack | None) -> Hole | None:
        """The outer hole that is this stack's depth and nothing else, when its options are ints:
        `stack(choice(2, 4))`, or `stack(depth)` for a model parameter `depth: int = choice(...)`
        that nothing else reads."""
        if stack is None:
            return None
        expr = stack.args[0] if stack.args else next((k.value for k in stack.kwargs if k.name == "depth"), None)
        choice = expr if isinstance(expr, A.Choice) else None
        if isinstance(expr, A.Name):
            model = next((b for b in self.module.items if isinstance(b, A.BlockDef) and b.kind == "model"
                          and any(n is stack for n in A.walk(b))), None)
            formal = next((f for f in model.params if f.name == expr.id), None) if model else None
            reads = sum(isinstance(n, A.Name) and n.id == expr.id for n in A.walk(model)) if model else 0
            if formal is not None and isinstance(formal.default, A.Choice) and reads == 1:
                choice = formal.default
        if choice is None or not all(isinstance(o, A.Const) and type(o.value) is int and o.value >= 0
                                     for o in choice.options):
            return None
        return next((h for h in self._outer_holes if h.choice is choice), None)

    def _judge(self, module: A.Module, stacks: list[Any]) -> Verdict:
        try:
            graph = self._elaborate(module)
        except ArchError as err:
            return Verdict(error=err)
        depths = tuple(_layers_of(graph, st, self.file) for st in stacks)  # an error of the space, not of this probe
        params = graph.param_count()  # a missing --axis is an error of the command, not of this completion
        flops = self._flops(graph) if self.budget and self.budget.needs_flops else None
        if self.budget and not stacks and not self.budget.holds({"params": params, "flops": flops or 0}):
            return Verdict(params, flops, ArchError(f"outside the budget '{self.budget.text}': "
                                                     f"{params:,} parameters, {flops or 0:,} FLOPs"))
        return Verdict(params, flops, None, depths)

    def _elaborate(self, module: A.Module) -> Any:
        """Elaborate a filled module as parsed (the concrete spec is its formatted text)."""
        from archc.elaborate.elaborator import _FRAMES_PER_NESTING, MAX_NESTING, Elaborator, too_deep
        from archc.elaborate.loader import Loader
        from archc.recursion import headroom

        if self._loader is None:  # one loader for every probe: each import is read and parsed once
            self._loader = Loader(self.includes)
            self._loader.allowed.append(self.folder)
        elaborator = Elaborator()
        try:
            with headroom(_FRAMES_PER_NESTING * MAX_NESTING + 500):
                env = self._loader._build(module, self.file, self.folder)
                return elaborator.model(env, self.model, {})
        except RecursionError:
            raise too_deep(elaborator) from None

    def _flops(self, graph: Any) -> int:
        from archc.analysis.summary import summarize

        return summarize(graph, batch=1, axes=self.axes).total.flops

    # -- counting and drawing within one outer combination --
    def _layers(self, o: _Outer, allowed: Allowed | None) -> list[list[tuple[tuple[int, ...], Cost]]]:
        """Each layer's allowed options, stacks in order."""
        out = []
        for st in o.stacks:
            for i in range(st.depth):
                paths = [h.at(i) for h in st.holes]
                out.append([(t, c) for t, c in st.options
                            if allowed is None or all(k in allowed.get(p, (k,)) for p, k in zip(paths, t))])
        return out

    def _outer_allowed(self, o: _Outer, allowed: Allowed | None) -> bool:
        return o.error is None and (allowed is None or all(
            k in allowed.get(h.path, (k,)) for h, k in zip(self._outer_holes, o.key)))

    def _count(self, o: _Outer, allowed: Allowed | None) -> int:
        if not self._outer_allowed(o, allowed):
            return 0
        layers = self._layers(o, allowed)
        if self.budget is None:
            return math.prod(len(options) for options in layers)
        return self._suffix(o, layers, allowed is None)[0].get(o.base, 0)

    def _suffix(self, o: _Outer, layers: list[list[tuple[tuple[int, ...], Cost]]], keep: bool) -> list[dict[Cost, int]]:
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

    def _draw(self, o: _Outer, rng: random.Random, allowed: Allowed | None) -> Choice:
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

    def _layer_choice(self, o: _Outer, picked: list[tuple[int, ...]]) -> Choice:
        out, it = {}, iter(picked)
        for st in o.stacks:
            for i in range(st.depth):
                out.update({h.at(i): k for h, k in zip(st.holes, next(it))})
        return out

    def _completions_of(self, o: _Outer) -> Iterator[Choice]:
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


def _cost(v: Verdict) -> Cost:
    return (v.params, v.flops or 0)


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


def _layers_of(graph: Any, stack: A.Stack, file: str) -> int:
    """The depth of `stack` in the graph (0 when it is never applied); an error unless each of its
    layers keeps its input's type (what makes per-layer choices independent of each other)."""
    depths = set()
    for path, info in graph.scopes.items():
        span = info.span
        if info.kind != "stack" or span is None or (span.file, span.line, span.col) != (file, stack.span.line,
                                                                                      stack.span.col):
            continue
        depth = int(info.args.get("depth", 0))
        depths.add(depth)
        for i in range(depth):
            layer = graph.scopes.get(f"{path}.{i}")
            calls = layer.calls if layer is not None else ()
            if not calls:
                raise ArchError("per-layer choices need layers that are block instances, so that archc can see "
                                "each keep its input's type", stack.span)
            for call in calls:
                ins = [graph.values[v].sizes for v in call.inputs]
                outs = [graph.values[v].sizes for v in call.outputs]
                if ins != outs:
                    raise ArchError(f"per-layer choices need layers that keep their input's type: layer {i} of "
                                    f"this stack maps {ins} to {outs}", stack.span)
    if len(depths) > 1:
        raise ArchError(f"per-layer choices need one depth for every use of this stack, got {sorted(depths)}",
                        stack.span)
    return depths.pop() if depths else 0
