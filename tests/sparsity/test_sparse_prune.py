"""Pruning, iterative magnitude pruning with rewinding, deploy and lowering of sparse weights (#16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from archc import sparsity
from archc.backends.torch import build_module
from archc.deploy import deploy
from archc.elaborate import elaborate_text
from archc.ir import sparsity as S

SPEC = """axis B, D
model M (x: [B, 32]) -> [B, 32] {
    @sparse(0.8) y = linear(x, 32)
    @sparse("2:4") z = y >> relu >> linear(32)
    return z
}
"""


def _graph(text: str = SPEC):
    return elaborate_text(text, file="m.arch")


def _train(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x, target = torch.randn(16, 32, generator=gen), torch.randn(16, 32, generator=gen)

    def train(model: torch.nn.Module) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(5):
            opt.zero_grad()
            F.mse_loss(model(x), target).backward()
            opt.step()
    return train


def test_prune_makes_masks_from_the_current_weights() -> None:
    g = _graph()
    torch.manual_seed(0)
    m = build_module(g)
    with torch.no_grad():
        m.linear.weight.copy_(torch.arange(32 * 32, dtype=torch.float32).reshape(32, 32))
    sparsity.prune(m, g)
    kept = m.linear.weight_mask
    assert int(kept.sum()) == round(0.2 * 1024) and kept.flatten()[-205:].all()  # the largest 205
    sparsity.check(m, g)


def test_lottery_prunes_a_fraction_of_the_remaining_weights_each_round_and_rewinds() -> None:
    g = _graph()
    torch.manual_seed(0)
    m = build_module(g)
    rewind = {k: v.clone() for k, v in m.state_dict().items()}
    seen: list[dict[str, torch.Tensor]] = []
    train = _train(1)

    def record_then_train(model: torch.nn.Module) -> None:
        seen.append({k: v.clone() for k, v in model.state_dict().items() if k.endswith("_mask")})
        train(model)

    rounds = sparsity.lottery(m, g, record_then_train, fraction=0.5, rewind=rewind)
    # unstructured 80% zeros at half the remaining per round: 1 -> .5 -> .25 -> .2 (clipped at the pattern)
    assert [round(r.density["linear.weight"], 3) for r in rounds] == [0.5, 0.25, 0.2]
    assert [r.density["linear_1.weight"] for r in rounds] == [0.5, 0.5, 0.5]  # N:M: its pattern at once
    assert all(v.all() for v in seen[0].values())  # the first round trains dense
    for before, after in zip(seen, seen[1:]):  # each round's mask is inside the previous one
        assert all(not (after[k] & ~before[k]).any() for k in before)
    final = m.state_dict()
    for k, v in rewind.items():  # the survivors are rewound; the masks are the new ones
        if not k.endswith("_mask"):
            assert torch.equal(final[k], v)
    sparsity.check(m, g)


def test_lottery_refuses_a_bad_fraction() -> None:
    g = _graph()
    with pytest.raises(ValueError, match="fraction"):
        sparsity.lottery(build_module(g), g, lambda m: None, fraction=1.5)


def test_deploy_masks_weights_that_do_not_hold_their_pattern_and_writes_them_masked() -> None:
    g = _graph()
    torch.manual_seed(0)
    dense = {k: v for k, v in build_module(g).state_dict().items() if not k.endswith("_mask")}
    dense = {k: torch.randn_like(v) for k, v in dense.items()}  # trained elsewhere, no masks
    out = deploy(g, dense)
    sd = out.state_dict
    for w in sparsity.sparse_weights(out.graph):
        mask = sd[w.mask]
        assert sparsity.satisfies(w.pattern, mask)
        assert not sd[w.weight][~mask].any()  # the zeros are in the weight
        assert torch.equal(mask, sparsity.mask_of(w.pattern, dense[w.weight]))  # by magnitude
    assert any(a.name == "sparse" for n in out.graph.nodes for a in n.annotations)  # the spec keeps them
    # a given mask that holds its pattern is kept as it is
    given = sparsity.complete(g, dense)
    given["linear.weight_mask"] = sparsity.mask_of(S.Sparsity(kind="unstructured", density=0.2),
                                                   torch.randn(32, 32))
    again = deploy(g, given).state_dict
    assert torch.equal(again["linear.weight_mask"], given["linear.weight_mask"])


def test_cpu_lowering_uses_a_sparse_kernel_only_where_it_measures_faster() -> None:
    text = """axis B
model M (x: [B, 64]) -> [B, 64] {
    @sparse(0.9) y = linear(x, 64)
    @sparse(block=[16, 16], density=0.25) z = linear(y, 64)
    @sparse("2:4") w = linear(z, 64)
    return w
}
"""
    g = _graph(text)
    torch.manual_seed(0)
    x = torch.randn(8, 64)
    for sparse_wins in (True, False):
        m = build_module(g).eval()
        want = m(x)
        calls = iter(range(100))

        def timer(fn, reps):  # dense first, then sparse, for each weight: the sparse one "faster" or not
            fn()
            return 1.0 if next(calls) % 2 == 0 else (0.5 if sparse_wins else 2.0)

        done = {d.weight: d for d in sparsity.lower(m, g, timer=timer)}
        assert done["linear_2.weight"].kind == "dense" and "N:M" in done["linear_2.weight"].reason
        if sparse_wins:
            assert (done["linear.weight"].kind, done["linear_1.weight"].kind) == ("csr", "bsr")
            assert m.linear.weight.layout == torch.sparse_csr and m.linear_1.weight.layout == torch.sparse_bsr
        else:
            assert {done["linear.weight"].kind, done["linear_1.weight"].kind} == {"dense"}
            assert "slower" in done["linear.weight"].reason
        with torch.no_grad():
            assert_close(m(x), want, rtol=1e-5, atol=1e-5)


def _big_2_4(dtype: torch.dtype):
    g = _graph("""axis B
