"""Optimized equals unoptimized, numerically: every pass, -O1, -O2 and the deploy pipeline on
every small spec, in eval mode, with BatchNorm statistics and biases randomized; the optimized
graph's weights come from the pipeline's weight transform (loaded with strict=True)."""

from __future__ import annotations

import pytest
import torch

from archc.ir.graph import Graph
from archc.passes.manager import DEPLOY, LEVELS, PASSES, run_pipeline

from passes_harness import SPEC_NAMES, TOL, max_error, random_weights, spec

PIPELINES = {**{name: (name,) for name in PASSES}, "O1": LEVELS[1], "O2": LEVELS[2], "deploy": DEPLOY}


@pytest.mark.parametrize("name", SPEC_NAMES)
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_optimized_equals_unoptimized(pipeline: str, name: str) -> None:
    graph = spec(name)
    sd = random_weights(graph)
    result = run_pipeline(graph, PIPELINES[pipeline])
    new_sd = result.weights(sd)
    assert set(new_sd) == set(result.graph.params)
    err = max_error(graph, sd, result.graph, new_sd)
    assert err <= TOL, f"{pipeline} on {name}: max abs error {err:.3g}"


def _ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


@pytest.mark.parametrize(("name", "expected"), [
    ("repvgg", ["conv2d", "relu", "conv2d", "relu"]),
    ("acnet", ["conv2d", "relu"]),
    ("mobileone", ["conv2d", "relu", "conv2d", "relu"]),
    ("unireplknet", ["conv2d", "gelu", "conv2d", "add"]),
    ("repmlp", ["rearrange", "rearrange", "conv2d", "rearrange", "relu", "rearrange"]),
])
def test_deploy_collapses_each_block(name: str, expected: list[str]) -> None:
    assert _ops(run_pipeline(spec(name), DEPLOY).graph) == expected


def test_groups_and_kernels_of_the_merged_layers() -> None:
    deployed = run_pipeline(spec("repvgg"), DEPLOY).graph
    a, b = (n for n in deployed.nodes if n.op == "conv2d")
    assert (a.attrs["kernel"], a.attrs["groups"], a.attrs["stride"]) == (3, 2, 1)  # identity respects groups
    assert (b.attrs["kernel"], b.attrs["groups"], b.attrs["stride"]) == (3, 1, 2)
    lk = run_pipeline(spec("unireplknet"), DEPLOY).graph
    assert lk.nodes[0].attrs == {**lk.nodes[0].attrs, "kernel": 13, "padding": 6, "groups": 8, "dilation": 1}
    mlp = run_pipeline(spec("repmlp"), DEPLOY).graph
    assert next(n for n in mlp.nodes if n.op == "conv2d").attrs["groups"] == 4  # per-channel blocks


def test_bias_padding_pitfall_is_cut_not_merged() -> None:
    deployed = run_pipeline(spec("dbb"), DEPLOY).graph
    block_b = [n for n in deployed.nodes if n.scope.startswith("b")]
    assert [n.op for n in block_b] == ["conv2d", "conv2d", "conv2d", "add", "relu"]


def test_low_rank_pair_stays_factored() -> None:
    deployed = run_pipeline(spec("linears"), DEPLOY).graph
    shapes = sorted(tuple(p.shape) for p in deployed.params.values() if len(p.shape) == 2)
    assert (2, 16) in shapes and (16, 2) in shapes  # down/up kept; fc1 o fc2 and the LayerScale merged
    assert [n.op for n in deployed.nodes].count("mul") == 0


@pytest.mark.parametrize("name", ["repvgg", "dbb", "mobileone", "unireplknet", "repmlp", "acnet"])
def test_weight_transform_is_exact_in_float64(name: str) -> None:
    """In float64 the merged layers agree to ~1e-12: the algebra is exact, not approximate."""
    from archc.backends.torch import build_module
    from archc.backends.torch.inputs import example_inputs

    graph = spec(name)
    sd = {k: v.double() if v.is_floating_point() else v for k, v in random_weights(graph).items()}
    result = run_pipeline(graph, DEPLOY)
    new_sd = result.weights(sd)
    assert all(v.dtype == torch.float64 for v in new_sd.values() if v.is_floating_point())
    before, after = build_module(graph).double(), build_module(result.graph).double()
    before.load_state_dict(sd, strict=True)
    after.load_state_dict(new_sd, strict=True)
    (x,) = (t.double() for t in example_inputs(graph, sizes={"B": 2}))
    with torch.no_grad():
        err = (before.eval()(x) - after.eval()(x)).abs().max().item()
    assert err < 1e-10, err
