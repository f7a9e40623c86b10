"""Probing a search space: elaborating the completions that archc.space counts from.

A probe fills the outer holes (every hole but the per-layer ones) with one combination of options
and every layer of each per-layer stack with one option, elaborates it, and reads from the IR the
depth of each per-layer stack, checking that each of its layers keeps its input's type (what
makes the layers' choices independent). `Prober.probe` turns the probes of one outer combination
into its per-layer options and their costs (see archc/space.py for how they are counted).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from archc.elaborate.stacks import STACK_APPLIED
from archc.errors import ArchError
from archc.frontend import ast as A
from archc.frontend.holes import Hole, fill, substitute

Cost = tuple[int, int]  # (parameters, FLOPs), times the outer combination's scale


@dataclass(frozen=True)
class Verdict:
    """What elaborating one probe gave: its measures and the depth of each per-layer stack, or the
    error that rejects it."""

    params: int = 0
    flops: int | None = None
    error: ArchError | None = None
    depths: tuple[int, ...] = ()


@dataclass
class LayerOptions:
    """The per-layer holes of one stack, given the outer holes: its depth, and the per-layer options
    (one index per hole of the family) that type-check, with what each layer on them adds to the cost."""

    holes: list[Hole]
    depth: int = 0
    options: list[tuple[tuple[int, ...], Cost]] = field(default_factory=list)


@dataclass
class Outer:
    """One combination of the outer holes' options, probed."""

    key: dict[str, int]  # hole path -> option index
    error: ArchError | None = None
    base: Cost = (0, 0)
    stacks: list[LayerOptions] = field(default_factory=list)
    tried: int = 1  # combinations before type-checking: the per-layer options over all layers
    scale: int = 1  # costs are kept times this (a multiple of each probed depth), as exact ints
    ref: tuple[tuple[int, ...], ...] = ()  # the per-layer options (one per family) `base` was measured on


class Unsealed(Exception):
    """A region's stack changed its input's type in a probe: its holes are not independent of the
    others (archc/space_groups.py), so the space is planned again without it."""

    def __init__(self, stack: A.Stack) -> None:
        super().__init__("a region's stack changes its input's type")
        self.stack = stack


@dataclass(eq=False)
class Variant:
    """The module a kind of probe elaborates: the regions it does not vary taken out (each stack
    at depth 0, which keeps its input's type as each region does), and what it varies."""

    key: tuple[int, ...]  # ids of the stacks taken out: probes of one variant share a cache
    module: A.Module
    holes: list[Hole]  # the holes left in `module`
    families: list[list[Hole]]  # the per-layer families it probes, by stack
    depth_holes: list[Hole | None]  # each family's depth hole, when its stack's depth is one
    sealed: A.Stack | None = None  # the region's stack, whose applications must keep their types


