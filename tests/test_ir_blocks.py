"""The IR's block structure (archc/ir/blocks.py): calls, boundary values and structural keys."""

from __future__ import annotations

import json

import pytest

from archc import resources
from archc.elaborate import elaborate_file, elaborate_text
from archc.ir import Graph
from archc.ir.blocks import annotate
from archc.ir.verify import VerifyError, verify
from archc.passes.manager import run_pipeline

GPT2 = resources.specs_root() / "models" / "gpt2.arch"
SMALL = {"vocab": 64, "dim": 32, "depth": 3, "heads": 2, "max_len": 16}


def test_layers_of_a_stack_chain_and_share_one_key() -> None:
    g = elaborate_file(GPT2, overrides=SMALL)
    layers = [g.scopes[f"transformer.h.{i}"] for i in range(3)]
    assert all(len(info.calls) == 1 for info in layers)
    assert len({info.key for info in layers}) == 1 and layers[0].key
    for a, b in zip(layers, layers[1:]):
        assert a.calls[0].outputs == b.calls[0].inputs  # each layer feeds the next
        assert a.calls[0].stop == b.calls[0].start
    assert g.scopes["transformer.h.0.attn"].key != g.scopes["transformer.h.0.mlp"].key
    assert not g.scopes["transformer.h.0.attn.c_attn"].calls  # an op instance: the backend decides
    wider = elaborate_file(GPT2, overrides=SMALL | {"dim": 64})
    assert wider.scopes["transformer.h.0"].key != layers[0].key  # other input types, other key


def test_a_shared_instance_applied_twice_has_two_calls_and_a_tied_use_none() -> None:
    g = elaborate_text("""axis B
block Mix() (x: [B, 8]) -> [B, 8] {
    fc = linear(8)
    return relu(fc(x))
}
model M (x: [B, 8]) -> [B, 8] {
    m = Mix()
    return m(m(x))
}""", "m.arch")
    calls = g.scopes["m"].calls
    assert len(calls) == 2 and calls[0].outputs == calls[1].inputs
    import torch

    from archc.backends.fx import build_graph_module
    from archc.backends.torch import build_module

    tree, seen = build_module(g), []
    tree.m.register_forward_hook(lambda mod, args, out: seen.append(out))
    flat = build_graph_module(g)
    flat.load_state_dict(tree.state_dict())
    x = torch.randn(3, 8)
    assert torch.equal(tree(x), flat(x)) and len(seen) == 2  # the module runs once per application


def test_the_json_carries_the_structure_and_old_files_are_refused() -> None:
    g = elaborate_file(GPT2, overrides=SMALL)
    data = json.loads(g.to_json())
    assert data["schema_version"] == 2 and data["scopes"]["transformer.h.1"]["calls"]
    assert Graph.from_json(g.to_json()) == g
    data["schema_version"] = 1
    with pytest.raises(ValueError, match="written by another archc"):
        Graph.from_json(json.dumps(data))


def test_verify_refuses_a_structure_that_is_not_the_graphs() -> None:
    g = elaborate_file(GPT2, overrides=SMALL)
    data = json.loads(g.to_json())
    data["scopes"]["transformer.h.1"]["calls"][0]["outputs"] = ["%1"]
    with pytest.raises(VerifyError, match="block structure"):
        verify(Graph.from_json(json.dumps(data)))


def test_passes_leave_a_structure_that_matches_the_graph() -> None:
    g = elaborate_file(resources.specs_root() / "models" / "resnet18.arch", overrides={"num_classes": 10})
    out = run_pipeline(g, ["fold_bn", "dce", "cse"]).graph
    assert out == annotate(out)
    assert out.scopes["layer1.0"].calls and out.scopes["layer1.0"].key == out.scopes["layer1.1"].key
