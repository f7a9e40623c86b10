"""The summary's numbers against the built torch module, for every zoo spec.

Parameters (and buffers) must equal the module's exactly; FLOPs must be within 1% of
`torch.utils.flop_counter.FlopCounterMode` running the module at batch 1. FlopCounterMode has no
formula for the CPU attention kernel (`aten._scaled_dot_product_flash_attention_for_cpu`), so it
counts CPU attention as 0 FLOPs; the test gives that kernel torch's own SDPA formula
(`sdpa_flop_count`, the one it uses for the CUDA kernels), which is what it counts on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from archc.analysis.summary import axis_values, summarize
from archc.elaborate import elaborate_file

MODELS = Path(__file__).resolve().parents[2] / "specs" / "models"
ZOO = ("resnet18", "resnet50", "vit_small_patch16_224", "convnext_tiny", "poolformer_s12", "repvgg_a0", "gpt2",
       "llama")
SEQ = 128  # T for the language models: the count scales with it, the check does not need 1024


def test_the_zoo_is_there() -> None:
    present = [name for name in ZOO if (MODELS / f"{name}.arch").is_file()]
    assert present, f"none of the zoo specs {', '.join(ZOO)} is in {MODELS}"


def _counted(module, inputs):  # type: ignore[no-untyped-def]
    import torch
    import torch.utils.flop_counter as fc

    def sdpa(q, k, v, *args, out_shape=None, **kwargs):  # type: ignore[no-untyped-def]
        return fc.sdpa_flop_count(q, k, v)

    mapping = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = sdpa
    mode = fc.FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), mode:
        module(*inputs)
    return mode.get_total_flops()


@pytest.mark.slow  # builds every zoo model
@pytest.mark.parametrize("name", ZOO)
def test_params_and_flops_match_torch(name: str) -> None:
    path = MODELS / f"{name}.arch"
    if not path.is_file():
        pytest.skip(f"{path.name} is not written yet")
    api = pytest.importorskip("archc.api")
    inputs_mod = pytest.importorskip("archc.backends.torch.inputs")
    graph = elaborate_file(path)
    env = axis_values(graph, 1, {"T": SEQ} if "T" in graph.axes else {})
    summary = summarize(graph, batch=1, axes=env)
    module = api.build(graph).eval()
    assert summary.total.params == sum(p.numel() for p in module.parameters())
    assert summary.total.buffers == sum(b.numel() for b in module.buffers())
    flops = _counted(module, inputs_mod.example_inputs(graph, env))
    assert flops > 0
    assert abs(summary.total.flops - flops) <= 0.01 * flops, (summary.total.flops, flops)
