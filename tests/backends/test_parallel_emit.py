"""`archc build --target torch --parallel`: the plan as `def parallelize(model, mesh, ...)` in the
generated file (backends/torch/parallel_emit.py). That the function trains like one process is
tested under torch.distributed in tests/distributed/test_parallelize.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from archc.cli import main
from archc.resources import specs_root

GPT2 = specs_root() / "models" / "gpt2.arch"
RESNET18 = specs_root() / "models" / "resnet18.arch"
TINY = ["--set", "vocab=64", "--set", "dim=32", "--set", "depth=3", "--set", "heads=2", "--set", "max_len=16"]


def _build(tmp_path: Path, spec: Path, *args: str) -> str:
    out = tmp_path / "model.py"
    assert main(["build", str(spec), *args, "--parallel", "-o", str(out)]) == 0
    return out.read_text()


def _function(text: str) -> ast.FunctionDef:
    tree = ast.parse(text)
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "parallelize")


def test_gpt2_plan_is_one_loop_over_the_layers(tmp_path: Path) -> None:
    text = _build(tmp_path, GPT2, *TINY, "--tp", "2")
    body = ast.unparse(_function(text))
    assert "for layer in ('transformer.h.0', 'transformer.h.1', 'transformer.h.2'):" in body
    assert body.count("FusedColwiseParallel(3)") == 1 and body.count("parallelize_module(") == 3
    assert "'transformer.wte': RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())" in body
    # the model's file is still the model's file, and needs only torch
    assert "class GPT2(nn.Module):" in text and "archc" not in text.split('"""', 2)[2].replace("archc planned", "")


def test_resnet_plan_shards_the_blocks_and_splits_only_the_head(tmp_path: Path) -> None:
    text = _build(tmp_path, RESNET18)
    body = ast.unparse(_function(text))
    assert "'fc': ColwiseParallel(output_layouts=logits, use_local_output=not loss_parallel)" in body
    assert "for layer in ('layer1.0', 'layer1.1', 'layer2.0'," in body.replace("\n", " ")


def test_tp_that_does_not_divide_the_heads_is_a_located_error(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(GPT2), *TINY, "--parallel", "--tp", "4", "-o", str(tmp_path / "m.py")]) == 1
    err = capsys.readouterr().err
    assert "gpt2.arch:" in err and "axis 'h' (the heads) (2), which 4 does not divide" in err and "^" in err
    assert not (tmp_path / "m.py").exists()


def test_parallel_needs_the_torch_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(GPT2), *TINY, "--target", "fx", "--parallel", "-o", str(tmp_path / "m.py")]) == 1
    assert "--parallel writes a torch plan" in capsys.readouterr().err


def test_the_plan_in_the_docs_is_the_one_built(tmp_path: Path) -> None:
    """docs/parallel.md prints GPT-2's plan (tp=2, sp) next to torchtitan's: it is the build's."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "parallel.md").read_text(encoding="utf-8")
    shown = doc.split("```python emitted=gpt2-tp2-sp\n", 1)[1].split("\n```", 1)[0]
    text = _build(tmp_path, GPT2, *TINY[:5], "depth=2", *TINY[6:], "--set", "pdrop=0.0", "--tp", "2", "--sp")
    assert shown == text[text.index("def parallelize("):].rstrip("\n")


@pytest.mark.parametrize(("name", "extra"), [("llama", []), ("mixtral", ["--set", "num_local_experts=4"])])
def test_the_sequence_parallel_plans_in_the_docs_are_the_ones_built(tmp_path: Path, name: str,
                                                                  extra: list[str]) -> None:
    """docs/parallel.md prints the tensor-parallel part of Llama's and Mixtral's plans (tp=2, sp)."""
    import textwrap

    doc = (Path(__file__).resolve().parents[2] / "docs" / "parallel.md").read_text(encoding="utf-8")
    shown = doc.split(f"```python emitted={name}-tp2-sp\n", 1)[1].split("\n```", 1)[0]
    sets = [a for kv in ("vocab_size=64", "hidden_size=32", "intermediate_size=64", "num_hidden_layers=2",
                         "num_attention_heads=4", "num_key_value_heads=2") for a in ("--set", kv)]
    text = _build(tmp_path, specs_root() / "models" / f"{name}.arch", *sets, *extra, "--tp", "2", "--sp")
    part = text.split("    if tp_mesh is not None:\n", 1)[1].split("    if dp_mesh is not None:", 1)[0]
    assert shown == textwrap.dedent(part).rstrip("\n")


class _Mesh:
    """What parallelize reads of a DeviceMesh before it splits anything."""

    def __init__(self, names: tuple[str, ...] | None, ndim: int) -> None:
        self.mesh_dim_names, self.ndim = names, ndim


@pytest.mark.parametrize(("mesh", "options", "message"), [
    (_Mesh(("a", "b"), 2), {}, "a 2-D mesh must be named ('dp', 'tp')"),
    (_Mesh(None, 1), {}, "a 1-D mesh named neither 'tp' nor 'dp'"),
    (_Mesh(("tp",), 1), {"tp": True, "fsdp": True}, "use a 2-D ('dp', 'tp') mesh for both"),
    (_Mesh(("x", "y", "z"), 3), {}, "a 1-D or 2-D device mesh, got 3 dimensions"),
])
def test_meshes_parallelize_cannot_use_are_errors(mesh: _Mesh, options: dict[str, bool], message: str) -> None:
    import archc
    from archc.errors import ArchError

    model = archc.compile(GPT2, vocab=64, dim=32, depth=1, heads=2, max_len=16)
    with pytest.raises(ArchError, match=message.replace("(", "\\(").replace(")", "\\)")):
        archc.parallelize(model, mesh, **options)


def test_parallelize_needs_the_ir_of_the_model() -> None:
    import torch

    import archc
    from archc.errors import ArchError

    with pytest.raises(ArchError, match="parallelize needs the IR of the model"):
        archc.parallelize(torch.nn.Linear(2, 2), _Mesh(("tp",), 1))


def test_replicate_option_of_build(tmp_path: Path) -> None:
    dit = specs_root() / "examples" / "dit_tiny.arch"
    assert main(["build", str(dit), "--parallel", "-o", str(tmp_path / "refused.py")]) == 1
    text = _build(tmp_path, dit, "--replicate", "blocks.*.adaLN_modulation", "--replicate", "final_layer")
    body = ast.unparse(_function(text))
    assert "'attn.qkv': FusedColwiseParallel(3)" in body and "adaLN" not in body
