"""Initialization chosen in the spec (archc/elaborate/inits.py): `init=`, `<role>_init=` and
`@init(op=...)`, their IR (ParamDecl.init, printed back), the torch backend's initialization, and
the zoo specs against their reference's own init: the per-parameter mean and std of a freshly
built archc model match those of the freshly built reference within statistical bounds, and
GPT-2's initial loss on random tokens is ln(vocab), as Hugging Face's is."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import pytest

from archc import zoo
from archc.elaborate import elaborate_text
from archc.errors import ArchError
from archc.ir.printer import canonical, print_graph

torch = pytest.importorskip("torch")


def _graph(body: str, head: str = "", signature: str = "(x: [B, 64]) -> [B, 64]") -> Any:
    return elaborate_text(f"axis B, D\n{head}\nmodel M {signature} {{\n{body}\n}}\n", "t.arch")


def _inits(graph: Any) -> dict[str, str]:
    return {k: p.init for k, p in graph.params.items()}


# ---- the language ---------------------------------------------------------------------------------
def test_init_sets_the_weight_and_zeroes_the_bias() -> None:
    g = _graph("fc = linear(64, init=normal(0.02))\nreturn fc(x)")
    assert _inits(g) == {"fc.weight": "normal(0.02)", "fc.bias": "zeros"}


def test_role_keywords_set_one_parameter_each() -> None:
    g = _graph("fc = linear(64, weight_init=trunc_normal(0.02, a=-0.04, b=0.04))\n"
               "ln = layernorm(weight_init=zeros, bias_init=0.5)\nreturn x >> fc >> ln")
    assert g.params["fc.weight"].init == "trunc_normal(0.02, -0.04, 0.04)"
    assert g.params["fc.bias"].init.startswith("uniform(")  # torch's default stays
    assert g.params["ln.weight"].init == "zeros" and g.params["ln.bias"].init == "const(0.5)"


def test_scaled_init_is_spec_arithmetic() -> None:
    g = elaborate_text("axis B\nmodel M(depth: int = 12) (x: [B, 64]) -> [B, 64] {\n"
                       "    return linear(x, 64, init=normal(0.02 / (2 * depth) ** 0.5))\n}\n", "t.arch")
    assert g.params["linear.weight"].init == f"normal({0.02 / 24 ** 0.5!r})"


def test_init_annotation_reaches_the_ops_inside_blocks() -> None:
    head = ("block Mlp(std: float) (x: [B, D]) -> [B, D] {\n"
            "    return x >> linear(D) >> relu >> linear(D, init=normal(std))\n}")
    body = ("@init(linear=zeros)\ny = Mlp(0.1)(x)\nreturn y >> layernorm >> Mlp(0.3)")
    g = elaborate_text(f"axis B, D\n{head}\n@init(linear=trunc_normal(0.02), layernorm_weight=0.5)\n"
                       f"model M (x: [B, 64]) -> [B, 64] {{\n{body}\n}}\n", "t.arch")
    inits = _inits(g)
    assert inits["mlp.linear.weight"] == "zeros"  # the inner annotation wins
    assert inits["mlp.linear_1.weight"] == "normal(0.1)"  # the op's own keyword wins
    assert inits["mlp_1.linear.weight"] == "trunc_normal(0.02)" and inits["mlp_1.linear.bias"] == "zeros"
    assert inits["layernorm.weight"] == "const(0.5)" and inits["layernorm.bias"] == "zeros"
    assert not any(a.name == "init" for n in g.nodes for a in n.annotations)  # used up, not kept


def test_connection_policies_keep_their_own_initializers() -> None:
    text = ("axis B, T, D\nblock L (x: [B, T, D]) -> [B, T, D] { return residual(x, linear(D)) }\n"
            "@init(linear=zeros, parameter=ones)\n"
            "model M (x: [B, T, 16]) -> [B, T, 16] { return stack(2, connect=rezero) { L() }(x) }\n")
    g = elaborate_text(text, "t.arch")
    assert g.params["stack.0.linear.weight"].init == "zeros"
    assert g.params["stack.0.resweight"].init == "zeros"  # rezero's own, not the annotation's


def test_printed_ir_keeps_the_initializers() -> None:
    g = _graph("fc = linear(64, init=normal(0.02))\nreturn x >> fc >> layernorm(weight_init=zeros)")
    text = print_graph(g)
    assert 'weight_init="normal(0.02)", bias_init="zeros"' in text
    again = elaborate_text(text, "p.arch")
    assert canonical(again) == canonical(g)


@pytest.mark.parametrize(("body", "message", "at"), [
    ("return linear(x, 64, bias=false, bias_init=zeros)", "linear() has no parameter 'bias' here", "bias_init="),
    ("return linear(x, 64, gain_init=zeros)", "no parameter 'gain'", "gain_init="),
    ("return linear(x, 64, init=kaiming)", "unknown name 'kaiming'", "kaiming"),
    ("return linear(x, 64, init=\"normal\")", "initializer 'normal' takes 1 to 2 argument", "init="),
    ("return linear(x, 64, init=normal(\"a\"))", "normal() argument 'std' must be a number", "normal("),
    ("return batchnorm(x, running_var_init=zeros)", "'running_var' is a buffer", "running_var_init="),
    ("@init(linera=zeros)\n return linear(x, 64)", "'linera' is not an op with parameters", "linera="),
    ("@init(normal(0.1))\n return linear(x, 64)", "@init takes keywords", "@init"),
])
def test_init_mistakes_are_located_errors(body: str, message: str, at: str) -> None:
    text = "axis B\nmodel M (x: [B, 64, 4, 4]) -> [B, 64, 4, 4] {\n" + body + "\n}\n"
    if "linear" in body:
        text = text.replace("[B, 64, 4, 4]", "[B, 64]")
    with pytest.raises(ArchError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        elaborate_text(text, "t.arch")
    span = err.value.span
    assert span is not None and span.line == 3, err.value.render()
    assert text.splitlines()[2][span.col - 1:].startswith(at), err.value.render()


def test_a_shared_parameter_keeps_one_initializer() -> None:
    body = ("wte = embedding(100, 64, init=normal(0.02))\n"
            "return linear(wte(x), 100, bias=false, tied=wte, weight_init=zeros)")
    with pytest.raises(ArchError, match="already initialized as normal") as err:
        elaborate_text(f"axis B, T\nmodel M (x: i64[B, T]) -> [B, T, 100] {{\n{body}\n}}\n", "t.arch")
    assert "first declared here" in err.value.render()


# ---- the torch backend ----------------------------------------------------------------------------
def test_built_parameters_follow_the_initializers() -> None:
    from archc.backends.torch import build_module

    text = ("axis B\nmodel M (x: [B, 512]) -> [B, 512] {\n"
            "    a = linear(512, init=normal(0.02))\n    b = linear(512, weight_init=normal(0.1, 0.1))\n"
            "    c = linear(512, init=trunc_normal(1.0, a=-0.5, b=0.5))\n    d = linear(512, init=kaiming_normal)\n"
            "    return x >> a >> b >> c >> d\n}\n")
    torch.manual_seed(0)
    m = build_module(elaborate_text(text, "t.arch"))
    n = 512 * 512
    assert abs(m.a.weight.std().item() - 0.02) < 5 * 0.02 / math.sqrt(2 * n)
    assert torch.equal(m.a.bias, torch.zeros(512))
    assert abs(m.b.weight.mean().item() - 0.1) < 5 * 0.1 / math.sqrt(n)
    assert m.c.weight.abs().max().item() <= 0.5 and m.c.weight.abs().max().item() > 0.49
    assert abs(m.d.weight.std().item() - math.sqrt(2 / 512)) < 5 * math.sqrt(2 / 512) / math.sqrt(2 * n)


# ---- the zoo against its references ---------------------------------------------------------------
def _stats_match(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Names whose mean or std differ by more than 6 standard errors (both tensors are samples of
    their initializer's distribution; a constant tensor has a standard error of 0)."""
    assert set(ours) == set(theirs), sorted(set(ours) ^ set(theirs))
    bad = []
    for name in sorted(ours):
        a, b = ours[name].detach().double().flatten(), theirs[name].detach().double().flatten()
        if not a.is_floating_point():
            continue
        n = a.numel()
        sa, sb = a.std().item() if n > 1 else 0.0, b.std().item() if n > 1 else 0.0
        spread = max(sa, sb)
        mean_ok = abs(a.mean().item() - b.mean().item()) <= 6 * spread * math.sqrt(2 / n) + 1e-9
        std_ok = abs(sa - sb) <= 6 * spread * math.sqrt(1 / n) + 1e-9  # se(std) ~ std / sqrt(2n), twice
        if not (mean_ok and std_ok):
            bad.append(f"{name}: mean {a.mean().item():.4g} vs {b.mean().item():.4g}, std {sa:.4g} vs {sb:.4g}")
    return bad