model M (x: [B, 1024]) -> [B, 1024] {
    @sparse("2:4") y = linear(x, 1024)
    return y
}
""")
    torch.manual_seed(0)
    return g, build_module(g).to(dtype).eval()


def test_a_2_4_weight_is_packed_only_after_its_pattern_is_verified() -> None:
    g, m = _big_2_4(torch.bfloat16)
    packed: list[torch.Tensor] = []

    def packer(w: torch.Tensor) -> torch.Tensor:
        packed.append(w.clone())
        return w
    with torch.no_grad():  # random masks that break 2:4 in some groups
        gen = torch.Generator().manual_seed(3)
        for _ in range(5):
            m.linear.weight_mask.copy_(torch.rand(1024, 1024, generator=gen) < 0.6)
            done = sparsity.lower(m, g, packer=packer, capability=(9, 0))
            assert done[0].kind == "dense" and "does not hold 2:4" in done[0].reason
    assert packed == []
    sparsity.prune(m, g)
    x = torch.randn(4, 1024, dtype=torch.bfloat16)
    want = m(x)
    done = sparsity.lower(m, g, packer=packer, capability=(9, 0))
    assert done[0].kind == "2:4" and len(packed) == 1
    assert (packed[0].reshape(-1, 4) != 0).sum(dim=1).max() <= 2
    assert_close(m(x), want, rtol=1e-2, atol=1e-2)  # bf16


@pytest.mark.parametrize("sparse_ms, kind", [(0.5, "2:4"), (2.0, "dense")])
def test_a_packed_2_4_weight_is_kept_only_where_it_measures_faster(sparse_ms: float, kind: str) -> None:
    """On an H200, torch's 2:4 linear was slower than dense in bf16 (docs/benchmarks.md): a packed
    weight must race dense at the given rows, with each timed call waiting for the device."""
    g, m = _big_2_4(torch.bfloat16)
    sparsity.prune(m, g)
    packed_ids: list[int] = []

    def packer(w: torch.Tensor) -> torch.Tensor:
        packed = w.clone()
        packed_ids.append(id(packed))
        return packed

    calls: list[float] = []

    def timer(fn, reps):  # type: ignore[no-untyped-def]
        fn()  # runs the real linear once; the first call is dense, the second the packed weight
        calls.append(1.0 if not calls else sparse_ms)
        return calls[-1]
    x = torch.randn(3, 1024, dtype=torch.bfloat16)
    want = m(x)
    done = sparsity.lower(m, g, rows=256, timer=timer, packer=packer, capability=(9, 0), measure=True)
    assert [d.kind for d in done] == [kind] and len(calls) == 2
    assert (done[0].dense_ms, done[0].sparse_ms) == (1.0, sparse_ms) and "at 256 rows" in done[0].reason
    assert (type(m.linear).__name__ == "PackedLinear") == (kind == "2:4")
    assert_close(m(x), want, rtol=1e-2, atol=1e-2)


def test_packing_is_refused_where_the_gpu_cannot_or_should_not() -> None:
    g, m = _big_2_4(torch.float32)
    assert "f32" in sparsity.lower(m, g, packer=lambda w: w, capability=(9, 0))[0].reason
    g, m = _big_2_4(torch.float16)
    assert "compute capability 7.5" in sparsity.lower(m, g, packer=lambda w: w, capability=(7, 5))[0].reason


def test_archc_deploy_writes_masked_weights_and_keeps_the_annotations(tmp_path, capsys) -> None:
    from archc.cli import main

    spec = tmp_path / "m.arch"
    spec.write_text(SPEC)
    g = _graph()
    torch.manual_seed(0)
    weights = {k: v for k, v in build_module(g).state_dict().items() if not k.endswith("_mask")}
    torch.save(weights, tmp_path / "w.pt")  # dense weights, no masks: deploy makes them by magnitude
    assert main(["deploy", str(spec), "--weights", str(tmp_path / "w.pt"), "-o", str(tmp_path / "out")]) == 0
    sd = torch.load(tmp_path / "out" / "deployed.pt", weights_only=True)
    assert int(sd["linear.weight"].count_nonzero()) == round(0.2 * 1024)
    assert (sd["linear_1.weight"].reshape(-1, 4).count_nonzero(dim=1) <= 2).all()
    text = (tmp_path / "out" / "m.deploy.arch").read_text()
    assert '@sparse("2:4")' in text and "@sparse(0.8" in text
    again = elaborate_text(text, file="m.deploy.arch")  # the deployed spec compiles and loads its weights
    model = build_module(again)
    model.load_state_dict(sd)
    sparsity.check(model, again)
