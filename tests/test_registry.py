"""The model registry (archc/registry.py): `archc.create_model(name, **params)` and
`archc.list_models()`, zoo names on the command line, `archc list`, and `deploy` with Hugging Face
key maps and safetensors.

Models are built at tiny sizes and compared with the reference they reproduce (timm, Hugging
Face), built from the same config with random weights: the reference's state_dict loads with
strict=True and the outputs agree (torch.testing.assert_close).
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest

import archc
from archc import zoo
from archc.errors import ArchError

torch = pytest.importorskip("torch")

GPT2_TINY = {"vocab_size": 96, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4}
LLAMA_TINY = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def _randomize_vectors(model: Any, seed: int) -> None:
    """Norm gains near 1 and biases near 0 at random (the references' inits leave them at 1 and 0,
    which would hide a swapped or missing one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.75 if name.endswith("weight")
                        else torch.randn(p.shape, generator=g) * 0.1)


def _tiny_gpt2(transformers: ModuleType, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_TINY)).eval()
    _randomize_vectors(ref, seed)
    return ref


def _tokens(vocab: int, seed: int = 1) -> Any:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


# ---- archc.create_model / archc.list_models -------------------------------------------------


def test_list_models_is_the_zoo() -> None:
    assert archc.list_models() == sorted(zoo.MODELS)
    assert archc.list_models("resnet*") == ["resnet18", "resnet50"]
    assert archc.list_models("nothing*") == []


def test_create_model_resnet18_matches_timm(timm: ModuleType) -> None:
    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=10)
    _randomize_vectors(ref, 0)
    ref.eval()
    model = archc.create_model("resnet18", num_classes=10, img_size=64).eval()
    model.load_state_dict(zoo.timm_to_archc("resnet18", ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_create_model_gpt2_from_a_hf_config(transformers: ModuleType) -> None:
    ref = _tiny_gpt2(transformers)
    model = archc.create_model("gpt2", config=ref.config.to_dict()).eval()
    model.load_state_dict(zoo.hf_gpt2_to_archc(ref.state_dict()), strict=True)
    tokens = _tokens(GPT2_TINY["vocab_size"])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(tokens).logits, rtol=1e-5, atol=1e-5)


def test_create_model_llama_takes_the_hf_config_names(transformers: ModuleType) -> None:
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_TINY)).eval()
    _randomize_vectors(ref, 0)
    model = archc.create_model("llama", **LLAMA_TINY).eval()  # the config's own names
    model.load_state_dict(zoo.hf_llama_to_archc(ref.state_dict()), strict=True)
    tokens = _tokens(LLAMA_TINY["vocab_size"])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(tokens).logits, rtol=1e-5, atol=1e-5)


def test_create_model_keywords_win_over_the_config() -> None:
    model = archc.create_model("gpt2", config={**GPT2_TINY, "n_layer": 3}, depth=1)
    assert len(model.transformer.h) == 1


def test_unknown_model_is_a_clear_error_with_a_suggestion() -> None:
    with pytest.raises(ArchError) as err:
        archc.create_model("resnet5")
    assert "no model 'resnet5' in the zoo" in err.value.message
    assert err.value.hint == "did you mean 'resnet50'?"
    with pytest.raises(ArchError) as err:
        archc.create_model("zzzz")
    assert "resnet18" in (err.value.hint or "")  # no close name: the zoo is listed


def test_unknown_model_parameter_is_a_spec_error() -> None:
    with pytest.raises(ArchError, match="num_clases"):
        archc.create_model("resnet18", num_clases=10)


def test_config_is_refused_where_it_does_not_fit() -> None:
    with pytest.raises(ArchError, match="config= is for the Hugging Face models"):
        archc.create_model("resnet18", config={"num_classes": 10})
    with pytest.raises(ArchError, match="gelu_new"):
        archc.create_model("gpt2", config={**GPT2_TINY, "activation_function": "relu"})
    with pytest.raises(ArchError, match="one dropout rate"):
        archc.create_model("gpt2", config={**GPT2_TINY, "resid_pdrop": 0.1, "attn_pdrop": 0.0})


# ---- zoo names on the command line ----------------------------------------------------------