GPT2_TINY = {"vocab": 1000, "dim": 64, "depth": 4, "heads": 2, "max_len": 128}


def _hf_gpt2(transformers: ModuleType) -> Any:
    config = transformers.GPT2Config(vocab_size=1000, n_embd=64, n_layer=4, n_head=2, n_positions=128)
    return transformers.GPT2LMHeadModel(config)


def test_gpt2_init_is_hugging_faces(transformers: ModuleType) -> None:
    from archc.api import compile as compile_spec

    torch.manual_seed(0)
    ref = _hf_gpt2(transformers)
    ours = compile_spec(zoo.spec_path("gpt2"), **GPT2_TINY)
    theirs = zoo.hf_gpt2_to_archc(ref.state_dict())
    bad = _stats_match(dict(ours.state_dict()), theirs)
    assert not bad, "\n".join(bad)
    # the scaled projection is what tells the init apart from a plain normal(0.02)
    assert abs(ours.state_dict()["transformer.h.0.attn.c_proj.weight"].std().item() - 0.02 / 8 ** 0.5) < 4e-4


def test_gpt2_initial_loss_is_ln_vocab(transformers: ModuleType) -> None:
    from archc.api import compile as compile_spec

    torch.manual_seed(0)
    ours = compile_spec(zoo.spec_path("gpt2"), **GPT2_TINY).eval()
    ref = _hf_gpt2(transformers).eval()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 1000, (8, 64), generator=g)
    with torch.no_grad():
        logits = ours(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 1000), tokens[:, 1:].reshape(-1))
        ref_loss = ref(tokens, labels=tokens).loss
    assert abs(ref_loss.item() - math.log(1000)) < 0.05  # what Hugging Face's own init gives
    assert abs(loss.item() - math.log(1000)) < 0.05, loss.item()


