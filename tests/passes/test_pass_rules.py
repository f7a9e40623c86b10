"""Targeted rules: what each pass must leave alone."""

from __future__ import annotations

from archc.elaborate import elaborate_text
from archc.ir.graph import Graph
from archc.ir.verify import verify
from archc.passes.manager import DEPLOY, PASSES, run_pipeline

from passes_harness import TOL, max_error, random_weights


def graph(body: str, inputs: str = "x: f32[B, 4, 8, 8]", out: str = "f32[B, 4, 8, 8]") -> Graph:
    return verify(elaborate_text(f"axis B\nmodel M ({inputs}) -> {out} {{\n{body}\n}}\n", "m.arch"))


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def test_no_fuse_keeps_a_batchnorm_and_a_branch() -> None:
    g = graph("    c = conv2d(4, 3, padding = 1, bias = false)\n    bn = batchnorm()\n"
              "    @no_fuse y = bn(c(x))\n    return relu(y)")
    assert ops(run_pipeline(g, DEPLOY).graph) == ["conv2d", "batchnorm", "relu"]


def test_pooling_without_count_include_pad_is_not_a_conv() -> None:
    g = graph("    c = conv2d(4, 3, padding = 1)\n"
              "    return relu(c(x) + avgpool2d(x, 3, stride = 1, padding = 1, count_include_pad = false))")
    deployed = run_pipeline(g, DEPLOY)
    assert "avgpool2d" in ops(deployed.graph)
    sd = random_weights(g)
    assert max_error(g, sd, deployed.graph, deployed.weights(sd)) <= TOL


def test_tied_weights_are_not_folded_into_one_user() -> None:
    g = graph("    c = conv2d(4, 3, padding = 1, bias = false)\n    bn = batchnorm()\n"
              "    return relu(bn(c(x))) + c(x)")
    folded = PASSES["fold_bn"](g).graph
    assert ops(folded).count("batchnorm") == 1  # `c` is used twice: its weight must not change


def test_cse_never_merges_random_ops() -> None:
    g = graph("    return dropout(x, p = 0.5) + dropout(x, p = 0.5) + relu(x) + relu(x)")
    merged = PASSES["cse"](g).graph
    assert ops(merged).count("dropout") == 2 and ops(merged).count("relu") == 1


def test_merge_parallel_groups_by_bias_setting() -> None:
    g = graph("    a = linear(x, 8)\n    b = linear(x, 8)\n    c = linear(x, 8, bias = false)\n"
              "    return a + b + c", inputs="x: f32[B, 16]", out="f32[B, 8]")
    merged = PASSES["merge_parallel"](g).graph
    assert ops(merged).count("linear") == 2 and ops(merged).count("split") == 1


def test_a_conv_reading_a_bias_through_zero_padding_is_cut() -> None:
    g = graph("    a = conv2d(4, 1)\n    b = conv2d(4, 3, padding = 1)\n    return relu(b(a(x)))")
    deployed = run_pipeline(g, DEPLOY).graph
    assert ops(deployed) == ["conv2d", "conv2d", "relu"]  # a 1x1 with a bias, then a padded 3x3
    g = graph("    a = conv2d(4, 1, bias = false)\n    b = conv2d(4, 3, padding = 1)\n    return relu(b(a(x)))")
    assert ops(run_pipeline(g, DEPLOY).graph) == ["conv2d", "relu"]  # no bias: exact
