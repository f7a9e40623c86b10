"""-O2 on CPU (#17), the build-time decisions: every linear runs MKL's packed GEMM (the activation
after it, in place), and merge_parallel leaves convolutions apart where the split of a merged
output would cost copies or a post-op. Each rewrite computes what eager computes (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch
from archc.backends.torch import emit_python, onednn

from archc.api import build
from archc.elaborate import elaborate_text
from archc.passes.manager import LEVELS, PASSES, run_pipeline

TOL = {"rtol": 1e-5, "atol": 1e-5}
ACTS = {"gelu": lambda v: torch.nn.functional.gelu(v), "relu": torch.relu, "swish": torch.nn.functional.silu,
        "tanh": torch.tanh, "sigmoid": torch.sigmoid, "": lambda v: v}


@pytest.mark.parametrize("act", sorted(ACTS))
def test_linear_act_is_the_linear_and_its_activation_for_any_rows(act: str) -> None:
    g = torch.Generator().manual_seed(5)
    linear = torch.nn.Linear(24, 40).eval()
    with torch.no_grad():
        linear.bias.copy_(torch.randn(40, generator=g))
    with torch.inference_mode():
        # packed for 40 rows, then 48 (packed again), 40 again, and 3 (fewer than _MIN_ROWS: torch's own)
        for shape in ((40, 24), (2, 24, 24), (40, 24), (3, 24)):
            x = torch.randn(shape, generator=g)
            torch.testing.assert_close(onednn.linear_act(linear, x, act), ACTS[act](linear(x)), **TOL)
        assert len(onednn._PACKED[id(linear.weight)]) == 2  # the two shapes of at least _MIN_ROWS rows
        x = torch.randn(9, 48, generator=g)[:, ::2]  # not contiguous: torch's own linear
        torch.testing.assert_close(onednn.linear_act(linear, x, act), ACTS[act](linear(x)), **TOL)
    x = torch.randn(3, 24, generator=g, requires_grad=True)  # autograd: the plain layers, gradients flow
    y = onednn.linear_act(linear, x, act)
    torch.testing.assert_close(y, ACTS[act](linear(x)), **TOL)
    y.sum().backward()
    assert x.grad is not None


MLP = """
axis B, T
model M (x: [B, T, 16]) -> [B, T, 16] {
    h = gelu(linear(x, 64))
    return linear(h, 16) + x
}
"""


def test_every_linear_of_an_O2_module_is_packed_and_the_state_dict_is_the_plain_one() -> None:
    graph = elaborate_text(MLP, "mlp.arch")
    pipeline = run_pipeline(graph, LEVELS[2])
    text = emit_python(pipeline.graph)
    assert text.count("linear_act(") >= 3 and "'gelu', 'none')" in text  # the definition and both calls
    torch.manual_seed(0)
    plain = build(graph).eval()
    fast = build(pipeline.graph).eval()
    fast.load_state_dict(pipeline.weights(plain.state_dict()))
    x = torch.randn(2, 20, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), **TOL)
        torch.testing.assert_close(fast(x[:, :17]), plain(x[:, :17]), **TOL)  # another number of rows
    cache = vars(__import__(type(fast).__module__, fromlist=["_PACKED"]))["_PACKED"]
    linears = [m for m in fast.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 and all(id(m.weight) in cache for m in linears)
    assert sorted(fast.state_dict()) == sorted(plain.state_dict())  # no packed buffers
    compiled = torch.compile(fast, backend="aot_eager")  # the plain path under a compiler
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), **TOL)


BOTTLENECK = """
axis B
model M (x: [B, 8, 12, 12]) -> [B, 32, 12, 12] {
    h = relu(conv2d(x, 8, 1))
    h = relu(conv2d(h, 8, 3, padding=1))
    return relu(conv2d(h, 32, 1) + conv2d(x, 32, 1))
}
"""

SIBLINGS = """
axis B
model M (x: [B, 8, 12, 12]) -> [B, 16, 12, 12] {
    return conv2d(x, 16, 1) * conv2d(x, 16, 1)
}
"""


def _ops(text: str) -> list[str]:
    return [n.op for n in PASSES["merge_parallel"](elaborate_text(text, "m.arch")).graph.nodes]


def test_merge_parallel_keeps_apart_convolutions_whose_split_costs_copies() -> None:
    # ResNet's downsample beside the first 1x1: the 1x1's part would feed a convolution through a
    # ReLU that is no longer its post-op, the downsample's part a residual add: not merged
    assert _ops(BOTTLENECK).count("conv2d") == 4 and "split" not in _ops(BOTTLENECK)
    # parts read only by an elementwise op: merged, as before
    assert _ops(SIBLINGS).count("conv2d") == 1 and "split" in _ops(SIBLINGS)


@pytest.mark.parametrize("text", [BOTTLENECK, SIBLINGS])
def test_O2_of_merged_or_unmerged_convolutions_equals_eager(text: str) -> None:
    graph = elaborate_text(text, "m.arch")
    pipeline = run_pipeline(graph, LEVELS[2])
    torch.manual_seed(0)
    plain = build(graph).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, t in plain.state_dict().items():
            if name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g))
    fast = build(pipeline.graph).eval()
    fast.load_state_dict(pipeline.weights(plain.state_dict()))
    with torch.inference_mode():
        for batch in (2, 1):
            x = torch.randn(batch, 8, 12, 12, generator=g)
            torch.testing.assert_close(fast(x), plain(x), **TOL)


def test_the_helper_files_a_generated_file_carries_define_no_name_twice() -> None:
    """onednn.py, conditional.py and masks.py are copied into one file: a name two of them define
    would silently replace the other's (Mixtral at -O2 lost conditional.py's ACTIVATIONS)."""
    import ast
    from pathlib import Path

    import archc.backends.torch.emit as emit

    folder = Path(emit.__file__).parent
    seen: dict[str, str] = {}
    for name in ["onednn.py", *emit.HELPERS]:
        for node in ast.parse((folder / name).read_text(encoding="utf-8")).body:
            targets = [node] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
                node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            for t in targets:
                defined = getattr(t, "name", None) or getattr(t, "id", None)
                assert defined is None or seen.setdefault(defined, name) == name, f"{defined}: {seen[defined]} and {name}"


OVERWRITE = """
axis B
model Over(C: int = 8) (x: [B, C, 6, 6]) -> ([B, C, 6, 6], [B, C, 6, 6]) {
    a = conv2d(x, C, 1)
    p = conv2d(groupnorm(a, 1), C, 1) + a    # a: read by the norm first, then taken by the add
    b = conv2d(p, C, 1)
    q = conv2d(groupnorm(b, 1), C, 1) + b    # b is read again after the group
    c = conv2d(q, C, 1)
    r = conv2d(c, C, 1) + c                  # the convolution reads c: the add may not write into it
    v = conv2d(r, C, 3, padding=1)
    w = conv2d(rearrange(v, "b c h w -> b c w h"), C, 1) + v    # a view of v was read first
    return w, b * 2.0
}
"""


def test_the_add_writes_into_a_tensor_whose_other_readers_ran_before_it() -> None:
    """PoolFormer's MLP residual: the tensor the add takes was read by the norm before the MLP and
    nothing reads it after, so the sum post-op writes into it (as freezing does); never where a
    later op, the group's own convolution or a view reads it."""
    graph = elaborate_text(OVERWRITE, "over.arch")
    pipeline = run_pipeline(graph, LEVELS[2])
    text = emit_python(pipeline.graph)
    calls = [line.strip() for line in text.splitlines() if "= conv_add_act(" in line]
    assert len(calls) == 4 and ["overwrite=True" in c for c in calls] == [True, False, False, False], calls
    torch.manual_seed(0)
    plain = build(graph).eval()
    g = torch.Generator().manual_seed(4)
    plain.load_state_dict({k: torch.randn(v.shape, generator=g) * 0.3 for k, v in plain.state_dict().items()})
    fast = build(pipeline.graph).eval()
    fast.load_state_dict(pipeline.weights(plain.state_dict()))
    x = torch.randn(2, 8, 6, 6, generator=g)
    with torch.inference_mode():
        for got, want in zip(fast(x), plain(x)):
            torch.testing.assert_close(got, want, **TOL)
