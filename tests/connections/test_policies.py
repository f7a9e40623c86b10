"""Connection policies, checked numerically against independent references.

The reference spec has one residual per layer with branch f_i(x) = tanh(x W_i^T + b_i), so each
policy's formula (shared/reference/connections-reparam.md §1) can be written out in plain torch
here and compared with the module archc builds. Weights are randomized first, so parameters that
start at zero or one matter.
"""

from __future__ import annotations

import math

import pytest
import torch

from archc.api import build
from archc.cli import parse_value
from archc.elaborate import elaborate_text
from archc.errors import ArchError

SPEC = """
axis B, T, D
block Layer (x: [B, T, D]) -> [B, T, D] {
    fc = linear(D)
    return residual(x, fc >> tanh)
}
model M(depth: int = 3, connect: connection = residual) (x: [B, T, 8]) -> [B, T, 8] {
    h = stack(depth, connect = connect) { Layer() }
    return h(x)
}
"""
DEPTH, D = 3, 8


def module(connect: str, randomize: bool = True, spec: str = SPEC) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(elaborate_text(spec, "conn.arch", overrides={"connect": parse_value(connect)}))
    if randomize:
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn_like(p) * 0.5)
    return m.eval()


def branch(sd: dict[str, torch.Tensor], i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ sd[f"h.{i}.fc.weight"].T + sd[f"h.{i}.fc.bias"])


X = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(1))


def check(m: torch.nn.Module, expected: torch.Tensor) -> None:
    with torch.no_grad():
        got = m(X)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_residual_is_the_plain_stack() -> None:
    m = module("residual")
    sd, x = m.state_dict(), X
    for i in range(DEPTH):
        x = x + branch(sd, i, x)
    check(m, x)


def test_rezero_scales_the_branch_and_is_the_identity_at_init() -> None:
    m = module("rezero")
    sd, x = m.state_dict(), X
    for i in range(DEPTH):
        x = x + sd[f"h.{i}.resweight"] * branch(sd, i, x)
    check(m, x)
    check(module("rezero", randomize=False), X)  # ReZero: every layer starts as the identity


def test_layerscale_is_exact() -> None:
    m = module("layerscale(init=0.1)")
    sd, x = m.state_dict(), X
    for i in range(DEPTH):
        x = x + sd[f"h.{i}.ls1.gamma"] * branch(sd, i, x)
    check(m, x)
    fresh = module("layerscale(init=0.1)", randomize=False).state_dict()
    assert torch.equal(fresh["h.0.ls1.gamma"], torch.full((D,), 0.1))


def test_post_norm_moves_the_leading_norm_after_the_add() -> None:
    spec = SPEC.replace("fc >> tanh", "ln >> fc >> tanh").replace("    fc = linear(D)", "    fc = linear(D)\n    ln = layernorm()")
    m = module("residual(post=true)", spec=spec)
    sd, x = m.state_dict(), X
    for i in range(DEPTH):
        ln = lambda t: torch.nn.functional.layer_norm(t, (D,), sd[f"h.{i}.ln.weight"], sd[f"h.{i}.ln.bias"])  # noqa: E731
        x = ln(x + branch(sd, i, x))
    check(m, x)


def hyper_reference(sd: dict[str, torch.Tensor], n: int, dynamic: bool) -> torch.Tensor:
    """Hyper-Connections (Zhu et al. 2024, Eq. 2-5 and 10-13), written from the paper's math."""
    h = torch.stack([X] * n)  # [n, B, T, D]: n copies of the input
    for i in range(DEPTH):
        p = f"h.{i}.hc1."
        alpha, beta = sd[p + "static_alpha"], sd[p + "static_beta"]  # [n, 1+n], [n]
        if dynamic:
            normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-12) * sd[p + "norm.weight"]
            alpha = torch.tanh(normed @ sd[p + "dynamic_alpha_fn"]) * sd[p + "dynamic_alpha_scale"] + alpha[:, None, None]
            beta = torch.tanh(normed @ sd[p + "dynamic_beta_fn"]) * sd[p + "dynamic_beta_scale"] + beta[:, None, None]
            mix = torch.einsum("sbtj,sbtd->jbtd", alpha, h)
        else:
            mix = torch.einsum("sj,sbtd->jbtd", alpha, h)
        y = branch(sd, i, mix[0])
        h = (beta[..., None] if dynamic else beta[:, None, None, None]) * y + mix[1:]
    return h.sum(0)


