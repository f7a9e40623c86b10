"""Search spaces whose holes fall into independent groups (issue #18): each of the model's stacks
whose holes nothing else reads is counted on its own, given the outer holes, and the counts
multiply (budgets: the cost distributions convolve; draws: each group on its own).

The brute force here writes every combination of options of a small template as plain text (a
per-layer pick as `[a, b][i]`) and elaborates each on its own: it shares nothing with archc.space
but the elaborator and the order of the holes (which names each hole by its path).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from archc.elaborate import elaborate_text
from archc.errors import ArchError
from archc.space import Space

HEADER = """axis B, D

block Heads(h: int, act: fn = gelu) (x: [B, D]) -> [B, D] {
    return residual(x, rearrange("b (h e) -> b h e", h=h) >> act >> flatten() >> linear(D))
}

block Proj(d: int) (x: [B, D]) -> [B, d] {
    return x >> linear(d)
}

"""
HEADS, ACTS, DEPTHS, CONNECTS = ["3", "4", "6"], ["gelu", "relu"], ["0", "1", "2"], ["residual", "rezero"]


def random_space(rng: random.Random) -> dict:
    """Two or three stacks after a width hole; each stack's depth, connection policy, heads
    (shared by its layers or per layer) and activation may be holes. A stack of `Proj` layers
    changes the type unless it projects to the width (it is not independent: archc finds that)."""
    while True:
        stacks = []
        for _ in range(rng.randint(2, 3)):
            stacks.append({"depth": rng.sample(DEPTHS, rng.randint(1, 2)),
                           "connect": rng.sample(CONNECTS, rng.randint(1, 2)),
                           "heads": rng.sample(HEADS, rng.randint(1, 2)), "act": rng.sample(ACTS, rng.randint(1, 2)),
                           "per_layer": rng.random() < 0.4, "proj": rng.random() < 0.2})
            if stacks[-1]["proj"]:  # layers that change the type, unless Proj(width); no per-layer choice there
                stacks[-1].update(per_layer=False, connect=["residual"], depth=rng.choice([["1"], ["0", "2"]]))
        space = {"width": ["24", "32"][:1 + (rng.random() < 0.7)], "stacks": stacks}  # 3, 4 and 6 heads divide 24
        if 12 <= sum(1 for _ in brute_completions(space)) <= 72:  # keeps the brute force to seconds
            return space


def labelled_holes(space: dict) -> list[tuple[str, list[str], bool]]:
    """(label, options, per layer) of each hole, in source order (one option: no hole)."""
    out = [("width", space["width"], False)]
    for i, st in enumerate(space["stacks"]):
        out += [(f"{i}.depth", st["depth"], False), (f"{i}.connect", st["connect"], False)]
        if st["proj"]:
            out.append((f"{i}.proj", ["24", "32"], st["per_layer"]))
        else:
            out += [(f"{i}.heads", st["heads"], st["per_layer"]), (f"{i}.act", st["act"], st["per_layer"])]
    return [h for h in out if len(h[1]) > 1 or h[2]]


def hole(options: list[str], per_layer: bool) -> str:
    if len(options) == 1 and not per_layer:
        return options[0]
    return f"choice({', '.join(options)}{', per_layer=true' if per_layer else ''})"


def text(space: dict, pick: dict[str, str | list[str]]) -> str:
    """The spec, each hole written by `pick` (label -> option, or per layer a list) or, where
    `pick` has no label, as the hole (a one-option hole: that option)."""
    def at(label: str, options: list[str], per_layer: bool) -> str:
        if label not in pick:
            return hole(options, per_layer)
        got = pick[label]
        if isinstance(got, list):  # per layer (no layer: any option)
            return f"[{', '.join(got)}][i]" if got else options[0]
        return got

    width = at("width", space["width"], False)
    lines, names = [], []
    for i, st in enumerate(space["stacks"]):
        if st["proj"]:
            body = f"Proj({at(f'{i}.proj', ['24', '32'], st['per_layer'])})"
        else:
            body = (f"Heads({at(f'{i}.heads', st['heads'], st['per_layer'])}, "
                    f"act={at(f'{i}.act', st['act'], st['per_layer'])})")
        var = "i => " if any(pick.get(f"{i}.{k}") and isinstance(pick[f"{i}.{k}"], list)
                             for k in ("heads", "act")) else ""
        lines.append(f"    s{i} = stack({at(f'{i}.depth', st['depth'], False)}, "
                     f"connect={at(f'{i}.connect', st['connect'], False)}) {{\n        {var}{body}\n    }}\n")
        names.append(f"s{i}")
    return (HEADER + f"model Net(width: int = {width}) (x: [B, 16]) -> [B, width] {{\n"
            f"    embed = linear(width)\n{''.join(lines)}    return x >> embed >> {' >> '.join(names)}\n}}\n")


def brute_completions(space: dict):
    """Every combination of options: (label -> option index or per-layer indices, its text)."""
    outer = [(label, options) for label, options, per_layer in labelled_holes(space) if not per_layer]
    layered = [(label, options) for label, options, per_layer in labelled_holes(space) if per_layer]
    for key in itertools.product(*(range(len(o)) for _, o in outer)):
        pick: dict = {label: k for (label, _), k in zip(outer, key)}
        depths = {}
        for i, st in enumerate(space["stacks"]):
            depths[i] = int(st["depth"][pick.get(f"{i}.depth", 0)])
        for layers in itertools.product(*(itertools.product(range(len(o)), repeat=depths[int(label.split(".")[0])])
                                          for label, o in layered)):
            full = pick | {label: list(ks) for (label, _), ks in zip(layered, layers)}
            written = {label: [options[k] for k in full[label]] if per_layer else options[full[label]]
                       for label, options, per_layer in labelled_holes(space)}
            yield full, text(space, written)


def key_of(space: dict, holes: list[tuple[str, tuple[str, ...]]], full: dict) -> tuple:
    """The brute force's pick as the Space names it: (path, option index) pairs, sorted."""
    labels = labelled_holes(space)
    assert len(labels) == len(holes)
    out = []
    for (label, _, per_layer), (path, _) in zip(labels, holes):
        got = full[label]
        out += [(path.replace("[*]", f"[{i}]"), k) for i, k in enumerate(got)] if per_layer else [(path, got)]
    return tuple(sorted(out))


