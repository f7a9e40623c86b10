"""The generated module is a real module tree (#12), and torch's module-level tools work on it.

Each test here would fail on the old flat module, where a block instance was a parameter holder
with no forward and one flat forward ran every op: hooks on blocks never fired, a block could not
be called on its own, activation checkpointing and regional compilation had nothing to wrap, and
there were no `nn.BatchNorm2d` / `nn.Linear` instances for SyncBatchNorm or PEFT to find.

The models: ResNet-18 at 32x32 and GPT-2 (specs/models/gpt2.arch, whose attention projection is
`c_attn`) with tiny dimensions.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archc
from archc.elaborate import elaborate_file
from archc.ops import registry
from archc.resources import specs_root

RESNET18 = specs_root() / "models" / "resnet18.arch"
GPT2 = specs_root() / "models" / "gpt2.arch"
GPT_TINY = specs_root() / "examples" / "gpt_tiny.arch"

RESNET_ARGS: dict[str, Any] = {"img_size": 32, "num_classes": 10}
GPT2_ARGS: dict[str, Any] = {"vocab": 64, "dim": 32, "depth": 4, "heads": 2, "max_len": 32}
VOCAB = GPT2_ARGS["vocab"]


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return archc.compile(RESNET18, **RESNET_ARGS)


def gpt2(**overrides: Any) -> nn.Module:
    torch.manual_seed(0)
    return archc.compile(GPT2, **{**GPT2_ARGS, **overrides})


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))


def has_forward(module: nn.Module) -> bool:
    return type(module).forward is not nn.Module.forward


def capture(modules: dict[str, nn.Module]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list]:
    """Forward hooks that record (a clone of) each module's single input and its output."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str, _module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs[name] = args[0].detach().clone()
        outputs[name] = out.detach().clone()

    handles = [m.register_forward_hook(functools.partial(hook, name)) for name, m in modules.items()]
    return inputs, outputs, handles


# --- 1. hooks ---------------------------------------------------------------------------------

# (spec, overrides, example input, callable modules, holders): the counts are those of the spec
# (ResNet-18: the model, 4 stages and 3 downsample pipelines as nn.Sequential, 8 BasicBlocks,
# 20 conv2d, 20 batchnorm, fc; no holders. GPT-2 at depth 4: the model, GPT2Model, `h` as
# nn.Sequential, 4 x (block, attention, mlp), wte, 4 x (2 layernorms, 4 linears), ln_f; holders:
# `wpe` (positions, a bare parameter) and the tied `lm_head`, whose weight is `transformer.wte.weight`.)
HOOK_CASES = {
    "resnet18": (RESNET18, RESNET_ARGS, images, 57, 0),
    "gpt2": (GPT2, GPT2_ARGS, tokens, 41, 2),
    "gpt_tiny": (GPT_TINY, {"vocab": VOCAB, "D": 32, "depth": 2, "heads": 2}, tokens, 23, 1),
}


@pytest.mark.parametrize("case", sorted(HOOK_CASES))
def test_forward_hooks_fire_once_on_every_block_instance_and_leaf_module(case: str) -> None:
    path, args, make_input, n_callable, n_holders = HOOK_CASES[case]
    graph = elaborate_file(path, overrides=args)
    torch.manual_seed(0)
    model = archc.compile(path, **args).eval()
    modules = dict(model.named_modules())
    # The module tree is the spec's instance tree: one submodule per IR scope, under its name.
    assert set(modules) == {""} | set(graph.scopes)

    holders = {n for n, m in modules.items() if not has_forward(m)}
    for name in holders:
        assert isinstance(modules[name], nn.ModuleList) or type(modules[name]).__name__ == "Scope", name
    callable_ = set(modules) - holders
    assert (len(callable_), len(holders)) == (n_callable, n_holders)
    # Every block instance of the spec has a forward of its own (not a holder).
    blocks = {p for p, s in graph.scopes.items() if s.kind != "stack" and s.kind not in registry.names()}
    assert blocks and blocks <= callable_

    calls: dict[str, int] = dict.fromkeys(modules, 0)

    def hook(name: str, *_: Any) -> None:
        calls[name] += 1

    for name, module in modules.items():
        module.register_forward_hook(functools.partial(hook, name))
    with torch.no_grad():
        model(make_input())
    assert {n for n, c in calls.items() if c} == callable_
    assert all(calls[n] == 1 for n in callable_)  # each instance runs once: no instance is shared


# --- 2. a block called on its own computes what the model computes there ------------------------


