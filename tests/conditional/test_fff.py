"""Fast feedforward ops (#15): `fff` against the authors' package and the equations of the paper,
`fff_neurons` against UltraFastBERT's layer written from its equations; the hard (inference) form
equals the soft form once every decision is saturated; FLOPs as FlopCounterMode counts them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from archc.analysis.summary import node_flops
from archc.backends.fx import build_graph_module
from archc.backends.torch import build_module
from archc.elaborate import elaborate_text

D_IN, D_OUT, DEPTH, LEAF = 12, 10, 3, 5


def _model(op: str = f"fff(x, {D_OUT}, {DEPTH}, {LEAF})", out: int = D_OUT, seed: int = 0):
    g = elaborate_text(f"axis B, T\nmodel M (x: [B, T, {D_IN}]) -> [B, T, {out}] {{ return {op} }}\n", file="m.arch")
    torch.manual_seed(seed)
    return g, build_module(g)


def _package(m: torch.nn.Module):
    from fastfeedforward import FFF

    ref = FFF(D_IN, LEAF, D_OUT, DEPTH)
    with torch.no_grad():
        for name in ("node_weights", "node_biases", "w1s", "b1s", "w2s", "b2s"):
            getattr(ref, name).copy_(getattr(m.fff, name))
    return ref


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(seed))


def test_soft_form_and_entropies_equal_the_package_training_forward() -> None:
    g = elaborate_text(f"axis B, T\nmodel M (x: [B, T, {D_IN}]) -> ([B, T, {D_OUT}], [{2 ** DEPTH - 1}]) {{\n"
                       f"    y, h = fff(x, {D_OUT}, {DEPTH}, {LEAF}, entropy=true)\n    return y, h\n}}\n", file="m.arch")
    torch.manual_seed(0)
    m = build_module(g).train()
    ref = _package(m)
    x = _x()
    want, want_h = ref.training_forward(x, return_entropies=True)
    got, got_h = m(x)
    assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert_close(got_h, want_h, rtol=1e-5, atol=1e-6)


def test_hard_form_is_the_package_eval_forward_plus_the_leaf_bias_it_drops() -> None:
    _, m = _model()
    ref = _package(m).eval()
    x = _x().reshape(-1, D_IN)
    got = m.eval()(x.reshape(3, 7, D_IN)).reshape(-1, D_OUT)
    # the package's eval_forward leaves out b2s (pbelcak/fastfeedforward#4): add it back per input
    leaves = []
    for row in x.detach():  # the paper's descent, one input at a time
        node = 0
        for _ in range(DEPTH):
            node = 2 * node + 1 + int(float(row @ m.fff.node_weights[node].detach() + m.fff.node_biases[node, 0].detach()) >= 0)
        leaves.append(node - (2 ** DEPTH - 1))
    want = ref.eval_forward(x) + m.fff.b2s[leaves]
    assert_close(got, want, rtol=1e-5, atol=1e-6)
    for i, leaf in enumerate(leaves):  # and the leaf's MLP by its equation
        h = F.relu(x[i] @ m.fff.w1s[leaf] + m.fff.b1s[leaf])
        assert_close(got[i], h @ m.fff.w2s[leaf] + m.fff.b2s[leaf], rtol=1e-5, atol=1e-6)


def test_hardened_training_form_matches_the_package_and_the_hard_form() -> None:
    _, m = _model(f"fff(x, {D_OUT}, {DEPTH}, {LEAF}, form=\"hardened\")")
    ref = _package(m)
    x = _x()
    hardened = m.train()(x)
    assert_close(hardened, ref.training_forward(x, use_hard_decisions=True), rtol=1e-5, atol=1e-6)
    _, hard = _model(f"fff(x, {D_OUT}, {DEPTH}, {LEAF}, form=\"hard\")")
    hard.load_state_dict(m.state_dict())
    assert_close(hard(x), hardened, rtol=1e-5, atol=1e-6)


def test_soft_equals_hard_when_every_decision_is_saturated() -> None:
    _, m = _model()
    with torch.no_grad():
        m.fff.node_weights.mul_(1e4)
        m.fff.node_biases.mul_(1e4)
    x = _x()
    assert_close(m.train()(x), m.eval()(x), rtol=1e-4, atol=1e-5)


def _ultrafast(x, w_in, b_in, w_out, depth, trees):
    """UltraFastBERT's training layer from its equations: all neurons, masked to each input's path."""
    n = x.shape[0]
    nodes = 2 ** (depth + 1) - 1
    logits = (x @ w_in.t() + b_in).view(n, trees, nodes)
    mask = torch.zeros_like(logits)
    for i in range(n):
        for t in range(trees):
            k = 0
            mask[i, t, k] = 1
            for _ in range(depth):
                k = 2 * k + 1 + int(float(logits[i, t, k].detach()) >= 0)
                mask[i, t, k] = 1
    return (F.gelu(logits) * mask).flatten(1) @ w_out  # w_out: linear_out.weight transposed


@pytest.mark.parametrize("trees", [1, 3])
def test_fff_neurons_forms_match_ultrafastbert(trees: int) -> None:
    op = f"fff_neurons(x, {D_OUT}, 2, trees={trees}, form=\"hardened\")"
    _, m = _model(op)
    p = m.fff_neurons
    x = _x().reshape(-1, D_IN)
    want = _ultrafast(x, p.w_in, p.b_in, p.w_out, 2, trees)
    assert_close(m.train()(x.reshape(3, 7, D_IN)).reshape(-1, D_OUT), want, rtol=1e-5, atol=1e-6)
    _, hard = _model(op.replace('form="hardened"', 'form="hard"'))
    hard.load_state_dict(m.state_dict())
    assert_close(hard(x.reshape(3, 7, D_IN)).reshape(-1, D_OUT), want, rtol=1e-5, atol=1e-6)
    _, soft = _model(op.replace('form="hardened"', 'form="soft"'))
    soft.load_state_dict(m.state_dict())
    with torch.no_grad():
        for t in (soft.fff_neurons.w_in, soft.fff_neurons.b_in):
            t.mul_(1e4)
        soft.fff_neurons.w_out.div_(1e4)  # gelu(big) = big: the products stay those of the hard form x 1
    saturated = soft.train()(x.reshape(3, 7, D_IN)).reshape(-1, D_OUT)
    with torch.no_grad():
        hard.fff_neurons.w_in.mul_(1e4)
        hard.fff_neurons.b_in.mul_(1e4)
        hard.fff_neurons.w_out.div_(1e4)
    assert_close(saturated, hard(x.reshape(3, 7, D_IN)).reshape(-1, D_OUT), rtol=1e-4, atol=1e-4)


def test_soft_form_trains_and_fx_computes_the_same() -> None:
    g, m = _model()
    flat = build_graph_module(g)
    flat.load_state_dict(m.state_dict())
    x = _x()
    for mode in (True, False):
        m.train(mode)
        flat.train(mode)
        assert torch.equal(m(x), flat(x))
    m.train()
    m(x).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize("op", [f"fff(x, {D_OUT}, {DEPTH}, {LEAF})", f"fff_neurons(x, {D_OUT}, 2, trees=2)"])
def test_flops_are_the_hard_form_as_flop_counter_counts_them(op: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode  # imports triton: not at collection

    g, m = _model(op)
    m.eval()
    with FlopCounterMode(display=False) as counter:
        m(_x())
    node = next(n for n in g.nodes if n.op.startswith("fff"))
    assert node_flops(g, node, {"B": 3, "T": 7}) == counter.get_total_flops()


def test_the_grouped_leaf_path_equals_the_gathered_one() -> None:
    g = elaborate_text("axis B\nmodel M (x: [B, 16]) -> [B, 8] { return fff(x, 8, 3, 4) }\n", file="m.arch")
    torch.manual_seed(0)
    m = build_module(g).eval()  # widths of 16, 4 and 8 floats: rows aligned to 16 bytes, as _grouped_mm needs
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(5))  # more inputs than leaves
    gathered = m(x)  # parameters need gradients: the gathered path
    with torch.no_grad():
        grouped = m(x)  # inference: one grouped matmul per layer over inputs sorted by leaf
    assert_close(grouped, gathered, rtol=1e-5, atol=1e-6)