def brute_force(space: dict, holes: list) -> tuple[dict[tuple, int], int]:
    """The completions that type-check -> parameter count, and how many there are in all."""
    out, n = {}, 0
    for full, spec in brute_completions(space):
        n += 1
        try:
            graph = elaborate_text(spec, "brute.arch")
        except ArchError:
            continue
        out[key_of(space, holes, full)] = graph.param_count()
    return out, n


def write(tmp_path: Path, spec: str, name: str = "space.arch") -> Path:
    path = tmp_path / name
    path.write_text(spec)
    return path


def keys(choices: list[dict[str, int]]) -> set[tuple]:
    return {tuple(sorted(c.items())) for c in choices}


@pytest.mark.parametrize("seed", range(6))
def test_groups_match_brute_force_on_random_spaces(tmp_path: Path, seed: int) -> None:
    """Counts, lists, budgets and draws of random spaces with two or three stacks equal the brute
    force over every combination; at least two of the stacks are counted on their own."""
    space = random_space(random.Random(1000 + seed))
    path = write(tmp_path, text(space, {}))
    s = Space(path)
    truth, n = brute_force(space, s.holes())
    assert s.count() == len(truth)
    assert keys(s.enumerate()) == set(truth)
    assert s.combinations() == n
    if truth:
        bound = sorted(truth.values())[len(truth) // 2]
        inside = {k for k, p in truth.items() if p <= bound}
        within = Space(path, where=f"params <= {bound}")
        assert within.count() == len(inside)
        assert keys(within.enumerate()) == inside
        rng = random.Random(seed)
        assert all(tuple(sorted(within.sample(rng).items())) in inside for _ in range(40))


def test_the_random_spaces_are_factored(tmp_path: Path) -> None:
    """The spaces above do exercise the groups: most have two or more independent stacks, and
    those with a stack that changes the type keep it in the outer group."""
    factored = 0
    for seed in range(6):
        space = random_space(random.Random(1000 + seed))
        s = Space(write(tmp_path, text(space, {}), f"s{seed}.arch"))
        groups = s.groups()
        factored += len(groups) > 2
        for i, st in enumerate(space["stacks"]):
            if st["proj"]:  # Proj(24) at width 32 changes the type: never a group of its own
                assert not any(p.startswith(f"Net.s{i}") for g in groups[1:] for p in g)
    assert factored >= 3


UNIFORM = HEADER + """model Net(width: int = choice(24, 32)) (x: [B, 16]) -> [B, width] {
    embed = linear(width)
    a = stack(choice(0, 1, 2)) {
        Heads(choice(3, 4), act=choice(gelu, relu))
    }
    b = stack(2) {
        Heads(choice(4, 6, per_layer=true))
    }
    return x >> embed >> a >> b
}
"""


def test_factored_draws_are_uniform(tmp_path: Path) -> None:
    """Chi-square over the completions, 150 draws each at a fixed seed, with and without a budget
    (the budget's draws pick a total cost, then each group's share)."""
    path = write(tmp_path, UNIFORM)
    everything = Space(path)
    assert len(everything.groups()) == 3
    params = sorted(elaborate_text(everything.concrete(c), "u.arch").param_count() for c in everything.enumerate())
    for where in (None, f"params <= {params[len(params) // 2]}"):
        space = Space(path, where=where)
        expected = keys(space.enumerate())
        n = len(expected)
        assert n == space.count() and 10 < n
        rng = random.Random(5)
        draws = Counter(tuple(sorted(space.sample(rng).items())) for _ in range(150 * n))
        assert set(draws) == expected
        chi2 = sum((draws[k] - 150) ** 2 / 150 for k in expected)
        dof = n - 1  # the 0.9999 quantile is below dof + 4.8 sqrt(2 dof) + 10 for these sizes
        assert chi2 < dof + 4.8 * math.sqrt(2 * dof) + 10, (chi2, dof)


STAGES = """model Net(width: int = choice(24, 32)) (x: [B, 16]) -> [B, width] {{
    embed = linear(width)
{stages}    return x >> embed >> {names}
}}
"""
STAGE = """    s{i} = stack(choice(range(0, 5))) {{
        Heads(choice(3, 4, 6), act=choice(gelu, relu))
    }}
"""


def test_a_space_far_over_the_joint_limit_factors(tmp_path: Path) -> None:
    """Four stacks, each with a depth 0-4, heads 3, 4 or 6 and an activation, after a width of 24
    or 32: 2 * 30**4 = 1,620,000 combinations of holes that are not per-layer, far over the 20,000
    that archc checks jointly; each stack is a group of 30, so 2 * (1 + 4 * 30) probes. At width 24
    every option checks (30 per stack); at 32 only 4 heads does (6 at depth 0, where no layer is
    built, and 2 per depth above: 14)."""
    stages = "".join(STAGE.format(i=i) for i in range(4))
    path = write(tmp_path, HEADER + STAGES.format(stages=stages, names=" >> ".join(f"s{i}" for i in range(4))))
    space = Space(path)
    assert space.combinations() == 2 * 30 ** 4 > 20_000
    assert space.count() == 30 ** 4 + 14 ** 4
    assert len(space.groups()) == 5 and space.prober.elaborated <= 2 * (1 + 4 * 30)

    # parameters, written from the spec: embed 16w + w, each layer w*w + w (its linear(D))
    def per_depth(width: int) -> dict[int, int]:  # a stack's completions by depth
        return {d: (6 if d == 0 else 6 if width == 24 else 2) for d in range(5)}

    bound = 16 * 24 + 24 + 7 * (24 * 24 + 24)
    expected = 0
    for width in (24, 32):
        table = per_depth(width)
        for depths in itertools.product(range(5), repeat=4):
            if 16 * width + width + sum(depths) * (width * width + width) <= bound:
                expected += math.prod(table[d] for d in depths)
    within = Space(path, where=f"params <= {bound}")
    assert 0 < within.count() == expected < space.count()
    rng = random.Random(8)
    for _ in range(4):  # draws stay within the budget, measured on their concrete specs
        assert elaborate_text(within.concrete(within.sample(rng)), "s.arch").param_count() <= bound
    joint = Space(path, max_combinations=20_000)
    joint.regions = []  # what the space would need without the groups
    with pytest.raises(ArchError, match="1,620,000 combinations"):
        joint.count()


def test_stacks_that_change_the_type_and_back_are_checked_jointly(tmp_path: Path) -> None:
    """24 -> 32 -> 24 type-checks though neither projection keeps the type: a probe of one stack
    with the other taken out fails, so archc must not read that failure as the stack's own (it
    watches each application of a stack and merges a stack that changes the type into the outer
    group before anything downstream fails)."""
    spec = HEADER + """model Net(width: int = choice(24, 32)) (x: [B, 16]) -> [B, width] {
    embed = linear(width)
    a = stack(1) {
        Proj(choice(24, 32))
    }
    b = stack(1) {
        Proj(choice(24, 32))
    }
    c = stack(choice(0, 1)) {
        Heads(choice(3, 4))
    }
    return x >> embed >> a >> b >> c
}
"""
    space = Space(write(tmp_path, spec))
    brute = set()
    for w, a, b, c, h in itertools.product((0, 1), repeat=5):
        choice = {"Net.width": w, "Net.a": a, "Net.b": b, "Net.c": c, "Net.c#2": h}
        try:
            elaborate_text(space.concrete(choice), "b.arch")
        except ArchError:
            continue
        brute.add(tuple(sorted(choice.items())))
    assert ((("Net.a", 1), ("Net.b", 0), ("Net.c", 0), ("Net.c#2", 0), ("Net.width", 0))) in brute
    # per width, two (a, b) pairs end on the width; c: depth 0 (2 heads) or 1 (3 and 4 divide 24, 4 divides 32)
    assert keys(space.enumerate()) == brute and space.count() == len(brute) == 2 * 4 + 2 * 3
    assert space.groups() == [["Net.width", "Net.a", "Net.b", "Net.c", "Net.c#2"]]  # c alone: no group to split


def test_a_stack_that_reads_a_local_name_stays_outer(tmp_path: Path) -> None:
    """A stack whose body reads a name the model binds (here a shared instance) is not a group
    of its own: its holes are checked jointly with the others."""
    spec = HEADER + """model Net(width: int = choice(24, 32)) (x: [B, 16]) -> [B, width] {
    embed = linear(width)
    shared = Heads(4)
    a = stack(choice(1, 2)) {
        shared
    }
    b = stack(choice(1, 2)) {
        Heads(choice(3, 4))
    }
    c = stack(choice(0, 1)) {
        Heads(choice(4, 6))
    }
    return x >> embed >> a >> b >> c
}
"""
    space = Space(write(tmp_path, spec))
    groups = space.groups()
    assert ["Net.a"] == [p for p in groups[0] if p.startswith("Net.a")]
    assert groups[1:] == [["Net.b", "Net.b#2"], ["Net.c", "Net.c#2"]]
    brute = 0
    for w, a, b, bh, c, ch in itertools.product(("24", "32"), ("1", "2"), ("1", "2"), ("3", "4"), ("0", "1"),
                                                ("4", "6")):
        filled = (spec.replace("choice(24, 32)", w, 1).replace("stack(choice(1, 2)) {\n        shared",
                                                                 f"stack({a}) {{\n        shared")
                  .replace("stack(choice(1, 2)) {\n        Heads(choice(3, 4))", f"stack({b}) {{\n        Heads({bh})")
                  .replace("stack(choice(0, 1)) {\n        Heads(choice(4, 6))", f"stack({c}) {{\n        Heads({ch})"))
        assert "choice" not in filled
        try:
            elaborate_text(filled, "b.arch")
        except ArchError:
            continue
        brute += 1
    assert space.count() == brute


class FakeTrial:
    """What the Optuna bridge uses of a trial: suggest_categorical(name, choices)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.asked: dict[str, list[str]] = {}

    def suggest_categorical(self, name: str, choices: list[str]) -> str:
        assert name not in self.asked
        self.asked[name] = list(choices)
        return self.rng.choice(choices)


def test_mutate_crossover_and_suggest_on_groups(tmp_path: Path) -> None:
    """The search-loop operations keep types on a space counted group by group: every child,
    mutant and suggested completion is one that the enumeration lists, and the Optuna bridge asks
    once for each hole of the completion it makes (the per-layer holes of the depth chosen)."""
    space = Space(write(tmp_path, UNIFORM))
    assert len(space.groups()) == 3
    valid = keys(space.enumerate())
    rng = random.Random(2)
    population = [space.sample(rng) for _ in range(4)]
    for _ in range(25):
        a, b = rng.sample(population, 2)
        child = space.crossover(a, b, rng)
        assert tuple(sorted(child.items())) in valid
        assert all(child[p] in (a[p], b[p]) for p in child if p in a and p in b)
        mutant = space.mutate(child, rng)
        assert tuple(sorted(mutant.items())) in valid and mutant != child
        population[rng.randrange(len(population))] = mutant
    made = 0
    for seed in range(20):
        trial = FakeTrial(seed)
        try:
            choice = space.suggest(trial)
        except Exception as err:  # optuna.TrialPruned, or ArchError without optuna
            assert "no well-typed completion has" in str(err)
            continue
        made += 1
        assert tuple(sorted(choice.items())) in valid and set(trial.asked) == set(choice)
    assert made


def test_a_budget_over_layers_that_share_weights_is_refused(tmp_path: Path) -> None:
    """Layers that may use one named instance share its weights, which count once however many
    layers pick it: their costs do not add up, so a budget over them is a located error (counting
    without one stays exact)."""
    spec = ("axis B\nmodel M(w: int = choice(8, 16)) (x: [B, 8]) -> [B, 8] {\n    shared = linear(8)\n"
            "    y = x >> stack(3) { choice(shared, relu, per_layer=true) }\n    return y >> linear(8)\n}\n")
    path = write(tmp_path, spec)
    assert Space(path).count() == 2 * 2 ** 3
    with pytest.raises(ArchError, match="read 'shared', which the block binds") as info:
        Space(path, where="params <= 100")
    assert info.value.span is not None and (info.value.span.line, info.value.span.col) == (4, 14)


def test_combinations_when_the_outer_group_fails(tmp_path: Path) -> None:
    """An outer combination that fails is not probed group by group; the combinations before
    type-checking still count each group's (a per-layer stack's at the depth its hole gives)."""
    spec = HEADER + """model Net(width: int = choice(24, 32), split: int = choice(3, 4)) (x: [B, 16]) -> [B, width] {
    embed = linear(width)
    a = stack(choice(1, 2)) {
        Heads(choice(4, 6, per_layer=true))
    }
    b = stack(choice(0, 1)) {
        Heads(choice(3, 4), act=choice(gelu, relu))
    }
    y = x >> embed >> rearrange("b (h e) -> b h e", h=split) >> flatten()
    return y >> a >> b
}
"""
    space = Space(write(tmp_path, spec))
    assert len(space.groups()) == 3
    assert space.combinations() == 2 * 2 * (2 + 4) * (2 * 2 * 2)
    brute = set()
    for w, sp, d, h0, h1, e, bh, act in itertools.product((0, 1), (0, 1), (0, 1), (0, 1), (0, 1), (0, 1), (0, 1),
                                                          (0, 1)):
        if d == 0 and h1:
            continue  # one layer: no second layer's hole
        choice = {"Net.width": w, "Net.split": sp, "Net.a": d, "Net.a[0]": h0, "Net.b": e, "Net.b#2": bh,
                  "Net.b.act": act} | ({"Net.a[1]": h1} if d else {})
        try:
            elaborate_text(space.concrete(choice), "b.arch")
        except ArchError:
            continue
        brute.add(tuple(sorted(choice.items())))
    assert keys(space.enumerate()) == brute and space.count() == len(brute)


def test_explicit_paths_keep_the_stacks_together(tmp_path: Path) -> None:
    """`@scope` in the model may tie weights across stacks (two uses of a path share them): such
    a model's stacks are not counted on their own, and the count is the joint one."""
    spec = HEADER + """model Net(width: int = choice(24, 32)) (x: [B, 16]) -> [B, width] {
    @scope("embed")
    y = x >> linear(width)
    a = stack(choice(0, 1)) {
        Heads(choice(3, 4))
    }
    b = stack(choice(0, 1)) {
        Heads(choice(4, 6))
    }
    return y >> a >> b
}
"""
    space = Space(write(tmp_path, spec))
    assert len(space.groups()) == 1
    assert space.count() == (2 + 2) ** 2 + (2 + 1) ** 2  # at 32 only 4 heads divide
