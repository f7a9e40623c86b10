"""The diagram of every zoo spec, read back from its SVG as data: it parses, every wire carries
its axes, every top-level instance is named, repeated layers show their count, and the picture
has exactly the boxes, clusters and wires the diagram model says."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from archc.analysis.structure import scope_tree, tied_uses
from archc.backends.graphviz import build_diagram, render
from archc.elaborate import elaborate_file

MODELS = Path(__file__).resolve().parents[2] / "specs" / "models"

# spec -> texts the picture must show: stack runs with their count, blocks by name
EXPECTED = {
    "resnet18": ["layer1.0-1 x2", "layer2", "layer2.0", "downsample", "inside: as layer1.0-1", "fc: linear"],
    "resnet50": ["layer1.0", "layer1.1-2 x2", "Bottleneck(planes=64, stride=1", "fc: linear"],
    "vit_small_patch16_224": ["blocks.0-11 x12", "patch_embed", "attn", "mlp", "cls_token", "[1, 197, 384]"],
    "convnext_tiny": ["stages.0", "blocks.0-2 x3", "blocks.0-8 x9", "head"],
    "poolformer_s12": ["blocks.0-1 x2", "blocks.0-5 x6", "token_mixer", "mixer = Pooling(pool_size=3)"],
    "repvgg_a0": ["stem", "stages", "head"],
    "gpt2": ["h.0-11 x12", "transformer", "attn", "mlp", "shares weight = transformer.wte.weight"],
    "llama": ["layers.0-29 x30", "rotary_emb", "self_attn", "mlp", "shares weight = model.embed_tokens.weight"],
}


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' is not installed")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_diagram(name: str, tmp_path: Path, svg: Callable) -> None:
    path = MODELS / f"{name}.arch"
    if not path.is_file():
        pytest.skip(f"{path.name} is not written yet")
    graph = elaborate_file(path)
    model = build_diagram(graph)
    d = svg(render(graph, tmp_path / f"{name}.svg").path)

    # the picture is the model: the same clusters, boxes and wires
    assert len(d.clusters) == len(list(model.walk())) - 1
    assert len(d.nodes) == sum(len(c.boxes) for c in model.walk())
    assert len(d.edges) == len(model.wires)
    # every wire is labelled with axes, the batch axis first where the value has one
    labels = [e[2][0] if e[2] else "" for e in d.edges]
    assert all(lab.startswith(("[", "i64[")) and lab.endswith(("]", "x2", "x3")) for lab in labels), labels
    assert any(lab.startswith("[B, ") for lab in labels)
    # every instance at the top of the model is named in the picture
    tree = scope_tree(graph)
    for child in tree.children[""]:
        assert d.has(child), child
    for text in EXPECTED[name]:
        assert d.has(text), f"{text!r} is not in the diagram of {name}"
    # the model's inputs and outputs, and a graph with ties draws each tied use once
    for port in (*graph.inputs, *graph.outputs):
        assert d.has(port.name)
    assert sum(1 for ts in d.nodes.values() if any("shares" in t for t in ts)) <= len(tied_uses(graph))
