"""Search spaces (issue #18): `choice(...)` holes, the exact count of well-typed completions,
uniform sampling, concrete specs that check on their own, budgets, and located errors.

The space is a MetaFormer-style template (mixer slot x norm x connection policy x depth x width);
the brute force below fills the same template with plain text, one option per hole, and
elaborates each filled spec on its own: it shares nothing with archc.space but the elaborator.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from archc.analysis.summary import summarize
from archc.elaborate import elaborate_file, elaborate_text
from archc.errors import ArchError
from archc.frontend.fmt import format_module
from archc.frontend.parser import parse
from archc.ir.verify import verify
from archc.space import Space, parse_budget

from _space_specs import metaformer

# hole path -> options, in source order; Attention(heads=3) does not divide widths 32 and 40
OPTIONS = {
    "Net.width": ["24", "32", "40"],
    "Net.depth": ["1", "2"],
    "Net.blocks.connect": ["rezero", "hyper(n=2)"],
    "Net.blocks": ["Attention(heads=3)", "Attention(heads=4)", "Mix()"],
    "Net.blocks.norm": ["layernorm", "rmsnorm"],
}
FIELDS = {"Net.width": "width", "Net.depth": "depth", "Net.blocks.connect": "connect", "Net.blocks": "mixer",
          "Net.blocks.norm": "norm"}
AXES = {"T": 8}


def space_text() -> str:
    return metaformer(**{FIELDS[p]: f"choice({', '.join(o)})" for p, o in OPTIONS.items()})


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.arch"
    path.write_text(space_text())
    return path


@pytest.fixture(scope="module")
def brute_force() -> dict[tuple[int, ...], tuple[int, int]]:
    """Every combination that type-checks -> (parameters, FLOPs at batch 1, T=8), by brute force."""
    out = {}
    for key in itertools.product(*(range(len(o)) for o in OPTIONS.values())):
        text = metaformer(**{FIELDS[p]: o[k] for (p, o), k in zip(OPTIONS.items(), key)})
        try:
            graph = elaborate_text(text, "brute.arch")
        except ArchError:
            continue
        out[key] = (graph.param_count(), summarize(graph, batch=1, axes=AXES).total.flops)
    return out


@pytest.fixture(scope="module")
def space(spec: Path) -> Space:
    return Space(spec)


def key_of(choice: dict[str, int]) -> tuple[int, ...]:
    return tuple(choice[p] for p in OPTIONS)


def test_holes_have_their_paths_and_options(space: Space) -> None:
    assert space.holes() == [(p, tuple(o)) for p, o in OPTIONS.items()]
    assert space.combinations() == 72


def test_count_is_exact(space: Space, brute_force: dict) -> None:
    assert len(brute_force) == 56  # 16 of the 72 split 32 or 40 channels into 3 heads
    assert space.count() == len(brute_force)
    assert sorted(key_of(c) for c in space.enumerate()) == sorted(brute_force)


def test_concrete_specs_check_on_their_own(space: Space, spec: Path) -> None:
    """Every completion the space can return is a formatted spec that checks on its own."""
    for choice in space.enumerate():
        text = space.concrete(choice)
        assert "choice" not in text
        assert format_module(parse(text)) == text  # formatted: `archc fmt` leaves it as it is
        path = spec.parent / "concrete.arch"
        path.write_text(text)
        verify(elaborate_file(path))


def _build_and_run(space: Space, choices: list[dict[str, int]]) -> None:
    gen = torch.Generator().manual_seed(0)
    for choice in choices:
        width = int(OPTIONS["Net.width"][choice["Net.width"]])
        y = _build(space.elaborate(choice))(torch.randn(2, 8, 16, generator=gen))
        assert y.shape == (2, 8, width) and torch.isfinite(y).all()


def test_samples_build_and_run(space: Space) -> None:
    """Sampled completions build as torch modules and run on a random input, with the output type
    the checker gave (12 samples at a fixed seed; the slow test runs them all)."""
    rng = random.Random(11)
    _build_and_run(space, [space.sample(rng) for _ in range(12)])


@pytest.mark.slow
def test_every_completion_builds_and_runs(space: Space) -> None:
    _build_and_run(space, space.enumerate())


def test_residual_policy_builds(tmp_path: Path) -> None:
    path = tmp_path / "r.arch"
    path.write_text(metaformer(width=24, depth=1, connect="residual", mixer="Mix()", norm="layernorm"))
    assert _build(elaborate_file(path))(torch.randn(2, 8, 16)).shape == (2, 8, 24)


def _build(graph: object) -> torch.nn.Module:
    from archc.api import build

    return build(graph).eval()


def test_samples_are_uniform(space: Space) -> None:
    """Chi-square over 56 completions, 11,200 draws at a fixed seed: the statistic has 55 degrees of
    freedom (mean 55, sd 10.5); 120 is beyond the 0.9999 quantile."""
    rng = random.Random(1234)
    n = space.count()
    draws = Counter(key_of(space.sample(rng)) for _ in range(200 * n))
    assert set(draws) == {key_of(c) for c in space.enumerate()}
    expected = 200.0
    chi2 = sum((draws[k] - expected) ** 2 / expected for k in draws)
    assert chi2 < 120, chi2


def test_sampling_is_reproducible(space: Space) -> None:
    a = [space.sample(random.Random(7)) for _ in range(3)]
    b = [space.sample(random.Random(7)) for _ in range(3)]
    assert a == b


def test_budget_is_respected_exactly(spec: Path, brute_force: dict) -> None:
    params = sorted(p for p, _ in brute_force.values())
    flops = sorted(f for _, f in brute_force.values())
    p_max, f_min = params[len(params) // 2], flops[len(flops) // 4]
    where = f"params <= {p_max} and flops > {f_min}"
    space = Space(spec, where=where, axes=AXES)
    inside = {k for k, (p, f) in brute_force.items() if p <= p_max and f > f_min}
    assert 0 < len(inside) < len(brute_force)
    assert space.count() == len(inside)
    rng = random.Random(3)
    samples = [space.sample(rng) for _ in range(200)]
    assert {key_of(c) for c in samples} <= inside  # measured by the brute force, independently
    for choice in samples[:4]:
        graph = space.elaborate(choice)
        assert graph.param_count() <= p_max
        assert summarize(graph, batch=1, axes=AXES).total.flops > f_min


@pytest.mark.parametrize("where", ["params <= eval(1)", "params <= 1 or flops <= 2", "latency < 3",
                                   "params", "__import__('os') < 1"])
def test_budget_is_parsed_not_evaluated(where: str) -> None:
    with pytest.raises(ArchError, match="--where"):
        parse_budget(where)


def test_budget_forms() -> None:
    b = parse_budget("params <= 25e6 and flops < 4_000")
    assert b.holds({"params": 25_000_000, "flops": 3999})
    assert not b.holds({"params": 25_000_001, "flops": 0})
    assert not b.holds({"params": 0, "flops": 4000})


def _error(text: str) -> ArchError:
    with pytest.raises(ArchError) as info:
        parse(text, "bad.arch")
    return info.value


@pytest.mark.parametrize("text, message, col", [
    ("let a = choice()\n", "choice() needs at least one option", 9),
    ("let a = choice(1, b=2)\n", "takes options, not 'b='", 19),
    ("let a = choice(1, choice(2, 3))\n", "a choice inside a choice", 19),
    ("let a = choice(1, 2, 1)\n", "option '1' is written twice", 22),
    ("let a = choice(1, 2\n", "", 0),
])
def test_malformed_choices_are_located(text: str, message: str, col: int) -> None:
    err = _error(text)
    assert err.span is not None and err.span.file == "bad.arch"
    assert message in err.message
    if col:
        assert (err.span.line, err.span.col) == (1, col)


def test_a_space_is_not_a_model(spec: Path) -> None:
    with pytest.raises(ArchError, match="search space.*archc space") as info:
        elaborate_file(spec)
    assert info.value.span is not None and info.value.span.line == 11


def test_choice_from_set_is_an_error(tmp_path: Path) -> None:
    from archc.cli import parse_sets

    path = tmp_path / "m.arch"
    path.write_text("axis B\nmodel M(d: int = 4) (x: [B, 8]) -> [B, d] {\n    return x >> linear(d)\n}\n")
    with pytest.raises(ArchError, match="search space"):
        elaborate_file(path, overrides=parse_sets(["d=choice(2, 4)"]))


def test_too_many_combinations_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.arch"
    path.write_text("axis B\nmodel M(a: int = choice(1, 2, 3), b: int = choice(1, 2, 3)) (x: [B, 8]) -> [B, 8] {\n"
                    "    return x\n}\n")
    with pytest.raises(ArchError, match="9 combinations.*at most 8"):
        Space(path, max_combinations=8).count()
    assert Space(path).count() == 9


def test_no_well_typed_completion(tmp_path: Path) -> None:
    path = tmp_path / "none.arch"
    path.write_text("axis B\nmodel M(d: int = choice(3, 5)) (x: [B, 8]) -> [B, 8] {\n"
                    "    return x >> rearrange(\"b (h e) -> b h e\", h=d) >> flatten()\n}\n")
    space = Space(path)
    assert space.count() == 0
    with pytest.raises(ArchError, match="none of the 2 completions"):
        space.sample(random.Random(0))


def test_bad_choice_of_options(space: Space) -> None:
    good = space.enumerate()[0]
    with pytest.raises(ArchError, match="has 3 options"):
        space.concrete(good | {"Net.width": 3})
    with pytest.raises(ArchError, match="no option is chosen for the hole Net.depth"):
        space.concrete({k: v for k, v in good.items() if k != "Net.depth"})
    with pytest.raises(ArchError, match="no hole Net.heads"):
        space.concrete(good | {"Net.heads": 0})


def test_paths_of_repeated_and_nested_places(tmp_path: Path) -> None:
    path = tmp_path / "p.arch"
    path.write_text("axis B\nlet w = choice(8, 16)\n"
                    "model M(act: fn = choice(gelu, relu)) (x: [B, 8]) -> [B, w] {\n"
                    "    y = x >> linear(choice(8, 16)) >> linear(choice(8, 16))\n"
                    "    for i in choice([1], [1, 2]) {\n        y = act(y)\n    }\n"
                    "    return y >> linear(w)\n}\n")
    space = Space(path)
    assert [p for p, _ in space.holes()] == ["w", "M.act", "M.y", "M.y#2", "M.for.i"]
    assert space.count() == 32


SMALL = """axis B
model M(heads: int = choice(3, 5, 6), act: fn = choice(gelu, relu)) (x: [B, 12]) -> [B, 4] {
    return x >> rearrange("b (h e) -> b h e", h=heads) >> act >> flatten() >> linear(4)
}
"""


def test_cli_count_sample_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from archc.cli import main

    spec = tmp_path / "small.arch"
    spec.write_text(SMALL)
    assert main(["space", str(spec), "--count"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{spec}: 2 holes, 6 combinations, 4 well-typed",
                                                    "  M.heads: 3 | 5 | 6", "  M.act: gelu | relu"]
    assert main(["space", str(spec), "--sample", "5", "--seed", "5", "--json", "-o", str(tmp_path / "out")]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 5 and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"small_00{i}.arch" for i in range(5)]
    for r in records:
        assert r["options"]["M.heads"] != "5"
        assert r["options"] == {"M.heads": ["3", "5", "6"][r["choice"]["M.heads"]],
                                "M.act": ["gelu", "relu"][r["choice"]["M.act"]]}
        verify(elaborate_file(Path(r["file"])))
    assert main(["space", str(spec), "--enumerate"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "0: M.heads=3 M.act=gelu", "1: M.heads=3 M.act=relu", "2: M.heads=6 M.act=gelu", "3: M.heads=6 M.act=relu"]
    for where, n in [("params <= 52", 4), ("params < 52", 0), ("params <= 52 and flops >= 1", 4),
                     ("flops < 1", 0)]:  # linear(4) on 12 features: 48 weights and 4 biases
        assert main(["space", str(spec), "--count", "--where", where]) == 0
        assert f"{n} well-typed within '{where}'" in capsys.readouterr().out


def test_cli_flops_need_the_axes(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from archc.cli import main

    assert main(["space", str(spec), "--count", "--where", "flops < 1"]) == 1
    assert "the axis 'T' has no value" in capsys.readouterr().err


def test_formatting_keeps_the_holes() -> None:
    """`archc fmt` prints a space back with its holes: same paths, same options, a fixed point."""
    from archc.frontend.holes import find_holes

    text = format_module(parse(space_text(), "space.arch"))
    again = parse(text, "space.arch")
    assert [(h.path, h.options) for h in find_holes(again)] == [(p, tuple(o)) for p, o in OPTIONS.items()]
    assert format_module(again) == text