class Prober:
    """Elaborates probes of one spec (each once: cached), sharing one loader for the imports."""

    def __init__(self, module: A.Module, holes: list[Hole], file: str, folder: Path, model: str | None,
                 includes: list[Path], budget: Any, axes: Mapping[str, int]) -> None:
        self.module, self.file, self.folder, self.model, self.includes = module, file, folder, model, includes
        self.budget, self.axes = budget, axes
        self._holes = holes
        self._outer_holes = [h for h in holes if not h.per_layer]
        self._verdicts: dict[tuple[Any, ...], Verdict] = {}
        self._loader: Any = None
        self._shallow: dict[tuple[Any, ...], A.Module] = {}  # a variant's module at probe depths

    @property
    def elaborated(self) -> int:
        """How many probes were elaborated so far."""
        return len(self._verdicts)

    def variant(self, removed: list[Any], sealed: Any = None) -> Variant:
        """The variant with the regions `removed` taken out, probing the per-layer families left
        (all but the regions' when `sealed` is None, else the region `sealed`'s)."""
        table: dict[int, A.Expr] = {}
        gone = set()
        for r in removed:
            fills = {id(h.choice): h.choice.options[0] for h in r.all_holes}
            zero = A.Const(0, r.stack.span, "0")
            table[id(r.stack)] = replace(substitute(r.stack, fills), args=(zero,), kwargs=())
            table.update(fills)  # a parameter's default that only the region reads
            gone.update(id(h) for h in r.all_holes)
        holes = [h for h in self._holes if id(h) not in gone]
        families = _families(list(sealed.families) if sealed is not None else [h for h in holes if h.per_layer])
        module = substitute(self.module, table) if table else self.module
        key = tuple(sorted(id(r.stack) for r in removed))
        return Variant(key, module, holes, families, [self._depth_hole(g[0].stack) for g in families],
                       sealed.stack if sealed is not None else None)

    def probe(self, v: Variant, picks: dict[str, int]) -> Outer:
        """Probe the outer picks (and fixed picks of families `v` does not vary: their `[*]` paths)."""
        if not v.families:
            vd = self._verdict(v, picks)
            return Outer(picks, vd.error, _cost(vd))
        per_stack = [list(itertools.product(*(range(len(h.choice.options)) for h in g))) for g in v.families]
        # a stack whose depth is a hole is probed with one layer (none at depth 0): its layers'
        # options type-check and cost the same at any depth, so the probes serve every depth
        shallow = tuple(None if h is None else min(self._depth(h, picks), 1) for h in v.depth_holes)
        ref, first = None, None
        for combo in itertools.product(*per_stack):  # the first combination of per-layer options that checks
            vd = self._verdict(v, picks, combo, shallow)
            if vd.error is None:
                ref = combo
                break
            first = first or vd
        if ref is None:
            assert first is not None
            depths = [1 if h is None else self._depth(h, picks) for h in v.depth_holes]
            return Outer(picks, first.error, tried=math.prod(len(o) ** d for o, d in zip(per_stack, depths)))
        rv = self._verdict(v, picks, ref, shallow)
        depths = [d if h is None else self._depth(h, picks) * d for h, d in zip(v.depth_holes, rv.depths)]
        base = _cost(rv)
        if any(d is not None for d in shallow) and self.budget is not None:  # the cost at the real depths
            full = self._verdict(v, picks, ref, (None,) * len(shallow))
            if full.error is not None:
                return Outer(picks, full.error, tried=math.prod(len(o) ** d for o, d in zip(per_stack, depths)))
            base = _cost(full)
        # a layer on t costs (P(t) - P(ref)) / probed more than on ref: kept times `scale`, as ints
        scale = math.lcm(*(d or 1 for d in rv.depths))
        stacks = []
        for s, (group, options) in enumerate(zip(v.families, per_stack)):
            stack = LayerOptions(group, depths[s])
            probed = rv.depths[s]  # the layers each probe has: 1 for a shallow probe, else the depth
            for t in options:
                vd = self._verdict(v, picks, ref[:s] + (t,) + ref[s + 1:], shallow)
                if vd.error is not None:
                    continue
                if vd.depths[s] != probed:
                    raise ArchError(f"this stack's depth depends on its per-layer choices ({probed} and "
                                    f"{vd.depths[s]} layers)", group[0].stack.span if group[0].stack else None)
                per = scale // (probed or 1)
                stack.options.append((t, ((vd.params - rv.params) * per, ((vd.flops or 0) - (rv.flops or 0)) * per)))
            stacks.append(stack)
        tried = math.prod(len(o) ** st.depth for o, st in zip(per_stack, stacks))
        return Outer(picks, None, (base[0] * scale, base[1] * scale), stacks, tried, scale, ref)

    def _depth(self, hole: Hole, picks: dict[str, int]) -> int:
        option = hole.choice.options[picks[hole.path]]
        assert isinstance(option, A.Const) and isinstance(option.value, int)
        return option.value

    def _verdict(self, v: Variant, picks: dict[str, int], combo: tuple[tuple[int, ...], ...] = (),
                 shallow: tuple[int | None, ...] = ()) -> Verdict:
        """Elaborate the outer picks with every layer of stack s on the options combo[s], and stack s
        at depth shallow[s] where that is not None (cached)."""
        module, holes = v.module, v.holes
        if any(d is not None for d in shallow):  # the depth holes stand at 0 or 1 layer: one probe for every depth
            table = {id(h.choice): A.Const(d, h.span, str(d)) for h, d in zip(v.depth_holes, shallow)
                     if h is not None and d is not None}
            module, holes = self._shallow_module(v, shallow, table), [h for h in holes if id(h.choice) not in table]
            picks = {h.path: picks[h.path] for h in holes if h.path in picks}
        key = (v.key, tuple(picks.items()), combo, shallow)
        if key not in self._verdicts:
            uniform = {h.path: k for g, t in zip(v.families, combo) for h, k in zip(g, t)}
            stacks = [g[0].stack for g in v.families]
            self._verdicts[key] = self.judge(fill(module, {**picks, **uniform}, holes), stacks, v.sealed)
        return self._verdicts[key]

    def _shallow_module(self, v: Variant, shallow: tuple[int | None, ...], table: dict[int, A.Expr]) -> A.Module:
        if (v.key, shallow) not in self._shallow:
            self._shallow[(v.key, shallow)] = substitute(v.module, table)
        return self._shallow[(v.key, shallow)]

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

    def judge(self, module: A.Module, stacks: list[Any], sealed: A.Stack | None = None,
              whole: bool = False) -> Verdict:
        """Elaborate a filled module; `whole`: it is a completion, checked against the budget too."""
        token = STACK_APPLIED.set(_watch(sealed, self.file)) if sealed is not None else None
        try:
            graph = self._elaborate(module)
        except ArchError as err:
            return Verdict(error=err)
        finally:
            if token is not None:
                STACK_APPLIED.reset(token)
        depths = tuple(_layers_of(graph, st, self.file) for st in stacks)  # an error of the space, not of this probe
        params = graph.param_count()  # a missing --axis is an error of the command, not of this completion
        flops = self._flops(graph) if self.budget and self.budget.needs_flops else None
        if whole and self.budget and not self.budget.holds({"params": params, "flops": flops or 0}):
            return Verdict(params, flops, ArchError(f"outside the budget '{self.budget.text}': "
                                                     f"{params:,} parameters, {flops or 0:,} FLOPs"))
        return Verdict(params, flops, None, depths)

    def _elaborate(self, module: A.Module) -> Any:
        """Elaborate a filled module as parsed (the concrete spec is its formatted text)."""
        from archc.elaborate.elaborator import elaborate_module
        from archc.elaborate.loader import Loader

        if self._loader is None:  # one loader for every probe: each import is read and parsed once
            self._loader = Loader(self.includes)
        return elaborate_module(module, self._loader, self.file, self.folder, self.model)

    def _flops(self, graph: Any) -> int:
        from archc.analysis.summary import summarize

        return summarize(graph, batch=1, axes=self.axes).total.flops



