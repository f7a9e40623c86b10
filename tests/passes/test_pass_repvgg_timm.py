"""RepVGG-A0 end to end against timm: timm's `repvgg_a0` (random init, BatchNorm statistics and
affine parameters randomized) loads into specs/models/repvgg_a0.arch with strict=True; archc's
deploy pipeline folds it; the deployed archc module matches timm's own
`timm.utils.model.reparameterize_model(model)` within 1e-4, and the deployed IR is plain 3x3
convolutions and ReLUs plus the head."""

from __future__ import annotations

import copy
from types import ModuleType

import pytest
import torch

from archc import zoo
from archc.backends.torch import build_module
from archc.deploy import deploy
from archc.elaborate import elaborate_file, elaborate_text
from archc.ir.printer import canonical, print_graph

pytestmark = pytest.mark.slow  # runs a reference model at 224x224


def randomized_repvgg(timm: ModuleType) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("repvgg_a0", pretrained=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in bns:  # random affine parameters; then statistics of a random batch (activations
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) * 0.5 + 0.75)  # stay of order
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=g) * 0.1)  # one), perturbed
            bn.momentum = 1.0
        model.train()
        model(torch.randn(4, 3, 224, 224, generator=g))
        for bn in bns:
            bn.momentum = 0.1
            bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=g) * 0.1)
            bn.running_var.mul_(torch.rand(bn.running_var.shape, generator=g) * 0.4 + 0.8)
    return model.eval()


def test_deployed_repvgg_a0_matches_timm_reparameterized(timm: ModuleType) -> None:
    from timm.utils.model import reparameterize_model

    model = randomized_repvgg(timm)
    graph = elaborate_file(zoo.spec_path("repvgg_a0"))
    sd = zoo.timm_to_archc("repvgg_a0", model.state_dict())
    train = build_module(graph)
    train.load_state_dict(sd, strict=True)

    result = deploy(graph, sd, tolerance=1e-4)
    deployed = build_module(result.graph)
    deployed.load_state_dict(result.state_dict, strict=True)
    reference = reparameterize_model(copy.deepcopy(model)).eval()

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = reference(x), deployed.eval()(x)
        assert (model(x) - want).abs().max().item() <= 1e-4  # timm's own fold, for scale
    err = (got - want).abs().max().item()
    assert err <= 1e-4, f"deployed archc vs timm reparameterized: max abs error {err:.3g}"

    convs = [n for n in result.graph.nodes if n.op == "conv2d"]
    assert len(convs) == 22 and all(n.attrs["kernel"] == 3 and n.attrs["groups"] == 1 for n in convs)
    assert {n.op for n in result.graph.nodes} == {"conv2d", "relu", "global_avgpool", "linear"}
    assert [n.op for n in result.graph.nodes].count("relu") == 22
    assert canonical(elaborate_text(print_graph(result.graph), "repvgg_a0.deploy.arch")) == canonical(result.graph)


def test_archc_deploy_reads_a_timm_checkpoint(timm: ModuleType, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main

    weights = tmp_path / "repvgg_a0_timm.pt"
    torch.save(randomized_repvgg(timm).state_dict(), weights)
    out = tmp_path / "out"
    assert main(["deploy", str(zoo.spec_path("repvgg_a0")), "--weights", str(weights), "--key-map", "timm",
                 "-o", str(out)]) == 0
    assert "212 ops -> 46" in capsys.readouterr().out
    deployed = elaborate_file(out / "repvgg_a0.deploy.arch")
    build_module(deployed).load_state_dict(torch.load(out / "deployed.pt", weights_only=True), strict=True)