def test_vit_init_is_timms(timm: ModuleType) -> None:
    from archc.api import compile as compile_spec

    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, patch_size=8,
                            embed_dim=128, depth=2, num_heads=2, num_classes=100)
    ours = compile_spec(zoo.spec_path("vit_small_patch16_224"), img_size=64, patch=8, D=128, depth=2,
                        heads=2, num_classes=100)
    bad = _stats_match(dict(ours.state_dict()), dict(ref.state_dict()))
    assert not bad, "\n".join(bad)


# reduced configurations (same blocks, fewer of them) where the spec and timm take the same knobs
VISION = {
    "resnet18": ({}, {}),
    "resnet50": ({"depths": [1, 1, 1, 1]}, {"layers": [1, 1, 1, 1]}),
    "convnext_tiny": ({"depths": [1, 1, 1, 1]}, {"depths": (1, 1, 1, 1)}),
    "poolformer_s12": ({}, {}),
    "repvgg_a0": ({}, {}),
}


@pytest.mark.parametrize("name", [
    "resnet18", "repvgg_a0",  # a fixed small sample; the larger ones are marked slow
    *(pytest.param(n, marks=pytest.mark.slow) for n in ("resnet50", "convnext_tiny", "poolformer_s12"))])
def test_vision_init_is_timms(timm: ModuleType, name: str) -> None:
    from archc.api import compile as compile_spec

    ours_args, timm_args = VISION[name]
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False, **timm_args)
    ours = compile_spec(zoo.spec_path(name), **ours_args)
    bad = _stats_match(dict(ours.state_dict()), zoo.timm_to_archc(name, ref.state_dict()))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("tied", [True, False])
def test_llama_init_is_hugging_faces(transformers: ModuleType, tied: bool) -> None:
    from archc.api import compile as compile_spec

    config = transformers.LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(config)
    ours = compile_spec(zoo.spec_path("llama"), **zoo.hf_llama_params(config.to_dict()))
    bad = _stats_match(dict(ours.state_dict()), zoo.hf_llama_to_archc(ref.state_dict(), tied))
    assert not bad, "\n".join(bad)


def test_the_formatter_wraps_a_long_init_annotation() -> None:
    from archc.frontend.fmt import format_module
    from archc.frontend.parser import parse

    text = ("axis B\n@init(linear=normal(initializer_range), embedding=normal(initializer_range), "
            "layernorm_weight=ones, layernorm_bias=zeros)\n"
            "model M(initializer_range: float = 0.02) (x: [B, 8]) -> [B, 8] { return linear(x, 8) }\n")
    out = format_module(parse(text, "t.arch"))
    assert max(len(line) for line in out.splitlines()) <= 100 and "@init(linear=" in out
    assert format_module(parse(out, "t.arch")) == out  # stable
    assert canonical(elaborate_text(out, "t.arch")) == canonical(elaborate_text(text, "t.arch"))


def test_an_init_annotation_that_reaches_no_op_it_names_is_an_error() -> None:
    with pytest.raises(ArchError, match=r"@init\(conv2d=\.\.\.\) on this statement reaches no op it names") as e:
        _graph("    @init(conv2d=normal(0.02)) y = linear(x, 64)\n    return y")
    assert (e.value.span.line, e.value.span.col) == (4, 5)
    with pytest.raises(ArchError, match="on this block reaches no op"):
        elaborate_text("axis B, D\n@init(embedding=normal(0.02))\nblock L() (x: [B, D]) -> [B, D] { return linear(x, D) }\n"
                       "model M (x: [B, 8]) -> [B, 8] { return L()(x) }\n", "t.arch")
    # one op it names is enough: the linear here, not the (absent) conv2d
    g = _graph("    @init(linear=normal(0.5), conv2d=normal(0.02)) y = linear(x, 64)\n    return y")
    assert _inits(g)["linear.weight"].startswith("normal(0.5")
