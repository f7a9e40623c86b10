"""Every pass on every small spec: the result verifies, the pass is idempotent (running it twice
is running it once, compared with canonical()), and the result prints as .arch text that
compiles back to the same IR. Plus one golden file per pass: the IR before and after."""

from __future__ import annotations

import pytest

from archc.elaborate import elaborate_text
from archc.ir.printer import canonical, print_graph
from archc.ir.verify import verify
from archc.passes.manager import PASSES

from passes_harness import SPEC_NAMES, check_golden, spec

PRINTS_UNKNOWN_ANNOTATION = ("mark_epilogues",)  # @fused: see test_epilogue_marks_print_back


@pytest.mark.parametrize("name", SPEC_NAMES)
@pytest.mark.parametrize("pass_name", sorted(PASSES))
def test_pass_is_valid_and_idempotent(pass_name: str, name: str) -> None:
    graph = spec(name)
    run = PASSES[pass_name]
    once = verify(run(graph).graph)
    twice = verify(run(once).graph)
    assert canonical(twice) == canonical(once), f"{pass_name} is not idempotent on {name}"


@pytest.mark.parametrize("name", SPEC_NAMES)
@pytest.mark.parametrize("pass_name", sorted(set(PASSES) - set(PRINTS_UNKNOWN_ANNOTATION)))
def test_result_prints_back(pass_name: str, name: str) -> None:
    after = PASSES[pass_name](spec(name)).graph
    text = print_graph(after)
    again = verify(elaborate_text(text, "printed.arch"))
    assert canonical(again) == canonical(after), text


def test_epilogue_marks_print_back() -> None:
    after = PASSES["mark_epilogues"](spec("qkv")).graph
    assert any(a.name == "fused" for n in after.nodes for a in n.annotations)
    again = elaborate_text(print_graph(after), "printed.arch")
    assert canonical(verify(again)) == canonical(after)


GOLDEN_CASES = [
    ("dce", "cleanup"), ("cse", "cleanup"), ("fold_constants", "cleanup"), ("strip_dropout", "cleanup"),
    ("fold_bn", "convbn"), ("merge_parallel", "qkv"), ("mark_epilogues", "qkv"), ("hoist_constants", "rotary"),
    ("fuse_pool_mixer", "poolmixer"),
    *[("reparam", n) for n in ("repvgg", "acnet", "dbb", "mobileone", "unireplknet", "repmlp", "linears",
                               "convbn")],
]


@pytest.mark.parametrize(("pass_name", "name"), GOLDEN_CASES, ids=[f"{p}-{n}" for p, n in GOLDEN_CASES])
def test_golden(pass_name: str, name: str) -> None:
    before = spec(name)
    after = PASSES[pass_name](before).graph
    text = (f"# pass {pass_name} on tests/passes/specs/{name}.arch\n# ---- before ----\n{print_graph(before)}"
            f"# ---- after ----\n{print_graph(after)}")
    check_golden(f"{pass_name}.{name}.arch", text)
