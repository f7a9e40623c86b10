"""Probing a search space: elaborating the completions that archc.space counts from.

A probe fills the outer holes with one combination of options and every layer of each per-layer
stack with one option, elaborates it, and reads from the IR the depth of each per-layer stack.
While it elaborates, a hook (archc.elaborate.stacks.STACK_APPLIED) watches each layer of a
per-layer stack, and each application of the region's stack (archc/space_groups.py): one that
changes its input's type stops the probe there, before anything downstream can fail, so a probe
that fails says that its options fail. A `Variant` is the module a kind of probe elaborates (the
other regions taken out). `Prober.probe` turns the probes of one outer combination into its
per-layer options and their costs (see archc/space.py for how they are counted).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from archc.elaborate.stacks import STACK_APPLIED
from archc.errors import ArchError
from archc.frontend import ast as A
from archc.frontend.holes import Hole, fill, reads_index, substitute

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
    by_layer: list[list[tuple[tuple[int, ...], Cost]]] | None = None  # layers that read their index: each its own


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


class LayerTypeChange(Exception):
    """A layer of a per-layer stack changed its input's type in a probe (the space's error)."""

    def __init__(self, message: str, span: Any) -> None:
        super().__init__(message)
        self.message, self.span = message, span


@dataclass(eq=False)
class Variant:
    """The module a kind of probe elaborates: the regions it does not vary taken out (each stack
    at depth 0, which keeps its input's type as each region does), and what it varies."""

    key: tuple[Any, ...]  # ids of the stacks taken out (and cut sizes): probes of one variant share a cache
    module: A.Module
    holes: list[Hole]  # the holes left in `module`
    families: list[list[Hole]]  # the per-layer families it probes, by stack
    depth_holes: list[Hole | None]  # each family's depth hole, when its stack's depth is one
    sealed: A.Stack | None = None  # the region's stack, whose applications must keep their types



def depth_expr(module: A.Module, stack: A.Stack) -> tuple[A.Expr | None, A.BlockDef | None, A.Expr | None]:
    """How a stack's depth is written: the expression (its first argument or `depth=`), the model
    that holds the stack, and the expression the depth stands for (a model parameter's default
    when the depth is that parameter's name; else the expression itself)."""
    expr = stack.args[0] if stack.args else next((k.value for k in stack.kwargs if k.name == "depth"), None)
    model = next((b for b in module.items if isinstance(b, A.BlockDef) and b.kind == "model"
                  and any(n is stack for n in A.walk(b))), None)
    meant = expr
    if isinstance(expr, A.Name) and model is not None:
        formal = next((f for f in model.params if f.name == expr.id), None)
        meant = formal.default if formal is not None else None
    return expr, model, meant

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
        self._variants: dict[tuple[Any, ...], Variant] = {}  # variants with stacks cut (_resized)

    @property
    def elaborated(self) -> int:
        """How many probes were elaborated so far."""
        return len(self._verdicts)

    def variant(self, removed: list[Any], sealed: Any = None) -> Variant:
        """The variant with the regions `removed` taken out, probing the per-layer families left
        (all but the regions' when `sealed` is None, else the region `sealed`'s)."""
        table: dict[int, A.Expr] = {}
        gone: set[int] = set()
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
        # layers that read their index are probed at their real depth, one layer at a time
        depth_holes = [None if reads_index(_stack(g)) else self._depth_hole(_stack(g)) for g in families]
        return Variant(key, module, holes, families, depth_holes, sealed.stack if sealed is not None else None)

    def probe(self, v: Variant, picks: dict[str, int]) -> Outer:
        """Probe the outer picks (and fixed picks of families `v` does not vary: their `[*]` paths)."""
        if not v.families:
            vd = self._verdict(v, picks)
            return Outer(picks, vd.error, _cost(vd))
        per_stack = [list(itertools.product(*(range(len(h.choice.options)) for h in g))) for g in v.families]
        # a stack whose depth is a hole is probed with one layer (none at depth 0): its layers'
        # options type-check and cost the same at any depth, so the probes serve every depth
        shallow = tuple(None if h is None else min(self._depth(h, picks), 1) for h in v.depth_holes)
        # layers that read their index are found layer by layer below; meanwhile their stacks are empty
        indexed = [s for s, g in enumerate(v.families) if reads_index(_stack(g))]
        empty = self._resized(v, dict.fromkeys(indexed, 0))
        ref, first = None, None
        for combo in itertools.product(*([o[0]] if s in indexed else o for s, o in enumerate(per_stack))):
            vd = self._verdict(empty, picks, combo, shallow)  # the first per-layer options that check
            if vd.error is None:
                ref = combo
                break
            first = first or vd
        untried = [1 if h is None else self._depth(h, picks) for h in v.depth_holes]
        for s in indexed:
            untried[s] = self._static_depth(_stack(v.families[s]), picks)
        if ref is None:
            assert first is not None
            return Outer(picks, first.error, tried=math.prod(len(o) ** d for o, d in zip(per_stack, untried)))
        grown: dict[int, list[list[tuple[tuple[int, ...], Cost]]]] = {}
        for s in indexed:
            layers, ref, failed = self._grow(v, picks, ref, shallow, s, untried[s], indexed)
            if failed is not None:
                return Outer(picks, failed, tried=math.prod(len(o) ** d for o, d in zip(per_stack, untried)))
            grown[s] = layers
        rv = self._verdict(v, picks, ref, shallow)
        if rv.error is not None:
            return Outer(picks, rv.error, tried=math.prod(len(o) ** d for o, d in zip(per_stack, untried)))
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
            if s in grown:  # each layer its own options, costs from the layer's reference
                stack.by_layer = [[(t, ((c[0] - opts[0][1][0]) * scale, (c[1] - opts[0][1][1]) * scale))
                                   for t, c in opts] for opts in grown[s][:depths[s]]]
                stacks.append(stack)
                continue
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

    def _grow(self, v: Variant, picks: dict[str, int], ref: tuple[Any, ...], shallow: tuple[int | None, ...],
              s: int, depth: int, indexed: list[int]) -> tuple[list[list[tuple[tuple[int, ...], Cost]]],
                                                              tuple[Any, ...], ArchError | None]:
        """The options of each layer of family s, whose layers read their index: the stack cut to
        k layers, layers 0..k-2 on options found to check, layer k-1 on each option (the other such
        stacks empty). Each layer keeps its input's type (checked while elaborating) and does what
        its index and option say, so its options are those that check here, whatever the other
        layers pick; its cost is what it adds to the stack cut before it. Returns the layers'
        options with their costs (the first, the reference), `ref` with family s on the references,
        or the error when some layer has no option that checks."""
        others = {o: 0 for o in indexed if o != s}
        before = _cost(self._verdict(self._resized(v, {**others, s: 0}), picks, ref, shallow))
        refs: list[tuple[int, ...]] = []
        layers: list[list[tuple[tuple[int, ...], Cost]]] = []
        for k in range(1, depth + 1):
            cut = self._resized(v, {**others, s: k})
            options, failed = [], None
            for t in itertools.product(*(range(len(h.choice.options)) for h in v.families[s])):
                vd = self._verdict(cut, picks, ref[:s] + (tuple(refs) + (t,),) + ref[s + 1:], shallow)
                if vd.error is not None:
                    failed = failed or vd.error
                    continue
                options.append((t, (vd.params - before[0], (vd.flops or 0) - before[1])))
            if not options:
                return layers, ref, failed
            refs.append(options[0][0])
            before = (before[0] + options[0][1][0], before[1] + options[0][1][1])
            layers.append(options)
        return layers, ref[:s] + (tuple(refs),) + ref[s + 1:], None

    def _resized(self, v: Variant, sizes: dict[int, int]) -> Variant:
        """`v` with the stack of family s cut to sizes[s] layers (its connection policy kept)."""
        if not sizes:
            return v
        key = v.key + (("sizes",) + tuple(sorted(sizes.items())),)
        if key not in self._variants:
            at = {(_stack(v.families[s]).span.line, _stack(v.families[s]).span.col): n for s, n in sizes.items()}
            table: dict[int, A.Expr] = {}
            for n in A.walk(v.module):
                if isinstance(n, A.Stack) and (n.span.line, n.span.col) in at:
                    depth = A.Const(at[(n.span.line, n.span.col)], n.span, str(at[(n.span.line, n.span.col)]))
                    table[id(n)] = replace(n, args=(depth,) + n.args[1:], kwargs=tuple(
                        replace(k, value=depth) if k.name == "depth" else k for k in n.kwargs))
            self._variants[key] = replace(v, key=key, module=substitute(v.module, table))
        return self._variants[key]

    def _static_depth(self, stack: A.Stack, picks: dict[str, int]) -> int:
        """The depth of a stack whose layers read their index: a number, a choice of numbers, or
        a parameter of the model whose default is one."""
        expr = depth_expr(self.module, stack)[2]
        hole = next((h for h in self._outer_holes if h.choice is expr), None)
        if hole is not None:
            expr = hole.choice.options[picks[hole.path]] if hole.path in picks else None
        if not (isinstance(expr, A.Const) and type(expr.value) is int and expr.value >= 0):
            raise ArchError("per-layer choices in layers that read their index need the stack's depth written as a "
                            "number, a choice of numbers, or a model parameter with one as its default", stack.span)
        return expr.value

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
            table: dict[int, A.Expr] = {id(h.choice): A.Const(d, h.span, str(d)) for h, d in zip(v.depth_holes, shallow)
                                        if h is not None and d is not None}
            module, holes = self._shallow_module(v, shallow, table), [h for h in holes if id(h.choice) not in table]
            picks = {h.path: picks[h.path] for h in holes if h.path in picks}
        key = (v.key, tuple(picks.items()), combo, shallow)
        if key not in self._verdicts:
            uniform: dict[str, int] = {}
            for g, t in zip(v.families, combo):
                if t and isinstance(t[0], tuple):  # one option per layer
                    uniform.update((h.at(i), k) for i, ti in enumerate(t) for h, k in zip(g, ti))
                else:
                    uniform.update((h.path, k) for h, k in zip(g, t))
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
        expr, model, meant = depth_expr(self.module, stack)
        choice = expr if isinstance(expr, A.Choice) else None
        if isinstance(expr, A.Name) and model is not None:
            reads = sum(isinstance(n, A.Name) and n.id == expr.id for n in A.walk(model))
            if isinstance(meant, A.Choice) and reads == 1:
                choice = meant
        if choice is None or not all(isinstance(o, A.Const) and type(o.value) is int and o.value >= 0
                                     for o in choice.options):
            return None
        return next((h for h in self._outer_holes if h.choice is choice), None)

    def judge(self, module: A.Module, stacks: Sequence[Any], sealed: A.Stack | None = None,
              whole: bool = False) -> Verdict:
        """Elaborate a filled module; `whole`: it is a completion, checked against the budget too."""
        token = STACK_APPLIED.set(_watch(sealed, list(stacks), self.file)) if sealed is not None or stacks else None
        try:
            graph = self._elaborate(module)
        except ArchError as err:
            return Verdict(error=err)
        except LayerTypeChange as err:  # an error of the space, not of this probe
            raise ArchError(err.message, err.span) from None
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



def _stack(family: list[Hole]) -> A.Stack:
    """The stack a family of per-layer holes repeats in."""
    assert family[0].stack is not None
    return family[0].stack


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


def _watch(sealed: A.Stack | None, stacks: list[A.Stack], file: str) -> Any:
    """A hook that stops a probe as soon as a per-layer stack's layer, or an application of the
    region's stack `sealed`, gives a value of another type than its input: before anything
    downstream can fail on it, so that a probe that fails did not fail because of that (the
    failure is the option's own, or the outer group's)."""
    where = {(file, st.span.line, st.span.col): st for st in stacks}
    region = (file, sealed.span.line, sealed.span.col) if sealed is not None else None

    def watch(span: Any, layer: int | None, inputs: list[Any], out: Any) -> None:
        if span is None:
            return
        at = (span.file, span.line, span.col)
        if at != region and (layer is None or at not in where):
            return
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        ins, got = [getattr(v, "type", v) for v in inputs], [getattr(v, "type", v) for v in outs]
        if ins == got:
            return
        if layer is None:
            raise Unsealed(sealed)  # type: ignore[arg-type]
        if at in where:
            raise LayerTypeChange(f"per-layer choices need layers that keep their input's type: layer {layer} of "
                                  f"this stack maps {_sizes(ins)} to {_sizes(got)}", where[at].span)

    return watch


def _sizes(types: list[Any]) -> str:
    return ", ".join(str(t) for t in types)


def _layers_of(graph: Any, stack: A.Stack, file: str) -> int:
    """The depth of `stack` in the graph (0 when it is never applied). That each of its layers
    keeps its input's type (what makes per-layer choices independent of each other) is checked
    while the probe elaborates (`_watch`)."""
    depths = {int(info.args.get("depth", 0)) for _, info in _applications(graph, stack, file)}
    if len(depths) > 1:
        raise ArchError(f"per-layer choices need one depth for every use of this stack, got {sorted(depths)}",
                        stack.span)
    return depths.pop() if depths else 0