def test_resnet_blocks_called_alone_and_chained_by_hand_reproduce_the_model() -> None:
    model = resnet18().eval()
    x = images()
    blocks = {f"layer{i}.{j}": model.get_submodule(f"layer{i}.{j}") for i in range(1, 5) for j in range(2)}
    inputs, outputs, _ = capture(blocks)
    with torch.no_grad():
        expected = model(x)
        for name, block in blocks.items():
            assert torch.equal(block(inputs[name]), outputs[name]), name
        # layer4 as a whole: its two blocks in order, from layer4's input to layer4's output
        h = inputs["layer4.0"]
        for block in model.layer4:
            h = block(h)
        assert torch.equal(h, outputs["layer4.1"])
        # the whole network by hand: stem, the 4 stages, head
        h = F.max_pool2d(F.relu(model.bn1(model.conv1(x))), 3, 2, 1)
        assert torch.equal(h, inputs["layer1.0"])
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in stage:
                h = block(h)
        assert torch.equal(model.fc(h.mean((2, 3))), expected)


def test_resnet_stage_is_callable() -> None:
    """A stack whose layers feed each other is an nn.Sequential, as timm's and torchvision's stages."""
    model = resnet18().eval()
    inputs, outputs, _ = capture({"layer4": model.layer4})
    with torch.no_grad():
        model(images())
        assert isinstance(model.layer4, nn.Sequential)
        assert torch.equal(model.layer4(inputs["layer4"]), outputs["layer4"])


def test_gpt2_blocks_called_alone_and_chained_by_hand_reproduce_the_hidden_state() -> None:
    model = gpt2().eval()
    t = tokens()
    tr = model.transformer
    watched = {f"h.{i}": blk for i, blk in enumerate(tr.h)} | {"ln_f": tr.ln_f, "transformer": tr}
    inputs, outputs, _ = capture(watched)
    with torch.no_grad():
        logits = model(t)
        assert torch.equal(tr.h[3](inputs["h.3"]), outputs["h.3"])
        # embeddings, then h[0..3], then ln_f, then the tied head
        h = tr.wte(t) + tr.wpe.weight[: t.shape[1]]
        assert torch.equal(h, inputs["h.0"])
        for i, block in enumerate(tr.h):
            h = block(h)
            assert torch.equal(h, outputs[f"h.{i}"]), i
        assert torch.equal(h, inputs["ln_f"])
        h = tr.ln_f(h)
        assert torch.equal(h, outputs["transformer"])
        assert torch.equal(F.linear(h, tr.wte.weight), logits)


# --- 3. per-block activation checkpointing -------------------------------------------------------


def saved_for_backward(model: nn.Module, t: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    """Elements packed for backward during one forward (each tensor counted once), and the
    gradients of one training step, by parameter name (the checkpoint wrapper's prefix removed)."""
    packed: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        packed[id(x)] = x.numel()
        return x

    torch.manual_seed(2)  # dropout is on (training mode): the same masks in both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        logits = model(t)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), t[:, 1:].reshape(-1))
    loss.backward()
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in model.named_parameters()}
    return sum(packed.values()), grads


def test_per_block_activation_checkpointing_saves_less_and_keeps_gradients() -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        CheckpointWrapper,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    t = tokens()
    plain = gpt2().train()
    saved_plain, grads_plain = saved_for_backward(plain, t)

    model = gpt2().train()
    # The class is taken before wrapping: `type(model.transformer.h[0])` evaluated inside check_fn
    # would be CheckpointWrapper once h[0] is wrapped, and only h[0] would be checkpointed.
    block_cls = type(model.transformer.h[0])
    apply_activation_checkpointing(
        model,
        checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: isinstance(m, block_cls),
    )
    assert all(isinstance(b, CheckpointWrapper) for b in model.transformer.h)
    saved_ckpt, grads_ckpt = saved_for_backward(model, t)

    # depth 4, dim 32, 2x16 tokens: 141,472 elements saved without, 9,376 with (measured)
    assert saved_ckpt * 4 < saved_plain, (saved_ckpt, saved_plain)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name, g in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], g, msg=name)


# --- 4. SyncBatchNorm ---------------------------------------------------------------------------


def test_convert_sync_batchnorm_converts_every_batchnorm_and_keeps_eval_outputs() -> None:
    graph = elaborate_file(RESNET18, overrides=RESNET_ARGS)
    bn_scopes = {p for p, s in graph.scopes.items() if s.kind == "batchnorm"}
    model = resnet18()
    with torch.no_grad():
        for _ in range(2):  # running statistics that are not the initial 0 and 1
            model(images() * 3 + 1)
    model.eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    sync = {n for n, m in converted.named_modules() if isinstance(m, nn.SyncBatchNorm)}
    assert len(bn_scopes) == 20 and sync == bn_scopes
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert converted.state_dict().keys() == state.keys()
    with torch.no_grad():
        assert torch.equal(converted(x), expected)


