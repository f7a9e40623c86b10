"""The module tree computes exactly what the flat graph computes, bit for bit.

The fx GraphModule is built node by node from the IR: one flat graph, the computation as the
IR states it. The torch backend's module (a class per distinct block, torch's leaf modules, loops
over stacks, `del` and in-place ops per forward) must give the same bits on every zoo spec and
every connection policy, in eval mode and in a training step (gradients too).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from archc import resources
from archc.cli import parse_value
from archc.backends.fx import build_graph_module
from archc.backends.torch import build_module
from archc.backends.torch.inputs import example_inputs
from archc.elaborate import elaborate_file
from archc.ir import Graph

from test_torch_emit import small_graph, zoo

POLICIES = ["residual", "residual(post=true)", "rezero", "layerscale(1e-5)", "hyper(n=2)",
            "hyper(n=2, dynamic=false)", "frac(n=2)", 'laurel("rw")', 'laurel("lr", rank=4)',
            'laurel("pa")', "dwa(1, dilation=2)", "dwa(period=2)", "mudd"]
MODELS = {
    "gpt2": {"vocab": 64, "dim": 32, "depth": 3, "heads": 2, "max_len": 16, "pdrop": 0.0},
    "vit_small_patch16_224": {"img_size": 32, "patch": 8, "D": 32, "depth": 3, "heads": 2, "num_classes": 5},
}


def _outputs(out: object) -> tuple[torch.Tensor, ...]:
    """A model's outputs as a tuple (Mixtral returns its logits and its auxiliary loss)."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)  # type: ignore[arg-type]


def _same(graph: Graph, seed: int = 0) -> None:
    torch.manual_seed(seed)
    tree = build_module(graph)
    flat = build_graph_module(graph)
    flat.load_state_dict(tree.state_dict())
    inputs = example_inputs(graph)
    with torch.no_grad():
        want = _outputs(flat.eval()(*inputs))
        got = _outputs(tree.eval()(*inputs))
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
    # a training step: same loss, same gradients
    tree.train(), flat.train()
    losses = []
    for m in (tree, flat):
        m.zero_grad()
        torch.manual_seed(seed + 1)  # dropout draws the same masks in the same order
        loss = sum(out.float().square().mean() for out in _outputs(m(*[x.clone() for x in inputs])))
        loss.backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
    for (name, p), q in zip(tree.named_parameters(), flat.parameters()):
        if p.grad is None:
            assert q.grad is None, name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("path", zoo(), ids=lambda p: p.stem)
def test_every_zoo_model_equals_the_flat_graph(path: Path) -> None:
    _same(small_graph(path))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("model", MODELS)
def test_every_connection_policy_equals_the_flat_graph(model: str, policy: str) -> None:
    params = {k: parse_value(str(v)) for k, v in MODELS[model].items()}
    graph = elaborate_file(resources.specs_root() / "models" / f"{model}.arch",
                           overrides=params | {"connect": parse_value(policy)})
    _same(graph)
