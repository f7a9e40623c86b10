"""The emitted .py file: golden text, determinism, module tree, state_dict names, buffers,
initializers, and readable names that never shadow."""

from __future__ import annotations

import ast
import re
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from archc.backends.torch import build_module, emit_python
from archc.backends.torch.naming import RESERVED
from archc.elaborate import elaborate_file
from archc.errors import ArchError
from archc.ir.graph import Graph
from archc.resources import specs_root

from backend_harness import import_file, spec_graph

GPT_TINY = specs_root() / "examples" / "gpt_tiny.arch"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "gpt_tiny.torch.py"
# small settings for the zoo, so every model builds in well under a second
SMALL = {"img_size": 64, "num_classes": 10, "depth": 2, "vocab": 100, "dim": 64, "D": 64, "heads": 2, "max_len": 64,
         "depths": (1, 2, 1, 1), "dims": (16, 32, 64, 128), "widths": (16, 32, 64, 128),
         # llama.arch (Hugging Face's config names)
         "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}


def zoo() -> list[Path]:
    return sorted((specs_root() / "models").glob("*.arch"))


def small_graph(path: Path) -> Graph:
    names = elaborate_file(path).model_args
    return elaborate_file(path, overrides={k: v for k, v in SMALL.items() if k in names})


def test_golden_gpt_tiny() -> None:
    text = emit_python(elaborate_file(GPT_TINY))
    if os.environ.get("ARCHC_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), "no golden file: run with ARCHC_UPDATE_GOLDEN=1"
    assert text == GOLDEN.read_text(), "emitted code changed; if intended, refresh with ARCHC_UPDATE_GOLDEN=1"


def test_emission_is_deterministic_and_location_independent(tmp_path: Path) -> None:
    graph = elaborate_file(GPT_TINY)
    copy = tmp_path / "elsewhere" / "gpt_tiny.arch"
    copy.parent.mkdir()
    copy.write_text(GPT_TINY.read_text())
    assert emit_python(graph) == emit_python(Graph.from_json(graph.to_json()))
    assert emit_python(graph) == emit_python(elaborate_file(copy))


@pytest.mark.parametrize("path", [GPT_TINY, *zoo()], ids=lambda p: p.stem)
def test_state_dict_keys_are_the_ir_parameter_names(path: Path) -> None:
    graph = small_graph(path) if path != GPT_TINY else elaborate_file(path)
    module = build_module(graph)
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    assert list(module.state_dict()) and set(module.state_dict()) == set(graph.params)
    for name, decl in graph.params.items():
        tensor = params[name] if decl.trainable else buffers[name]
        assert name in (params if decl.trainable else buffers), name
        assert tuple(tensor.shape) == decl.shape, name
        assert tensor.dtype == {"f32": torch.float32, "i64": torch.int64}[decl.dtype], name


def test_module_tree_mirrors_the_scopes() -> None:
    graph = elaborate_file(GPT_TINY)
    module = build_module(graph)
    named = dict(module.named_modules())
    assert set(graph.scopes) <= set(named)
    assert isinstance(module.h, nn.Sequential) and len(module.h) == 2  # layers feed each other
    assert module.h[1].attn.qkv.weight.shape == (192, 64)
    assert type(module.h[0]) is type(module.h[1])  # one class per distinct block
    text = repr(module)
    assert "(attn): Attention(" in text and "heads=4, causal=True" in (type(module.h[0].attn).__doc__ or "")
    assert "(qkv): Linear(in_features=64, out_features=192, bias=True)" in text


def test_batchnorm_buffers_load_into_torch_batchnorm() -> None:
    graph = spec_graph("axis B\nmodel M (x: [B, 4, 5, 5]) -> [B, 4, 5, 5] { return batchnorm(x) }")
    module = build_module(graph)
    assert set(dict(module.named_buffers())) == {"batchnorm.running_mean", "batchnorm.running_var",
                                                  "batchnorm.num_batches_tracked"}
    count = module.batchnorm.num_batches_tracked
    assert count.dtype == torch.int64 and count.shape == () and int(count) == 0
    assert torch.equal(module.batchnorm.running_var, torch.ones(4))
    ref = nn.BatchNorm2d(4)
    ref.load_state_dict({k.split(".", 1)[1]: v for k, v in module.state_dict().items()}, strict=True)


def test_initializers_follow_the_init_strings() -> None:
    spec = """axis B
    model M (x: [B, 64]) -> [B, 64] {
        a = parameter([400, 64], init="zeros")
        b = parameter([400, 64], init="ones")
        c = parameter([400, 64], init=0.25)
        d = parameter([400, 64], init="normal(0.5)")
        e = parameter([400, 64], init="trunc_normal(0.02)")
        f = parameter([400, 64], init="uniform(0.1)")
        return x + a[0] + b[0] + c[0] + d[0] + e[0] + f[0]
    }"""
    torch.manual_seed(0)
    p = dict(build_module(spec_graph(spec)).named_parameters())
    zeros, ones, const, normal, trunc, uniform = (p[k] for k in "abcdef")
    assert torch.equal(zeros, torch.zeros(400, 64)) and torch.equal(ones, torch.ones(400, 64))
    assert torch.equal(const, torch.full((400, 64), 0.25))
    assert abs(normal.std().item() - 0.5) < 0.02 and abs(normal.mean().item()) < 0.02
    assert abs(trunc.std().item() - 0.02) < 0.001  # torch's and timm's bounds, +-2: not cut at 2 std
    assert uniform.abs().max().item() <= 0.1 and uniform.abs().max().item() > 0.099
    assert abs(uniform.std().item() - 0.1 / 3 ** 0.5) < 0.002


def test_an_unknown_initializer_is_a_located_error() -> None:
    # caught when the spec is checked, before any backend runs
    with pytest.raises(ArchError, match="unknown initializer 'kaiming'") as err:
        spec_graph('axis B\nmodel M (x: [B, 4]) -> [B, 4] {\n g = parameter([4], init="kaiming")\n return x * g }')
    assert "t.arch:3" in err.value.render()


def test_the_backend_spells_every_initializer_the_ir_knows() -> None:
    from archc.backends.torch.inits import INITS
    from archc.ops.registry import INITIALIZERS

    assert set(INITS) == set(INITIALIZERS)


def _forwards(tree: ast.Module) -> list[ast.FunctionDef]:
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name != "Scope"]
    return [f for c in classes for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "forward"]


def _forward_text(text: str) -> str:
    return "\n".join(ast.unparse(f) for f in _forwards(ast.parse(text)))


@pytest.mark.parametrize("path", [GPT_TINY, *zoo()], ids=lambda p: p.stem)
def test_each_forward_frees_its_values_and_names_never_shadow(path: Path) -> None:
    graph = small_graph(path) if path != GPT_TINY else elaborate_file(path)
    text = emit_python(graph)
    tree = ast.parse(text)
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
        {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert modules <= {"torch", "torch.nn.functional"}, modules  # needs only torch
    lines = text.splitlines()
    for fwd in _forwards(tree):
        *body, ret = fwd.body
        deleted = [t.id for stmt in body if isinstance(stmt, ast.Delete) for t in stmt.targets]  # type: ignore[attr-defined]
        assigns = [stmt for stmt in body if isinstance(stmt, ast.Assign)]
        assigned = [t.id for stmt in assigns for t in ast.walk(stmt.targets[0]) if isinstance(t, ast.Name)]
        args = [a.arg for a in fwd.args.args[1:]]
        loops = [stmt for stmt in body if isinstance(stmt, ast.For)]
        assert len(set(assigned + args)) == len(assigned) + len(args), "a name is assigned twice"
        assert not set(assigned) & RESERVED
        # every value but the returned ones is freed once, right after its last use
        returned = {n.id for n in ast.walk(ret) if isinstance(n, ast.Name)}
        assert sorted(deleted) == sorted(set(assigned + args) - returned)
        for stmt in assigns:  # each statement is one IR node or one call of a child, with its spec line
            line = lines[stmt.lineno - 1]
            assert re.search(r"\.arch:\d+$", line) or all(isinstance(stmt.value, ast.Name) for _ in [0]), line
        assert all(isinstance(loop.target, ast.Name) and loop.target.id == "layer" for loop in loops)


def test_instance_names_that_torch_uses_for_methods_still_work(tmp_path: Path) -> None:
    spec = """axis B
    model M (x: [B, 8]) -> [B, 8] {
        type = linear(8)
        half = batchnorm()
        return x >> type >> half
    }"""
    graph = spec_graph(spec)
    module = build_module(graph).eval()
    assert set(module.state_dict()) == set(graph.params)
    assert "type.weight" in graph.params and "half.running_mean" in graph.params
    path = tmp_path / "m.py"
    path.write_text(emit_python(graph))
    emitted = import_file(path, "M").eval()
    emitted.load_state_dict(module.state_dict())
    x = torch.randn(3, 8)
    torch.testing.assert_close(emitted(x), module(x))
    assert module.type(torch.float32) is module  # nn.Module's methods are still its methods


def test_an_instance_named_training_is_an_error() -> None:
    graph = spec_graph("axis B\nmodel M (x: [B, 8]) -> [B, 8] {\n training = linear(8)\n return training(x) }")
    with pytest.raises(ArchError, match="'training'"):
        emit_python(graph)


def test_the_emitted_file_is_what_runs_in_memory() -> None:
    graph = elaborate_file(GPT_TINY)
    module: Any = build_module(graph)
    source = Path(type(module).forward.__code__.co_filename)
    import linecache

    assert "".join(linecache.getlines(str(source))) == emit_python(graph)


# ---- freeing and overwriting intermediates -------------------------------------------------------
RESIDUAL = """axis B, C, H, W
model Res (x: [B, 8, H, W]) -> [B, 8, H, W] {
    y = x >> conv2d(8, kernel=3, padding=1, bias=false) >> batchnorm() >> relu
    z = y >> conv2d(8, kernel=3, padding=1, bias=false) >> batchnorm()
    return relu(z + y)
}"""


def test_single_use_fresh_values_are_overwritten_in_place(tmp_path: Path) -> None:
    """relu after batchnorm and `z + y` with z read once become in-place, as in timm's ResNet;
    the model input and y (read twice, saved by the conv for backward) are never overwritten.
    Outputs and gradients match the fx module, which spells every op out of place."""
    from backend_harness import three_ways

    graph = spec_graph(RESIDUAL)
    forward = _forward_text(emit_python(graph))
    assert forward.count("inplace=True") == 2 and forward.count(".add_(") == 1, forward
    assert "F.relu(x" not in forward and "x.add_" not in forward
    models = three_ways(graph, tmp_path)
    for m in models.values():
        m.train()
    x = torch.randn(2, 8, 6, 6)
    outs, grads = {}, {}
    for name, m in models.items():
        xi = x.clone().requires_grad_(True)
        outs[name] = m(xi)
        outs[name].square().sum().backward()  # in training mode: autograd would object to a bad overwrite
        grads[name] = [xi.grad] + [p.grad for p in m.parameters()]
    for name in ("module", "file"):
        assert torch.equal(outs[name], outs["fx"])
        for g, want in zip(grads[name], grads["fx"]):
            torch.testing.assert_close(g, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("spec", "why"), [
    ("axis B\nmodel M (x: [B, 8]) -> [B, 8] { return relu(x) }", "a model input"),
    ("axis B\nmodel M (x: [B, 8]) -> [B, 8] { y = linear(x, 8)\n return relu(y) + y }", "read twice"),
    ("axis B\nmodel M (x: [B, 8]) -> [B, 8] { return relu(identity(linear(x, 8))) }", "an alias"),
    ("axis B\nmodel M (x: [B, 8]) -> [B, 8] { return relu(dropout(linear(x, 8), p=0.1)) }", "maybe an alias"),
    ("axis B\nmodel M (x: [B, 8]) -> [B, 8] { y = sigmoid(linear(x, 8))\n return relu(y) }", "saved by backward"),
    ("axis B\nmodel M (x: [B, 8]) -> [B, 8] { return linear(x, 1) + x }", "broadcast to the output"),
])
def test_values_that_must_survive_are_not_overwritten(spec: str, why: str) -> None:
    forward = _forward_text(emit_python(spec_graph(spec)))
    assert "inplace=True" not in forward and ".add_(" not in forward, why


def test_a_deeper_stack_is_not_a_longer_file() -> None:
    """A class per distinct block: 48 GPT-2 layers are written as 12 are (one class, one loop)."""
    path = specs_root() / "models" / "gpt2.arch"
    texts = {d: emit_python(elaborate_file(path, overrides={"depth": d})) for d in (12, 48)}
    assert texts[12].count("\n") == texts[48].count("\n")
    assert texts[48].count("class GPT2Block(nn.Module)") == 1
    assert "nn.Sequential(*[GPT2Block() for _ in range(48)])" in texts[48]
    from archc.cli import parse_value

    hyper = {d: emit_python(elaborate_file(path, overrides={"depth": d, "connect": parse_value("hyper(n=2)")}))
             for d in (12, 48)}
    assert hyper[12].count("\n") == hyper[48].count("\n")  # the policy's stack loops over its layers too


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "gpt2", "poolformer_s12"])
def test_every_tensor_starts_from_its_initializer(name: str) -> None:
    """Torch leaves (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Embedding, ...) initialize themselves
    where the spec's initializer is the op's default; the rest get the spec's own. Either way each
    tensor is drawn as its IR initializer says: exact constants, uniform(b) within [-b, b] with
    the uniform's spread, normal(s) with std s."""
    graph = small_graph(specs_root() / "models" / f"{name}.arch")
    torch.manual_seed(0)
    state = build_module(graph).state_dict()
    for key, decl in graph.params.items():
        t, init = state[key].double(), decl.init
        if init in ("zeros", "ones"):
            assert torch.equal(t, torch.full_like(t, float(init == "ones"))), key
        elif init.startswith("uniform("):
            b = float(init[8:-1])
            assert t.abs().max() <= b + 1e-7, key
            if t.numel() >= 1000:
                assert abs(t.std().item() - b / 3 ** 0.5) < 0.1 * b, key
        elif init.startswith("normal(") and t.numel() >= 1000:
            assert abs(t.std().item() - float(init[7:-1])) < 0.05 * float(init[7:-1]), key
