"""The ops that current models need (rotary tables, grouped-query attention, upsampling), beyond
their eager reference in test_ops.py: each exports to ONNX and runs in onnxruntime at other sizes
than the export's, the summary's FLOPs are what FlopCounterMode counts, and their mistakes are
located errors that quote what was written."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from archc.analysis.summary import summarize
from archc.backends.onnx import check, export_onnx
from archc.backends.torch import build_module
from archc.backends.torch.inputs import example_inputs
from archc.errors import ArchError

from backend_harness import spec_graph
from test_ops import CASES

NEW = ("arange", "attention_gqa", "cast", "conv_transpose2d", "cos", "exp", "interpolate", "pad", "pow", "repeat",
       "rsqrt", "sin", "sqrt", "std_conv2d")
BY_NAME = {c.name: c for c in CASES}
SIZES = {"B": 3, "T": 7, "H": 6, "W": 5}


@pytest.mark.parametrize("name", NEW)
def test_onnx_runs_the_op_at_other_sizes(name: str) -> None:
    graph = spec_graph(BY_NAME[name].spec)
    torch.manual_seed(0)
    module = build_module(graph).eval()
    data = export_onnx(graph, module)
    result = check(graph, module, data, {k: v for k, v in SIZES.items() if k in graph.axes})
    assert result.ok, result


def _counted(module: Any, inputs: tuple[torch.Tensor, ...]) -> int:
    """FlopCounterMode, with torch's own SDPA formula for the CPU attention kernel (as on a GPU;
    see tests/analysis/test_zoo_counts.py)."""
    import torch.utils.flop_counter as fc

    def sdpa(q, k, v, *args, out_shape=None, **kwargs):  # type: ignore[no-untyped-def]
        return fc.sdpa_flop_count(q, k, v)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa}
    mode = fc.FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), mode:
        module(*inputs)
    return mode.get_total_flops()


@pytest.mark.parametrize("name", ["attention_gqa", "conv_transpose2d", "interpolate", "repeat", "arange", "pow", "std_conv2d"])
def test_summary_flops_are_what_torch_counts(name: str) -> None:
    graph = spec_graph(BY_NAME[name].spec)
    axes = {k: v for k, v in SIZES.items() if k in graph.axes}
    want = _counted(build_module(graph).eval(), example_inputs(graph, axes, seed=0))
    assert summarize(graph, batch=axes.get("B", 1), axes=axes).total.flops == want
    if name in ("attention_gqa", "conv_transpose2d", "std_conv2d"):
        assert want > 0


def _error(spec: str) -> ArchError:
    with pytest.raises(ArchError) as info:
        spec_graph(spec)
    return info.value


def test_rearrange_cannot_repeat_and_says_so() -> None:
    err = _error('axis B, T\nmodel M (x: [B, 2, T, 4]) -> [B, 6, T, 4] { return rearrange(x, "b h t d -> b (h r) t d", r=3) }')
    assert "'r' (given as r=3) is only on the right" in err.message and "does not name" not in err.message
    assert err.hint == 'to repeat along \'r\', use repeat(x, "b h t d -> b (h r) t d", r=3)'
    assert err.span is not None and err.span.line == 2


@pytest.mark.parametrize(("spec", "words"), [
    ('model M (x: [2, 4]) -> [2, 8] { return repeat(x, "b c -> b (c r)") }', "the new axis 'r'"),
    ('model M (x: [2, 4]) -> [4] { return repeat(x, "b c -> c") }', "axis 'b' must appear on both sides"),
    ("axis B, T\nmodel M (q: [B, 4, T, 8], k: [B, 3, T, 8]) -> [B, 4, T, 8] { return attention(q, k, k) }",
     "q has 4 heads and k, v have 3"),
    ("model M (x: [1, 8]) -> [1] { return arange(x, 5, 2) }", "the range 5 to 2"),
    ("axis B, H\nmodel M (x: [B, H]) -> [B, H] { return pad(x, [1, 1], mode=\"reflect\") }", "needs a known size"),
    ("model M (x: [1, 2, 3]) -> [1, 2, 6] { return pad(x, [3, 0], mode=\"reflect\") }", "by at most 2, got 3"),
    ("model M (x: [1, 2, 3, 3]) -> [1, 2, 3, 5] { return pad(x, [1, 1], mode=\"reflect\") }", "is not a case torch has"),
    ("model M (x: [1, 2, 3, 3]) -> [1, 2, 6, 6] { return interpolate(x, 2, size=6) }", "give one of scale"),
    ("model M (x: [1, 2, 3]) -> [1, 2, 6] { return interpolate(x, 2, mode=\"bilinear\") }", "expects [B, C, H, W]"),
    ("model M (x: [1, 4, 3, 3]) -> [1, 2, 6, 6] { return conv_transpose2d(x, 2, 3, 2, output_padding=2) }",
     "output_padding"),
    ("model M (x: i64[4]) -> [4] { return x ** 2 }", "pow"),
    ("model M (x: [4]) -> [4] { return cast(x) }", "a dtype or a tensor `like`"),
    ("model M (x: [4]) -> [4] { return cast(x, x, \"f16\") }", "a dtype or a tensor `like`"),
])
def test_mistakes_are_located_errors(spec: str, words: str) -> None:
    err = _error(spec)
    assert words in err.message, err.message
    assert err.span is not None


def test_conv_transpose2d_is_torchs_module_with_its_init() -> None:
    graph = spec_graph("axis B\nmodel M (x: [B, 16, 5, 5]) -> [B, 32, 10, 10] { return conv_transpose2d(x, 32, 4, 2, 1) }")
    torch.manual_seed(0)
    layer = build_module(graph).conv_transpose2d
    assert type(layer) is torch.nn.ConvTranspose2d
    bound = (32 * 4 * 4) ** -0.5  # torch reads fan-in from the weight's axis 1: out channels x kernel
    assert layer.weight.shape == (16, 32, 4, 4)
    assert layer.weight.abs().max().item() <= bound and layer.weight.abs().max().item() > 0.95 * bound
    assert abs(layer.weight.std().item() - bound / 3 ** 0.5) < 0.05 * bound
