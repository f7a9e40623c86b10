"""-O2 on CPU (#17): convolutions and linears with their epilogues run as oneDNN's fused calls on
packed weights (backends/torch/onednn.py, spelled by backends/torch/cpu.py from the groups of
archc/passes/mark_epilogues.py). The lowered module computes what eager computes (fp32, 1e-5),
for the shape it packed for and for others, keeps the plain module's state_dict, follows weight
changes, computes the plain path in training mode and works under torch.compile."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from archc.backends.torch import emit_python

from archc.api import build
from archc.elaborate import elaborate_file, elaborate_text
from archc.passes.manager import LEVELS, PASSES, run_pipeline
from archc.resources import specs_root

TINY: dict[str, dict[str, Any]] = {
    "resnet18": {"img_size": 32, "num_classes": 10, "depths": (1, 1, 1, 1)},
    "resnet50": {"img_size": 32, "num_classes": 10, "depths": (1, 2, 1, 1)},
    "convnext_tiny": {"img_size": 32, "num_classes": 10, "depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
    "vit_small_patch16_224": {"img_size": 32, "patch": 8, "D": 64, "depth": 2, "heads": 2, "num_classes": 10},
    "poolformer_s12": {"img_size": 32, "num_classes": 10, "depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
    "repvgg_a0": {"img_size": 32, "num_classes": 10, "depths": (1, 2, 1, 1), "widths": (16, 32, 64, 128)},
    "gpt2": {"vocab": 100, "dim": 64, "depth": 2, "heads": 2, "max_len": 64},
}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and biases, so that the folds have something to fold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)


def lowered(name: str, **extra: Any) -> tuple[torch.nn.Module, torch.nn.Module, Any]:
    """(the plain module in eval mode, the -O2 module with the same weights, the pipeline)."""
    graph = elaborate_file(specs_root() / "models" / f"{name}.arch", overrides={**TINY[name], **extra})
    torch.manual_seed(0)
    plain = build(graph).eval()
    _randomize(plain, 1)
    pipeline = run_pipeline(graph, LEVELS[2])
    fast = build(pipeline.graph).eval()
    fast.load_state_dict(pipeline.weights(plain.state_dict()))
    return plain, fast, pipeline


def example(name: str, batch: int, size: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    if name == "gpt2":
        return torch.randint(0, TINY[name]["vocab"], (batch, 16), generator=g)
    size = size or TINY[name]["img_size"]
    return torch.randn(batch, 3, size, size, generator=g)


def packed_count(module: torch.nn.Module) -> int:
    """How many weights of `module` are packed (the generated file's cache)."""
    cache = vars(__import__(type(module).__module__, fromlist=["_PACKED"])).get("_PACKED", {})
    return sum(1 for p in module.parameters() if id(p) in cache)


@pytest.mark.parametrize("name", sorted(TINY))
def test_O2_equals_eager_and_runs_fused(name: str) -> None:
    plain, fast, _ = lowered(name)
    x = example(name, 2)
    with torch.inference_mode():
        expected, got = plain(x), fast(x)
    torch.testing.assert_close(got, expected, **TOL)
    if name != "gpt2":  # every conv net has convolutions to pack; GPT-2 has no group with a post-op
        assert packed_count(fast) > 0


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "vit_small_patch16_224"])
def test_a_shape_not_packed_for_falls_back_correctly(name: str) -> None:
    plain, fast, _ = lowered(name)
    with torch.inference_mode():
        fast(example(name, 2))  # packs for batch 2
        for x in (example(name, 3), example(name, 1)) if name.startswith("vit") else \
                (example(name, 3), example(name, 1, size=48)):
            torch.testing.assert_close(fast(x), plain(x), **TOL)


def test_state_dict_is_the_plain_modules_and_weight_changes_repack() -> None:
    plain, fast, pipeline = lowered("resnet18")
    x = example("resnet18", 2)
    with torch.inference_mode():
        fast(x)
    expected = pipeline.weights(plain.state_dict())
    assert sorted(fast.state_dict()) == sorted(expected)  # no packed buffers
    for k, v in fast.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0)
    other = lowered("resnet18")[0]
    _randomize(other, 7)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.9)
    fast.load_state_dict(pipeline.weights(other.state_dict()))  # in place: the packed weights are stale
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), other(x), **TOL)


def test_training_mode_and_autograd_take_the_plain_path() -> None:
    _, fast, _ = lowered("resnet18")
    x = example("resnet18", 2)
    with torch.inference_mode():
        expected = fast(x)
    fast.train()  # the -O2 graph has no dropout or BatchNorm left: the same function
    y = fast(x.requires_grad_())
    torch.testing.assert_close(y, expected, **TOL)
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in fast.parameters())