def _families(holes: list[Hole]) -> list[list[Hole]]:
    """Per-layer holes by stack, stacks in source order."""
    out: list[list[Hole]] = []
    for h in holes:
        group = next((g for g in out if g[0].stack is h.stack), None)
        group.append(h) if group is not None else out.append([h])
    return out


def _cost(v: Verdict) -> Cost:
    return (v.params, v.flops or 0)


def _applications(graph: Any, stack: A.Stack, file: str) -> list[tuple[str, Any]]:
    """The scopes of `stack`'s applications in the graph (path, scope info)."""
    return [(path, info) for path, info in graph.scopes.items() if info.kind == "stack" and info.span is not None
            and (info.span.file, info.span.line, info.span.col) == (file, stack.span.line, stack.span.col)]


def _watch(stack: A.Stack, file: str) -> Any:
    """A hook that raises Unsealed as soon as an application of `stack` gives a value of another
    type than its input: before anything downstream can fail on it, so a probe that fails did not
    fail because of that (the failure is the region's own, or the outer group's)."""
    where = (file, stack.span.line, stack.span.col)

    def watch(span: Any, inputs: list[Any], out: Any) -> None:
        if span is None or (span.file, span.line, span.col) != where:
            return
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if [getattr(v, "type", v) for v in inputs] != [getattr(v, "type", v) for v in outs]:
            raise Unsealed(stack)

    return watch


def _layers_of(graph: Any, stack: A.Stack, file: str) -> int:
    """The depth of `stack` in the graph (0 when it is never applied); an error unless each of its
    layers keeps its input's type (what makes per-layer choices independent of each other)."""
    depths = set()
    for path, info in _applications(graph, stack, file):
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
