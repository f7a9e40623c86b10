"""`archc.sparsity.lower` replaces a sparse linear by `PackedLinear` (backends/torch/packed.py), a
module-level class that holds the sparse or packed weight and the bias as registered buffers: the
lowered model pickles and deep-copies with the same outputs, `.to(dtype)` moves its weights, and
its state_dict names them as nn.Linear does."""

from __future__ import annotations

import copy
import itertools
import pickle
import warnings

import torch
from torch.testing import assert_close

from archc import sparsity
from archc.backends.torch import build_module
from archc.backends.torch.packed import PackedLinear
from archc.elaborate import elaborate_text

SPEC = """axis B
model M (x: [B, 64]) -> [B, 64] {
    @sparse(0.9) y = linear(x, 64)
    @sparse(block=[16, 16], density=0.25) z = linear(y, 64, bias=false)
    return relu(z)
}
"""


def _lowered():  # type: ignore[no-untyped-def]
    graph = elaborate_text(SPEC, file="m.arch")
    torch.manual_seed(0)
    model = build_module(graph).eval()
    sparsity.prune(model, graph)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
    calls = itertools.count()

    def sparse_wins(fn, reps):  # type: ignore[no-untyped-def]  # dense first, then sparse: sparse "faster"
        fn()
        return 1.0 if next(calls) % 2 == 0 else 0.5

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta state"
        done = sparsity.lower(model, graph, timer=sparse_wins)
    assert [d.kind for d in done] == ["csr", "bsr"]
    return model, x, want


def test_lowered_linears_hold_their_weights_as_buffers() -> None:
    model, x, want = _lowered()
    assert isinstance(model.linear, PackedLinear) and isinstance(model.linear_1, PackedLinear)
    assert model.linear.weight.layout == torch.sparse_csr and model.linear_1.weight.layout == torch.sparse_bsr
    assert dict(model.named_buffers()).keys() == {"linear.weight", "linear.bias", "linear_1.weight"}
    assert set(model.state_dict()) == {"linear.weight", "linear.bias", "linear_1.weight"}
    assert model.linear_1.bias is None and (model.linear.in_features, model.linear.out_features) == (64, 64)
    with torch.no_grad():
        assert_close(model(x), want, rtol=1e-5, atol=1e-5)


def test_pickle_and_deepcopy_keep_the_outputs() -> None:
    model, x, want = _lowered()
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert isinstance(other.linear, PackedLinear) and other.linear.weight.layout == torch.sparse_csr
        assert other.linear.weight is not model.linear.weight
        with torch.no_grad():
            assert_close(other(x), want, rtol=1e-5, atol=1e-5)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.linear.bias.add_(1.0)  # a copy, not a view of the original's tensors
        assert_close(model(x), want, rtol=1e-5, atol=1e-5)


def test_to_moves_the_packed_weights() -> None:
    model, x, want = _lowered()
    double = model.to(torch.float64)
    assert double.linear.weight.dtype == torch.float64 and double.linear.weight.layout == torch.sparse_csr
    assert double.linear.bias.dtype == torch.float64 and double.linear_1.weight.dtype == torch.float64
    with torch.no_grad():
        assert_close(double(x.double()), want.double(), rtol=1e-5, atol=1e-5)
