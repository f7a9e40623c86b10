"""fuse_pool_mixer (#17): PoolFormer's norm, pooling minus input, LayerScale and residual as one
op. The pass fuses exactly the chains it may, keeps the state_dict's keys, and the fused op's
lowering (backends/torch/fused.py) computes what the chain computes: the function on its own
(layouts, groups, kernels, scale shapes, no affine, bf16, autograd) and PoolFormer -O2 against
-O0, in the module, the fx GraphModule, the emitted file and under torch.compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from archc.api import build
from archc.backends.torch import emit_python
from archc.backends.torch.fused import pool_mixer_residual
from archc.backends.torch.inputs import example_inputs
from archc.elaborate import elaborate_file
from archc.passes.manager import LEVELS, PASSES, run_pipeline
from archc.resources import specs_root

from passes_harness import spec

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _randomized(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every weight drawn at random, norms' gains and LayerScale's included (at init 1e-5 a
    wrong mixer branch would hide under the residual)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * (0.3 if v.dim() > 1 else 1.0) + (1.0 if k.endswith("norm1.weight")
                                                                                    else 0.0)
            for k, v in module.state_dict().items()}


def _chain(x: torch.Tensor, s: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, groups: int,
           k: list[int], p: list[int]) -> torch.Tensor:
    n = F.group_norm(x, groups, w, b, 1e-5)
    return x + (F.avg_pool2d(n, k, 1, p, count_include_pad=False) - n) * s


def test_the_pass_fuses_exactly_the_chains_it_may_and_keeps_the_keys() -> None:
    graph = spec("poolmixer")
    fused = PASSES["fuse_pool_mixer"](graph).graph
    made = {n.scope: n for n in fused.nodes if n.op == "pool_mixer_residual"}
    assert sorted(made) == ["a.norm", "b.norm"]  # c counts the padding, d's norm is read again, f's scale varies
    assert made["a.norm"].params == {"weight": "a.norm.weight", "bias": "a.norm.bias"}
    assert [n.op for n in fused.nodes].count("groupnorm") == 3
    plain, fast = build(graph).eval(), build(fused).eval()
    assert list(fast.state_dict()) == list(plain.state_dict())
    sd = _randomized(plain, 0)
    plain.load_state_dict(sd)
    fast.load_state_dict(sd)
    x = example_inputs(graph, {"B": 3}, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(fast(*x), plain(*x), **TOL)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_the_lowering_equals_the_chain(groups: int, layout: str) -> None:
    g = torch.Generator().manual_seed(groups)
    x = torch.randn(3, 8, 9, 7, generator=g) * 2 + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(8, generator=g), torch.randn(8, generator=g)
    cases = [(torch.randn(8, 1, 1, generator=g), w, b, [3, 3], [1, 1]),
             (torch.randn(1, 8, 1, 1, generator=g), w, b, [5, 3], [2, 1]),
             (torch.tensor(0.7), None, None, [3, 3], [1, 1])]
    with torch.inference_mode():
        for s, ww, bb, k, p in cases:
            want = _chain(x, s, ww, bb, groups, k, p)
            got = pool_mixer_residual(x, s, ww, bb, groups, 1e-5, k, p)
            torch.testing.assert_close(got, want, **TOL)
    xb, sb = x.bfloat16(), cases[0][0].bfloat16()
    with torch.inference_mode():  # bf16 rounds differently in each: its own tolerance (2^-8 relative)
        got = pool_mixer_residual(xb, sb, w.bfloat16(), b.bfloat16(), groups, 1e-5, [3, 3], [1, 1])
        want = _chain(xb.float(), sb.float(), w, b, groups, [3, 3], [1, 1])
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


def test_autograd_takes_the_chain() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 5, 5, generator=g, requires_grad=True)
    s, w, b = torch.randn(4, 1, 1, generator=g), torch.randn(4, generator=g), torch.randn(4, generator=g)
    y = pool_mixer_residual(x, s, w, b, 1, 1e-5, [3, 3], [1, 1])
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    (want,) = torch.autograd.grad(_chain(x, s, w, b, 1, [3, 3], [1, 1]).square().sum(), x)
    torch.testing.assert_close(grad, want, **TOL)


SMALL = {"img_size": 64, "num_classes": 10, "depths": (1, 2, 1, 1), "dims": (16, 32, 64, 128)}


@pytest.fixture(scope="module")
def poolformer() -> tuple:
    graph = elaborate_file(specs_root() / "models" / "poolformer_s12.arch", overrides=SMALL)
    without = run_pipeline(graph, [n for n in LEVELS[2] if n != "fuse_pool_mixer"])
    pipeline = run_pipeline(graph, LEVELS[2])
    eager = build(graph).eval()
    eager.load_state_dict(_randomized(eager, 2))
    fast = build(pipeline.graph).eval()
    fast.load_state_dict(pipeline.weights(eager.state_dict()))
    return graph, pipeline, without, eager, fast


def test_poolformer_O2_fuses_every_block_and_keeps_the_keys(poolformer: tuple) -> None:
    graph, pipeline, without, _, fast = poolformer
    assert sum(n.op == "pool_mixer_residual" for n in pipeline.graph.nodes) == sum(SMALL["depths"])
    assert list(pipeline.graph.params) == list(without.graph.params)
    assert list(fast.state_dict()) == list(build(without.graph).state_dict())
    assert "pool_mixer_residual(" in emit_python(pipeline.graph)


def test_poolformer_O2_equals_O0_every_way(poolformer: tuple, tmp_path: Path) -> None:
    graph, pipeline, _, eager, fast = poolformer
    x = example_inputs(graph, {"B": 2}, seed=3)
    gm = build(pipeline.graph, "fx")
    gm.load_state_dict(fast.state_dict())
    with torch.inference_mode():
        want = eager(*x)
        assert float(want.std()) > 1e-3  # the weights make a difference
        for how, model in (("module", fast), ("fx", gm.eval())):
            torch.testing.assert_close(model(*x), want, **TOL, msg=lambda m, how=how: f"{how}: {m}")
    with torch.no_grad():
        compiled = torch.compile(fast, backend="aot_eager")  # the plain chain under a compiler
        torch.testing.assert_close(compiled(*x), want, **TOL)


def test_poolformer_O2_exports_to_onnx(poolformer: tuple) -> None:
    """The ONNX exporter traces the module: the fused op and the oneDNN calls record torch's own
    ops (they took the fast paths under the tracer and failed before), and onnxruntime computes
    what the -O2 module computes."""
    pytest.importorskip("onnxruntime")
    from archc.backends.onnx import export_onnx, max_diff

    _, pipeline, _, _, fast = poolformer
    data = export_onnx(pipeline.graph, fast)
    assert max_diff(pipeline.graph, fast, data) < 1e-4