def test_cli_check_takes_a_zoo_name(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main

    monkeypatch.chdir(tmp_path)  # no file named resnet18 here
    assert main(["check", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{zoo.spec_path('resnet18')}: ok: model ResNet18")  # the real file
    assert "11,689,512 parameters" in out
    monkeypatch.chdir(zoo.spec_path("resnet18").parents[2])  # the folder holding specs/: shown relative
    assert main(["check", "-q", "resnet18"]) == 0
    assert main(["check", "resnet18"]) == 0
    assert capsys.readouterr().out.startswith("specs/models/resnet18.arch: ok: model ResNet18")


def test_cli_build_takes_a_zoo_name_and_names_the_output_after_it(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    small = {"vocab": 96, "dim": 32, "depth": 1, "heads": 4, "max_len": 32}
    sets = [arg for k, v in small.items() for arg in ("--set", f"{k}={v}")]
    assert main(["build", "gpt2", *sets, "-o", "out/"]) == 0
    namespace: dict[str, Any] = {}
    exec(compile((tmp_path / "out" / "gpt2.py").read_text(), "gpt2.py", "exec"), namespace)
    generated = namespace["GPT2"]().eval()  # the generated file's model, at these sizes
    ours = archc.create_model("gpt2", **small).eval()
    generated.load_state_dict(ours.state_dict(), strict=True)
    tokens = _tokens(small["vocab"])
    with torch.no_grad():
        torch.testing.assert_close(generated(tokens), ours(tokens), rtol=1e-5, atol=1e-5)


def test_cli_a_path_that_exists_wins_over_the_zoo_name(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet18").write_text("axis B\nmodel Tiny(x: [B, 4]) -> [B, 2] {\n    return x >> linear(2)\n}\n")
    assert main(["check", "resnet18"]) == 0
    assert capsys.readouterr().out.startswith("resnet18: ok: model Tiny")


def test_cli_errors_in_a_zoo_spec_point_at_the_real_file(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["check", "resnet50", "--set", "depths=[3, 4]"]) == 1
    err = capsys.readouterr().err
    assert f"{zoo.spec_path('resnet50')}:15:" in err and "error:" in err and "^" in err


def test_cli_unknown_bare_name_suggests_a_zoo_name(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["check", "resnet5"]) == 1
    err = capsys.readouterr().err
    assert "no such spec file" in err and "did you mean 'resnet50'?" in err
    assert main(["check", "missing.arch"]) == 1  # a path: the usual error, no zoo hint
    err = capsys.readouterr().err
    assert "no such spec file" in err and "zoo" not in err


# ---- archc list -----------------------------------------------------------------------------


def _reference_param_count(timm: ModuleType, transformers: ModuleType, reference: str) -> int:
    """The parameter count of the reference model at its defaults, built on the meta device."""
    library, name = reference.split(":")
    with torch.device("meta"):
        if library == "timm":
            model = timm.create_model(name, pretrained=False)
        else:
            cls = getattr(transformers, name)
            model = cls(cls.config_class())
    return sum(p.numel() for p in model.parameters())


def test_archc_list_json_counts_match_the_references(timm: ModuleType, transformers: ModuleType,
                                                     capsys) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main

    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == sorted(zoo.MODELS)
    for name, row in rows.items():
        assert row["reference"] == zoo.MODELS[name]
        if name == "llama":  # its defaults are SmolLM-135M's, not LlamaConfig's (Llama-2 7B)
            continue
        assert row["params"] == _reference_param_count(timm, transformers, row["reference"]), name
    assert main(["check", "resnet18"]) == 0  # the op count is the one `archc check` reports
    assert f"{rows['resnet18']['ops']} ops" in capsys.readouterr().out


def test_archc_list_table_and_pattern(capsys) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main

    assert main(["list", "resnet*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "reference", "parameters", "ops"]
    assert [line.split()[:3] for line in lines[1:]] == [["resnet18", "timm:resnet18", "11,689,512"],
                                                         ["resnet50", "timm:resnet50", "25,557,032"]]
    assert main(["list", "nothing*"]) == 1
    assert "no model matches 'nothing*'" in capsys.readouterr().err


# ---- weights: Hugging Face key maps, safetensors ---------------------------------------------


def _deployed_module(out: Any, name: str, weights: str) -> Any:
    """The deployed spec in the folder `out`, built, holding the deployed weights file `weights`."""
    from archc.backends.torch import build_module
    from archc.elaborate import elaborate_file

    module = build_module(elaborate_file(out / f"{name}.deploy.arch"))
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(str(out / weights))
    else:
        sd = torch.load(out / weights, weights_only=True)
    module.load_state_dict(sd, strict=True)
    return module.eval()


GPT2_SETS = ["--set", "vocab=96", "--set", "dim=32", "--set", "depth=2", "--set", "heads=4", "--set", "max_len=32"]


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_deploy_reads_a_hf_gpt2_checkpoint_with_key_map_hf(transformers: ModuleType, tmp_path, fmt: str,
                                                            capsys) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main

    ref = _tiny_gpt2(transformers)
    sd = ref.state_dict()  # Conv1D weights [in, out], lm_head.weight tied to wte
    if fmt == "pt":
        weights = tmp_path / "gpt2.pt"
        torch.save(sd, weights)
    else:  # as Hugging Face writes it: the tied head left out
        from safetensors.torch import save_file

        weights = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight"}, str(weights))
    out = tmp_path / "out"
    assert main(["deploy", "gpt2", *GPT2_SETS, "--weights", str(weights), "-o", str(out)]) == 1  # archc's keys
    assert "the weights do not fit" in capsys.readouterr().err
    assert main(["deploy", "gpt2", *GPT2_SETS, "--weights", str(weights), "--key-map", "hf", "-o", str(out),
                 "--format", fmt]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != ".archc-files") == [f"deployed.{fmt}", "gpt2.deploy.arch"]
    module = _deployed_module(out, "gpt2", f"deployed.{fmt}")
    tokens = _tokens(GPT2_TINY["vocab_size"])
    with torch.no_grad():
        torch.testing.assert_close(module(tokens), ref(tokens).logits, rtol=1e-5, atol=1e-5)


def test_deploy_safetensors_round_trip_folds_batchnorm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A resnet18 checkpoint in .safetensors, deployed (BatchNorms folded) to deployed.safetensors:
    the deployed model computes what the train-time model computes, and the .pt path gives the
    same tensors."""
    from safetensors.torch import save_file

    from archc.cli import main

    torch.manual_seed(0)
    model = archc.create_model("resnet18", num_classes=10, img_size=32, depths=[1, 1, 1, 1])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    _randomize_vectors(model, 0)
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    sets = ["--set", "num_classes=10", "--set", "img_size=32", "--set", "depths=[1, 1, 1, 1]"]
    assert main(["deploy", "resnet18", *sets, "--weights", str(tmp_path / "w.safetensors"), "-o",
                 str(tmp_path / "a"), "--format", "safetensors"]) == 0
    assert main(["deploy", "resnet18", *sets, "--weights", str(tmp_path / "w.pt"), "-o", str(tmp_path / "b")]) == 0
    deployed = _deployed_module(tmp_path / "a", "resnet18", "deployed.safetensors")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-4)
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "a" / "deployed.safetensors")), torch.load(tmp_path / "b" / "deployed.pt",
                                                                                 weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_create_model_loads_weights_with_a_key_map(transformers: ModuleType, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    ref = _tiny_gpt2(transformers)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items() if k != "lm_head.weight"}, str(path))
    model = archc.create_model("gpt2", config=ref.config.to_dict(), weights=path, key_map="hf").eval()
    tokens = _tokens(GPT2_TINY["vocab_size"])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(tokens).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ArchError, match="the weights do not fit") as err:
        archc.create_model("gpt2", config=ref.config.to_dict(), weights=path)  # Conv1D shapes, archc's keys
    assert "key_map" in (err.value.hint or "")


def test_create_model_llama_tied_head_from_safetensors(transformers: ModuleType, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A tied Llama checkpoint with lm_head.weight stored as its own copy (no shared memory after
    loading): the key map drops it because the model has no head of its own."""
    from safetensors.torch import save_file

    config = {**LLAMA_TINY, "tie_word_embeddings": True}
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    _randomize_vectors(ref, 0)
    path = tmp_path / "model.safetensors"
    save_file({k: v.clone().contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = archc.create_model("llama", config=ref.config.to_dict(), weights=path, key_map="hf").eval()
    tokens = _tokens(LLAMA_TINY["vocab_size"])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(tokens).logits, rtol=1e-5, atol=1e-5)


def test_bad_weights_files_are_clear_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    from archc.weights import read_weights

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ArchError, match="cannot read the weights \\(expected a .safetensors file\\)"):
        read_weights(bad)
    nan = tmp_path / "nan.safetensors"
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(nan))
    with pytest.raises(ArchError, match="'w' holds NaN"):
        read_weights(nan)
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(2)}, str(good))
    with pytest.raises(ArchError, match="--key-map hf is for the zoo's gpt2, llama and mixtral"):
        archc.create_model("resnet18", weights=good, key_map="hf")