@pytest.mark.parametrize("dynamic", [False, True])
def test_hyper_matches_the_papers_equations(dynamic: bool) -> None:
    m = module(f"hyper(n=3, dynamic={'true' if dynamic else 'false'})")
    check(m, hyper_reference(m.state_dict(), 3, dynamic))


@pytest.mark.parametrize("dynamic", [False, True])
def test_hyper_at_init_reproduces_the_plain_residual_stack(dynamic: bool) -> None:
    plain = module("residual")
    hyper = module(f"hyper(n=4, dynamic={'true' if dynamic else 'false'})", randomize=False)
    hyper.load_state_dict(plain.state_dict(), strict=False)  # same layer weights
    with torch.no_grad():
        # the streams stay equal to the plain residual state; collapsing sums the 4 of them
        assert torch.allclose(hyper(X), 4 * plain(X), atol=1e-5)


def test_hyper_matches_the_hyper_connections_package() -> None:
    """The same weights in lucidrains' `hyper-connections` (HyperConnections, num_fracs=1): its
    RMSNorm is F.normalize * sqrt(D) * (gamma + 1), so gamma = our norm weight - 1."""
    from hyper_connections.hyper_connections import HyperConnections

    n = 4
    m = module(f"hyper(n={n})")
    sd = m.state_dict()
    expand, reduce = HyperConnections.get_expand_reduce_stream_functions(n)
    residual = expand(X)
    for i in range(DEPTH):
        hc = HyperConnections(n, dim=D, layer_index=i)
        p = f"h.{i}.hc1."
        with torch.no_grad():
            for name in ("static_alpha", "static_beta", "dynamic_alpha_fn", "dynamic_alpha_scale",
                         "dynamic_beta_fn", "dynamic_beta_scale"):
                getattr(hc, name).copy_(sd[p + name])
            hc.norm.gamma.copy_(sd[p + "norm.weight"] - 1)
            branch_input, add_residual = hc(residual)
            residual = add_residual(branch(sd, i, branch_input))
    with torch.no_grad():
        check(m, reduce(residual))


