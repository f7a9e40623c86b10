"""specs/examples/fast_feedforward.arch: a decoder with each fast feedforward variant trains (soft
form), runs one path per token in eval (hard form), and the flat fx graph computes the same."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archc import resources
from archc.backends.fx import build_graph_module
from archc.backends.torch import build_module
from archc.elaborate import elaborate_file

SPEC = resources.specs_root() / "examples" / "fast_feedforward.arch"


@pytest.mark.parametrize("ff", ["fff", "neurons"])
def test_each_variant_trains_and_runs_hard_in_eval(ff: str) -> None:
    g = elaborate_file(SPEC, overrides={"ff": ff, "vocab": 32, "dim": 32, "max_len": 16})
    assert {n.op for n in g.nodes} & {"fff", "fff_neurons"} == {"fff" if ff == "fff" else "fff_neurons"}
    torch.manual_seed(0)
    m = build_module(g)
    flat = build_graph_module(g)
    flat.load_state_dict(m.state_dict())
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 32, (4, 16), generator=gen)
    for mode in (True, False):
        m.train(mode)
        flat.train(mode)
        assert torch.equal(m(tokens), flat(tokens))
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    losses = []
    for _ in range(20):  # learn to predict the next token of one fixed batch
        loss = F.cross_entropy(m(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    m.eval()
    with torch.no_grad():
        assert m(tokens).shape == (4, 16, 32)
