"""Search spaces: a spec with `choice(...)` holes, and its well-typed completions.

`Space(path)` reads a spec whose holes (archc/frontend/holes.py names them) stand where values,
ops, blocks, connection policies or depths may; a completion picks one option per hole. A
completion counts only when its concrete spec (the holes replaced by the chosen options, formatted
by `archc fmt`'s printer) type-checks on its own and meets the budget (`where`), so `count()` is
exact and `sample()` never returns a spec that fails.

This first version enumerates: it elaborates every combination of options (at most
MAX_COMBINATIONS of them, each once, cached) and samples uniformly from the well-typed ones.
Counting without enumeration is the next step.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from archc.errors import ArchError
from archc.frontend.fmt import format_module
from archc.frontend.holes import fill, find_holes
from archc.frontend.parser import parse

MAX_COMBINATIONS = 20_000  # combinations of options enumerated (each one is elaborated)

Choice = dict[str, int]  # hole path -> index of the chosen option


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


# ---- the space ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """What elaborating one completion gave: its measures, or the error that rejects it."""

    params: int = 0
    flops: int | None = None
    error: ArchError | None = None


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
        self.model = model
        self.includes = includes or []
        self.budget = parse_budget(where) if where else None
        self.axes = dict(axes or {})
        self.max_combinations = max_combinations
        self._verdicts: dict[tuple[int, ...], Verdict] = {}
        self._valid: list[tuple[int, ...]] | None = None

    # -- the holes --
    def holes(self) -> list[tuple[str, tuple[str, ...]]]:
        """Each hole's path and its options as written, in source order."""
        return [(h.path, h.options) for h in self._holes]

    def combinations(self) -> int:
        """The product of the holes' option counts: completions before type-checking."""
        n = 1
        for h in self._holes:
            n *= len(h.choice.options)
        return n

    # -- counting, enumerating, sampling --
    def count(self) -> int:
        """The exact number of completions that type-check (and meet the budget)."""
        return len(self._completions())

    def enumerate(self) -> list[Choice]:
        """Every well-typed completion, in the order of the options (the last hole varies fastest)."""
        return [self._choice(k) for k in self._completions()]

    def sample(self, rng: random.Random) -> Choice:
        """One well-typed completion, uniformly: each is drawn with probability 1 / count()."""
        valid = self._completions()
        if not valid:
            raise ArchError(self._none_message())
        return self._choice(valid[rng.randrange(len(valid))])

    def verdict(self, choice: Choice) -> Verdict:
        """Elaborate one completion (once; remembered)."""
        key = tuple(choice[h.path] for h in self._holes) if set(choice) == {h.path for h in self._holes} else None
        if key is None:
            fill(self.module, choice, self._holes)  # raises the located error
            raise AssertionError(choice)
        if key not in self._verdicts:
            self._verdicts[key] = self._judge(self._choice(key))
        return self._verdicts[key]

    # -- concrete specs --
    def concrete(self, choice: Choice) -> str:
        """The spec with each hole replaced by its chosen option, formatted: it checks on its own."""
        return format_module(fill(self.module, choice, self._holes))

    def elaborate(self, choice: Choice) -> Any:
        """The typed IR (archc.ir.Graph) of one completion."""
        from archc.elaborate import elaborate_text

        return elaborate_text(self.concrete(choice), file=f"{self.file} (completion)", model=self.model,
                              includes=self.includes, folder=self.folder)

    def describe(self, choice: Choice) -> dict[str, str]:
        """path -> the chosen option as written."""
        return {h.path: h.options[choice[h.path]] for h in self._holes}

    # -- internals --
    def _choice(self, key: tuple[int, ...]) -> Choice:
        return {h.path: k for h, k in zip(self._holes, key)}

    def _completions(self) -> list[tuple[int, ...]]:
        if self._valid is None:
            n = self.combinations()
            if n > self.max_combinations:
                raise ArchError(f"this space has {n:,} combinations of options; archc space enumerates at most "
                                f"{self.max_combinations:,} for now (counting without enumeration is not "
                                f"implemented yet): narrow some choice(...)", self._holes[0].span)
            keys = itertools.product(*(range(len(h.choice.options)) for h in self._holes))
            self._valid = [k for k in keys if self.verdict(self._choice(k)).error is None]
        return self._valid

    def _judge(self, choice: Choice) -> Verdict:
        try:
            graph = self.elaborate(choice)
        except ArchError as err:
            return Verdict(error=err)
        params = graph.param_count()  # a missing --axis is an error of the command, not of this completion
        flops = self._flops(graph) if self.budget and self.budget.needs_flops else None
        if self.budget and not self.budget.holds({"params": params, "flops": flops or 0}):
            return Verdict(params, flops, ArchError(f"outside the budget '{self.budget.text}': "
                                                     f"{params:,} parameters, {flops or 0:,} FLOPs"))
        return Verdict(params, flops)

    def _flops(self, graph: Any) -> int:
        from archc.analysis.summary import summarize

        return summarize(graph, batch=1, axes=self.axes).total.flops

    def _none_message(self) -> str:
        budget = f" within the budget '{self.budget.text}'" if self.budget else ""
        first = next((v.error for v in self._verdicts.values() if v.error), None)
        why = f"; the first completion fails with: {first.message}" if first is not None else ""
        return f"none of the {self.combinations():,} completions of this space type-checks{budget}{why}"