def test_frac_matches_the_reference_math_and_starts_as_the_residual() -> None:
    n = 2
    m = module(f"frac(n={n})")
    sd, x = m.state_dict(), X
    for i in range(DEPTH):
        p = f"h.{i}.frac1."
        h = x.reshape(*x.shape[:-1], n, D // n).movedim(-2, 0)  # [n, B, T, D/n]
        inp = torch.einsum("fg,fbtd->gbtd", sd[p + "gamma"], h).movedim(0, -2).reshape(x.shape)
        y = branch(sd, i, inp).reshape(*x.shape[:-1], n, D // n).movedim(-2, 0)
        out = sd[p + "beta"][:, None, None, None] * y + torch.einsum("fg,fbtd->gbtd", sd[p + "a"], h)
        x = out.movedim(0, -2).reshape(x.shape)
    check(m, x)
    plain, frac = module("residual"), module(f"frac(n={n})", randomize=False)
    frac.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.allclose(frac(X), plain(X), atol=1e-6)


def test_laurel_variants() -> None:
    m = module('laurel("rw")')
    sd, x = m.state_dict(), X
    for i in range(DEPTH):
        a, b = 2 * torch.softmax(sd[f"h.{i}.laurel1.w"], 0)
        x = a * branch(sd, i, x) + b * x
    check(m, x)

    m = module('laurel("lr", rank=3)')
    sd, x = m.state_dict(), X
    for i in range(DEPTH):
        p = f"h.{i}.laurel1."
        x = x + branch(sd, i, x) + (x @ sd[p + "a"]) @ sd[p + "b"]
    check(m, x)
    assert torch.count_nonzero(module('laurel("lr", rank=3)', randomize=False).state_dict()["h.0.laurel1.b"]) == 0

    m = module('laurel("pa", window=2)')
    sd, x, past = m.state_dict(), X, []
    for i in range(DEPTH):
        out = x + branch(sd, i, x)
        for j, t in enumerate(reversed(past[-2:])):
            out = out + sd[f"h.{i}.laurel1.gamma"][j] * t
        past.append(x)
        x = out
    check(m, x)


@pytest.mark.parametrize("period,dilation", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_dwa_follows_the_denseformer_rule(period: int, dilation: int) -> None:
    spec = SPEC.replace("return residual(x, fc >> tanh)", "return x + tanh(fc(x))")
    m = module(f"dwa(period={period}, dilation={dilation})", spec=spec)
    sd = m.state_dict()
    outs, y = [X], X
    for i in range(1, DEPTH + 1):
        outs.append(y + branch(sd, i - 1, y))
        if i % period == 0:
            chosen = [outs[j] for j in range(i + 1) if j % dilation == i % dilation]
            y = sum(a * t for a, t in zip(sd[f"h.dwa.{i - 1}"], chosen))
        else:
            y = outs[-1]
    check(m, y)
    plain = module("residual", spec=spec, randomize=True)
    fresh = module(f"dwa(period={period}, dilation={dilation})", spec=spec, randomize=False)
    fresh.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():  # one-hot on the current output: the plain stack at init
        assert torch.allclose(fresh(X), plain(X), atol=1e-6)


def test_dense_concatenates_every_layer_output() -> None:
    spec = """
    axis B, C, H, W
    block Layer(growth: int) (x: [B, C, H, W]) -> [B, growth, H, W] {
        return x >> batchnorm >> relu >> conv2d(growth, 3, padding=1)
    }
    model M(connect: connection = dense(4)) (x: [B, 3, 8, 8]) -> [B, 15, 8, 8] {
        return x >> stack(3, connect = connect) { Layer(4) }
    }
    """
    m = module("dense(4)", spec=spec)
    sd = m.state_dict()
    x = torch.randn(2, 3, 8, 8)
    feats = [x]
    for i in range(3):
        inp = torch.cat(feats, 1)
        p = f"stack.{i}."
        h = torch.nn.functional.batch_norm(inp, sd[p + "batchnorm.running_mean"], sd[p + "batchnorm.running_var"],
                                           sd[p + "batchnorm.weight"], sd[p + "batchnorm.bias"], False)
        feats.append(torch.nn.functional.conv2d(torch.relu(h), sd[p + "conv2d.weight"], sd[p + "conv2d.bias"], padding=1))
    with torch.no_grad():
        assert torch.allclose(m(x), torch.cat(feats, 1), atol=1e-5)


# -- illegal combinations are type errors with a location -----------------------------------------
def error(spec: str, connect: str) -> ArchError:
    with pytest.raises(ArchError) as info:
        elaborate_text(spec, "bad.arch", overrides={"connect": parse_value(connect)})
    assert info.value.span is not None and info.value.span.file in ("bad.arch", "--set")
    return info.value


def test_hyper_streams_cannot_be_used_outside_residual() -> None:
    spec = SPEC.replace("return residual(x, fc >> tanh)", "x = relu(x)\n    return residual(x, fc >> tanh)")
    err = error(spec, "hyper(n=4)")
    assert "holds 4 residual streams" in err.message and err.span.line == 5


def test_dense_needs_a_layer_whose_input_can_grow() -> None:
    spec = """
    axis B, H, W
    block Fixed (x: [B, 3, H, W]) -> [B, 4, H, W] { return conv2d(x, 4, 3, padding=1) }
    model M(connect: connection = dense(4)) (x: [B, 3, 8, 8]) -> [B, 11, 8, 8] {
        return x >> stack(2, connect = connect) { Fixed() }
    }
    """
    err = error(spec, "dense(4)")
    assert "expected [B, 3, H, W], got f32[B, 7, 8, 8]" in err.message
    assert "input axis must be able to grow" in (err.hint or "")


def test_policy_misuse_is_reported_at_the_stack() -> None:
    assert "splits the last axis into 3 fractions" in error(SPEC, "frac(n=3)").message
    assert "does not start with a norm" in error(SPEC, "residual(post=true)").message
    plain_layers = SPEC.replace("return residual(x, fc >> tanh)", "return x + tanh(fc(x))")
    assert "nothing to connect" in error(plain_layers, "rezero").message
    assert "holds 2 residual streams" in error(plain_layers, "hyper(n=2)").message
    assert "has no argument 'm'" in error(SPEC, "hyper(m=2)").message


def test_every_policy_trains_gpt2_and_vit() -> None:
    from archc import resources

    models = {
        "gpt2": ({"vocab": 64, "dim": 32, "depth": 2, "heads": 2, "max_len": 16},
                 lambda: torch.randint(0, 64, (2, 8))),
        "vit_small_patch16_224": ({"img_size": 32, "patch": 8, "D": 32, "depth": 2, "heads": 2, "num_classes": 5},
                                  lambda: torch.randn(2, 3, 32, 32)),
    }
    policies = ["residual", "residual(post=true)", "rezero", "layerscale(1e-5)", "hyper(n=2)",
                "hyper(n=2, dynamic=false)", "frac(n=2)", 'laurel("rw")', 'laurel("lr", rank=4)',
                'laurel("pa")', "dwa(1, dilation=2)", "dwa(period=2)", "mudd"]
    for name, (params, make_input) in models.items():
        path = resources.specs_root() / "models" / f"{name}.arch"
        for policy in policies:
            overrides = {k: parse_value(str(v)) for k, v in params.items()} | {"connect": parse_value(policy)}
            from archc.elaborate import elaborate_file

            m = build(elaborate_file(path, overrides=overrides))
            opt = torch.optim.SGD(m.parameters(), lr=0.01)
            before = {k: v.clone() for k, v in m.state_dict().items()}
            loss = m(make_input()).float().pow(2).mean()
            loss.backward()
            opt.step()
            assert math.isfinite(loss.item()), (name, policy)
            changed = [k for k, v in m.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
            assert changed, (name, policy)


def mudd_reference(sd: dict[str, torch.Tensor], stack: str, layers: list, x0: torch.Tensor, ways: list[int]) -> torch.Tensor:
    """MUDDFormer's dense connections (reference notes §1.7), written out: after each layer the
    latest output gives per-token weights over all outputs so far, one set per way."""
    outs = [x0]

    def mix(i: int, c_ways: int) -> list[torch.Tensor]:
        p = f"{stack}.mudd.{i}."
        last = outs[-1]
        normed = last * torch.rsqrt(last.pow(2).mean(-1, keepdim=True) + 1e-6)
        dw = torch.nn.functional.gelu(normed @ sd[p + "w1"]) @ sd[p + "w2"]
        dw = dw.reshape(*dw.shape[:-1], c_ways, len(outs)) + sd[p + "a"]
        h = torch.stack(outs)
        return [torch.einsum("btl,lbtd->btd", dw[..., c, :], h) for c in range(c_ways)]

    for i, layer in enumerate(layers):
        inputs = [x0] * ways[i] if i == 0 else mix(i, ways[i])
        outs.append(layer(*inputs))
    return mix(len(layers), 1)[0]


def test_mudd_matches_the_reference_and_starts_as_the_plain_stack() -> None:
    spec = SPEC.replace("return residual(x, fc >> tanh)", "return x + tanh(fc(x))")
    m = module("mudd", spec=spec)
    sd = m.state_dict()
    layers = [lambda t, i=i: t + branch(sd, i, t) for i in range(DEPTH)]
    check(m, mudd_reference(sd, "h", layers, X, [1] * DEPTH))
    plain, fresh = module("residual", spec=spec), module("mudd", spec=spec, randomize=False)
    fresh.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():  # W2 = 0, a = current only: each mix is the latest output
        assert torch.allclose(fresh(X), plain(X), atol=1e-6)


def test_mudd_gives_a_four_way_layer_its_q_k_v_and_r_streams() -> None:
    spec = """
    axis B, T, D
    block Way4 (xq: [B, T, D], xk: [B, T, D], xv: [B, T, D], xr: [B, T, D]) -> [B, T, D] {
        fq = linear(D)
        fk = linear(D)
        fv = linear(D)
        return xr + tanh(fq(xq) * fk(xk) + fv(xv))
    }
    model M(depth: int = 3, connect: connection = mudd) (x: [B, T, 8]) -> [B, T, 8] {
        return x >> stack(depth, connect = connect) { Way4() }
    }
    """
    m = module("mudd", spec=spec)
    sd = m.state_dict()

    def layer(i: int):
        lin = lambda n, t: t @ sd[f"stack.{i}.{n}.weight"].T + sd[f"stack.{i}.{n}.bias"]  # noqa: E731
        return lambda q, k, v, r: r + torch.tanh(lin("fq", q) * lin("fk", k) + lin("fv", v))

    check(m, mudd_reference(sd, "stack", [layer(i) for i in range(DEPTH)], X, [4] * DEPTH))
    assert sd["stack.mudd.1.a"].shape == (4, 2) and sd["stack.mudd.3.a"].shape == (1, 4)


def test_frac_is_built_with_gamma_identity_unlike_the_packages_init() -> None:
    """The reference notes (§1.5) found that the hyper-connections package's frac init feeds the
    branch [frac_0, frac_0] instead of x; archc builds Gamma = I, so its branch input at init is x
    (test above). This pins the package's behaviour: if it changes, compare weights directly."""
    from hyper_connections.hyper_connections import HyperConnections

    hc = HyperConnections(1, dim=D, num_fracs=2, layer_index=0)
    branch_input, _ = hc(X)
    half = D // 2
    assert torch.allclose(branch_input[..., :half], X[..., :half])
    assert torch.allclose(branch_input[..., half:], X[..., :half])  # frac_0 twice: not the identity
    assert not torch.allclose(branch_input, X)