# --- 5. PEFT LoRA -------------------------------------------------------------------------------


def test_peft_lora_on_c_attn_trains_one_step() -> None:
    import peft  # after conftest.py's torchvision workaround (peft imports transformers)

    t = tokens()
    base = gpt2(pdrop=0.0)
    with torch.no_grad():
        expected = base(t)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"]))
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # lora_A and lora_B on each block's c_attn, and nothing else trainable
    assert len(lora) == 2 * GPT2_ARGS["depth"]
    assert all(".attn.c_attn.lora_" in n for n in lora)
    with torch.no_grad():
        assert torch.equal(model(t), expected)  # lora_B starts at zero

    opt = torch.optim.SGD(list(lora.values()), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        logits = model(t)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), t[:, 1:].reshape(-1))
        assert torch.isfinite(loss)
        loss.backward()
        for name, p in lora.items():
            assert p.grad is not None, name
            # lora_A's gradient is zero while lora_B is zero, i.e. in the first step only
            if "lora_B" in name or step == 1:
                assert p.grad.abs().sum() > 0, (step, name)
        opt.step()

    with torch.no_grad():
        assert not torch.allclose(model(t), expected)
    merged = model.merge_and_unload()
    for key, value in merged.state_dict().items():
        if ".attn.c_attn.weight" in key:
            assert not torch.equal(value, base_state[key]), key  # LoRA's delta, merged
        else:
            assert torch.equal(value, base_state[key]), key  # the frozen base, untouched


# --- 6. regional compilation --------------------------------------------------------------------


def test_regional_compile_compiles_the_repeated_block_once() -> None:
    torch._dynamo.reset()
    compiled_graphs = []
    graph_calls = []

    def backend(gm: torch.fx.GraphModule, _example_inputs: list) -> Any:
        compiled_graphs.append(gm)

        def run(*args: Any) -> Any:
            graph_calls.append(1)
            return gm.forward(*args)

        return run

    model = gpt2(depth=12, pdrop=0.0).eval()
    t = tokens()
    try:
        with torch.no_grad():
            expected = model(t)
            for block in model.transformer.h:
                block.compile(backend=backend)
            out = model(t)
            model(t)
        # one Dynamo compile for the 12 instances of the one block class, run 12 times per forward
        assert len(compiled_graphs) == 1
        assert len(graph_calls) == 24
        torch.testing.assert_close(out, expected)
    finally:
        torch._dynamo.reset()


SHARED = """axis B, D
block Mlp (x: [B, D]) -> [B, D] {
    fc = linear(D)
    return x >> fc >> gelu()
}
model M (x: [B, 8]) -> [B, 8] {
    shared = Mlp()
    f = linear(8)
    y = shared(x)
    z = f(linear(y, 8))
    return f(shared(z)) + y
}
"""


def test_a_shared_instance_applied_twice_apart_is_one_module_called_twice(tmp_path: Any) -> None:
    """A named block (and a named op) applied twice, with other ops between, is one module whose
    forward the parent calls twice: its hooks see both applications, its leaf too. It used to be a
    parameter holder whose second application ran inline on its weights (F.linear on self.shared.fc's)."""
    spec = tmp_path / "shared.arch"
    spec.write_text(SHARED)
    torch.manual_seed(0)
    model = archc.compile(spec)
    assert type(model.shared).__name__ == "Mlp" and isinstance(model.f, nn.Linear)
    calls: dict[str, int] = {}
    for name in ("shared", "shared.fc", "f"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: calls.update({n: calls.get(n, 0) + 1}))
    x = torch.randn(3, 8)
    sd = model.state_dict()

    def mlp(v: torch.Tensor) -> torch.Tensor:
        return F.gelu(F.linear(v, sd["shared.fc.weight"], sd["shared.fc.bias"]))

    y = mlp(x)
    z = F.linear(F.linear(y, sd["linear.weight"], sd["linear.bias"]), sd["f.weight"], sd["f.bias"])
    want = F.linear(mlp(z), sd["f.weight"], sd["f.bias"]) + y
    torch.testing.assert_close(model(x), want, rtol=1e-6, atol=1e-6)
    assert calls == {"shared": 2, "shared.fc": 2, "f": 2}
    from archc.backends.fx.build import build_graph_module

    torch.testing.assert_close(build_graph_module(elaborate_file(spec), model)(x), model(x), rtol=0, atol=0)
