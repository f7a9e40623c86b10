"""The partitioner: which nodes each region holds, for small specs and the zoo."""

from __future__ import annotations

from pathlib import Path

import pytest

from archc.backends.kernels.partition import partition
from archc.backends.kernels.plan import plan
from kernel_harness import compare, graph, small


def regions(g):  # type: ignore[no-untyped-def]
    return [(r.kind, [g.nodes[i].op for i in r.nodes]) for r in partition(g).regions]


def test_elementwise_chain_is_one_region() -> None:
    g = small("Ew")
    assert regions(g) == [
        ("torch", ["parameter"]),
        ("elementwise", ["add", "gelu", "mul", "add", "silu", "sigmoid", "sub", "tanh", "relu"]),
    ]


def test_rows_take_their_prologue_and_epilogue() -> None:
    g = small("Rows")
    assert regions(g) == [("rows", ["add", "layernorm", "mul"]), ("rows", ["softmax"]), ("rows", ["rmsnorm", "add"])]
    part = partition(g)
    first = part.regions[0]
    assert part.outputs(first) == ["%2", "%4"]  # the sum (rmsnorm reads it) and the scaled norm


def test_linear_takes_its_epilogue_attention_stands_alone() -> None:
    assert regions(small("Attn")) == [
        ("gemm", ["linear"]), ("torch", ["rearrange"]), ("torch", ["unbind"]), ("attention", ["attention"]),
        ("torch", ["rearrange"]), ("gemm", ["linear", "gelu"])]


def test_conv_epilogue_takes_batchnorm_relu_and_the_shortcut() -> None:
    assert regions(small("ConvBlock")) == [("conv", ["conv2d", "batchnorm", "relu"]),
                                           ("conv", ["conv2d", "batchnorm", "add", "relu"])]


def test_no_fuse() -> None:
    assert regions(small("NoFuse")) == [("elementwise", ["relu"]), ("elementwise", ["gelu"]),
                                        ("elementwise", ["mul"])]


def test_gpt2_block() -> None:
    g = graph("gpt2", depth=1)
    kinds = regions(g)
    assert kinds[2] == ("rows", ["add", "dropout", "layernorm"])  # embeddings + dropout + ln_1
    assert ("gemm", ["linear", "dropout", "add"]) in kinds  # c_proj + residual
    assert ("gemm", ["linear", "gelu"]) in kinds  # c_fc + gelu(tanh)
    assert [k for k, _ in kinds].count("attention") == 1


def test_resnet18_every_conv_has_an_epilogue() -> None:
    g = graph("resnet18")
    convs = [ops for kind, ops in regions(g) if kind == "conv"]
    assert len(convs) == 20 and all(ops[:2] == ["conv2d", "batchnorm"] for ops in convs)
    assert sum(ops[-2:] == ["add", "relu"] for ops in convs) == 8  # the residual adds


def test_schedule_is_topological() -> None:
    for name in ("gpt2", "vit", "resnet18"):
        g = graph(name)
        part = partition(g)
        done = {p.value for p in g.inputs}
        for region in part.regions:
            made = {v for i in region.nodes for v in g.nodes[i].outputs}
            assert set(part.inputs(region)) <= done, (name, region.name)
            done |= made


def test_broadcast_operands() -> None:
    """The class token / position embedding add: [1, T, D] on [B, T, D] reads (i % (T * D))."""
    g = graph("vit")
    part = partition(g)
    region = next(r for r in part.regions if r.kind == "rows")
    kp = plan(part, region, {})
    axes = {op.value: op.axes for op in kp.loads}
    assert list(axes.values()) == [None, (1, 3)]


def test_fallback_note() -> None:
    g = graph("resnet18")
    notes = [r.note for r in partition(g).regions if r.kind == "torch"]
    assert any("maxpool2d" in n for n in notes) and any("global_avgpool" in n for n in notes)


@pytest.mark.parametrize("model", ["ConvBlock", "NoFuse"])
def test_small_specs_match_torch(model: str, tmp_path: Path) -> None:
    pytest.importorskip("triton")
    compare(small(model), tmp_path, sizes={"B": 3})