def test_bf16_O2_equals_eager_bf16_within_bf16_rounding() -> None:
    graph = elaborate_file(specs_root() / "models" / "resnet18.arch", overrides=TINY["resnet18"], dtype="bf16")
    torch.manual_seed(0)
    plain = build(graph).eval()
    pipeline = run_pipeline(graph, LEVELS[2])
    fast = build(pipeline.graph).eval()
    fast.load_state_dict(pipeline.weights(plain.state_dict()))
    x = example("resnet18", 2).bfloat16()
    with torch.inference_mode():
        expected, got = plain(x), fast(x)
    assert got.dtype == torch.bfloat16
    # BatchNorm folded into bf16 weights rounds once more than eager: a few bf16 ulps (2^-8)
    torch.testing.assert_close(got, expected, rtol=5e-2, atol=5e-2 * float(expected.abs().max()))


def test_O2_module_works_under_torch_compile() -> None:
    plain, fast, _ = lowered("resnet18")
    x = example("resnet18", 2)
    compiled = torch.compile(fast, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), **TOL)


def test_the_file_spells_groups_as_calls_and_stays_plain_python() -> None:
    graph = elaborate_file(specs_root() / "models" / "resnet50.arch", overrides=TINY["resnet50"])
    text = emit_python(run_pipeline(graph, LEVELS[2]).graph)  # verify_python has checked it
    assert "conv_add_act(self.conv3, relu_1, x, 'relu')" in text
    assert "overwrite=True" in text  # the downsample branch's own tensor takes the sum
    assert "conv_act" not in emit_python(graph)  # -O0: torch's own layers only


SPEC = """
axis B
model Res(C: int = 8) (x: [B, C, 8, 8]) -> [B, C, 8, 8] {
    a = conv2d(x, C, 3, padding=1)
    b = conv2d(x, C, 1)
    y = relu(a + b)
    return gelu(conv2d(y, C, 1))
}
"""


def test_the_later_convolution_takes_the_add_and_its_activation() -> None:
    graph = PASSES["mark_epilogues"](elaborate_text(SPEC, "res.arch")).graph
    groups: dict[int, list[str]] = {}
    for node in graph.nodes:
        for a in node.annotations:
            if a.name == "fused":
                groups.setdefault(int(a.kwargs["group"]), []).append(node.op)
    assert sorted(groups.values()) == [["conv2d"], ["conv2d", "add", "relu"], ["conv2d", "gelu"]]
    text = emit_python(graph)
    assert "conv_add_act(" in text and "'gelu', 'none')" in text


@pytest.mark.parametrize("conv_args", [{"padding": 1}, {"padding": 2, "stride": 2, "dilation": 2}, {"groups": 8}])
def test_the_fused_calls_equal_the_layers_they_replace(conv_args: dict[str, int]) -> None:
    from archc.backends.torch import onednn

    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(8, 16, 3, **conv_args).eval()
    linear = torch.nn.Linear(8, 24).eval()
    x = torch.randn(2, 8, 11, 11, generator=g)
    with torch.inference_mode():
        y = conv(x)
        for other in (torch.randn(y.shape, generator=g), torch.randn(2, 16, 1, 1, generator=g),  # a broadcast
                      torch.randn(y.shape, generator=g).contiguous(memory_format=torch.channels_last)):
            expected = torch.relu(y + other)
            torch.testing.assert_close(onednn.conv_add_act(conv, x, other.clone(), "relu"), expected, **TOL)
            torch.testing.assert_close(onednn.conv_add_act(conv, x, other.clone(), "relu", overwrite=True), expected,
                                       **TOL)
        torch.testing.assert_close(onednn.conv_act(conv, x, "swish"), torch.nn.functional.silu(y), **TOL)
        t = torch.randn(3, 5, 8, generator=g)
        for act, algorithm, f in (("gelu", "tanh", lambda v: torch.nn.functional.gelu(v, approximate="tanh")),
                                  ("relu", "", torch.relu), ("", "", lambda v: v)):
            torch.testing.assert_close(onednn.linear_act(linear, t, act, algorithm), f(linear(t)), **TOL)


def test_a_deployed_spec_whose_convolutions_are_no_leaves_runs_fused() -> None:
    """`archc deploy` writes a flat spec: its convolutions are statements of the model's forward
    (`F.conv2d`), which -O2 spells as conv2d_act on their tensors."""
    from archc.ir.printer import print_graph
    from archc.passes.manager import DEPLOY

    train = elaborate_file(specs_root() / "models" / "repvgg_a0.arch", overrides=TINY["repvgg_a0"])
    deployed = elaborate_text(print_graph(run_pipeline(train, DEPLOY).graph), "repvgg.deploy.arch")
    torch.manual_seed(0)
    plain = build(deployed).eval()
    _randomize(plain, 2)
    pipeline = run_pipeline(deployed, LEVELS[2])
    assert "conv2d_act(images, self.stem" in emit_python(pipeline.graph)
    fast = build(pipeline.graph).eval()
    fast.load_state_dict(pipeline.weights(plain.state_dict()))
    with torch.inference_mode():
        for x in (example("repvgg_a0", 2), example("repvgg_a0", 1, size=40)):
            torch.testing.assert_close(fast(x), plain(x), **TOL)
    assert packed_count(fast) > 0
    fast.train()
    x = example("repvgg_a0", 2)
    torch.testing.assert_close(fast(x), plain(x), **TOL)  # training mode: F.conv2d, the same function
