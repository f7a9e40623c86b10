"""archc render: the diagram of a small GPT read back from the SVG, the dot fallback, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from archc import cli
from archc.backends.graphviz import build_diagram, render, to_dot
from archc.backends.graphviz.diagram import SKIP_COLOR
from archc.elaborate import elaborate_file, elaborate_text
from archc.errors import ArchError

ROOT = Path(__file__).resolve().parents[2]
GPT = ROOT / "specs" / "examples" / "gpt_tiny.arch"
GPT2 = ROOT / "specs" / "models" / "gpt2.arch"
BIG = {"depth": 12, "D": 768, "heads": 12}
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' is not installed")


@pytest.fixture(scope="module")
def gpt12() -> object:
    return elaborate_file(GPT, overrides=BIG)


@needs_dot
def test_gpt_diagram_as_data(gpt12: object, tmp_path: Path, svg: Callable) -> None:
    out = render(gpt12, tmp_path / "net.svg")  # type: ignore[arg-type]
    assert not out.fallback and out.path == tmp_path / "net.svg"
    d = svg(out.path)
    # the stack is drawn once, with its count; its blocks are clusters named as in the spec
    titles = [c[0] for c in d.clusters]
    assert titles == ["h.0-11 x12", "attn", "mlp"]
    layer = d.clusters[0]
    assert "Block(mixer=Attention, mlp_ratio=4)" in layer
    assert "7.09M params each, 85.1M in all" in layer
    assert "mixer = Attention(heads=12, causal=true)" in d.clusters[1]  # the block in its slot
    # every wire carries its axes
    labels = [e[2][0] for e in d.edges if e[2]]
    assert len(labels) == len(d.edges)
    assert "[B, T, D=768]" in labels and "i64[B, T]" in labels and "[B, T, vocab=50257]" not in labels
    assert "[three=3, B, h=12, T, d=64]" in labels
    assert "[B, h=12, T, d=64] x3" in labels  # q, k, v: three parallel wires drawn as one
    # two residual additions per layer: + nodes with a skip wire each, plus the embedding sum
    plus = [n for n, t in d.nodes.items() if t == ["+"]]
    assert len(plus) == 3
    skips = [e for e in d.edges if e[3] == SKIP_COLOR]
    assert len(skips) == 2 and all(e[1] in plus for e in skips)
    assert d.has("qkv: linear") and d.has("features=2304") and d.has("tokens") and d.has("out")


def test_depth_does_not_change_the_drawing_of_a_stack() -> None:
    small = build_diagram(elaborate_file(GPT, overrides={**BIG, "depth": 2}))
    large = build_diagram(elaborate_file(GPT, overrides={**BIG, "depth": 48}))
    assert len(small.wires) == len(large.wires)
    assert sum(len(c.boxes) for c in small.walk()) == sum(len(c.boxes) for c in large.walk())


def test_expand_draws_every_layer() -> None:
    d = build_diagram(elaborate_file(GPT, overrides={"depth": 3}), expand=True)
    labels = [c.label for c in d.walk()]
    assert sum("<b>h.0</b>" in s or "<b>h.1</b>" in s or "<b>h.2</b>" in s for s in labels) == 3
    assert not any("h.0-2" in s for s in labels)


def test_depth_collapses_blocks_into_boxes() -> None:
    g = elaborate_file(GPT, overrides=BIG)
    one = build_diagram(g, depth=1)
    assert [c.id for c in one.walk()] == ["root"]  # the layer is a box, not a cluster
    box = next(b for b in one.root.boxes if "x12" in b.label)
    assert "Block(mixer=Attention, mlp_ratio=4)" in box.label
    # the box keeps its wires in and out
    assert any(w.dst == box.id for w in one.wires) and any(w.src == box.id for w in one.wires)
    two = build_diagram(g, depth=2)
    assert len(list(two.walk())) == 2 and "attn" in to_dot(g, depth=2)


def test_tied_use_is_drawn_where_it_is_used() -> None:
    g = elaborate_text("""axis B, T
model Tied(vocab: int = 50, D: int = 8) (tokens: i64[B, T]) -> f32[B, T, vocab] {
    wte = embedding(vocab, D)
    @scope("wte")
    logits = linear(wte(tokens), vocab, bias = false)
    return logits
}
""")
    d = build_diagram(g)
    assert [c.id for c in d.walk()] == ["root"]
    assert any("shares weight = wte.weight" in b.label for b in d.root.boxes)


def test_dot_output_needs_no_graphviz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    out = render(elaborate_file(GPT), tmp_path / "net.dot")
    assert not out.fallback
    text = out.path.read_text()
    assert text.startswith("// GPT") and "digraph" in text and "cluster_" in text


def test_fallback_writes_dot_when_graphviz_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    target = tmp_path / "img" / "net.png"
    assert cli.main(["render", str(GPT), "-o", str(target)]) == 0
    assert not target.exists()
    assert (tmp_path / "img" / "net.dot").read_text().lstrip().startswith("// GPT")
    err = capsys.readouterr().err
    assert "apt-get install graphviz" in err and "net.dot" in err
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["net.dot"]  # no temporary left


@needs_dot
@pytest.mark.parametrize("suffix, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_cli_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, magic: bytes) -> None:
    target = tmp_path / f"net.{suffix}"
    assert cli.main(["render", str(GPT), "-o", str(target), "--set", "depth=3"]) == 0
    assert target.read_bytes().startswith(magic)
    assert f"wrote {target}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", str(GPT), "-o", str(tmp_path / "net.jpg")]) == 1
    assert "svg, png, pdf, dot" in capsys.readouterr().err
    with pytest.raises(ArchError):
        render(elaborate_file(GPT), tmp_path / "net.gif")



def test_cli_after_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    target = str(tmp_path / "n.dot")
    if importlib.util.find_spec("archc.passes") is None:
        assert cli.main(["render", str(GPT), "-o", target, "--after", "dce"]) == 1
        assert "no passes yet" in capsys.readouterr().err
        return
    assert cli.main(["render", str(GPT), "-o", target, "--after", "no_such_pass"]) == 1
    assert "unknown pass 'no_such_pass'" in capsys.readouterr().err
    if importlib.util.find_spec("archc.passes.dce") is not None:
        assert cli.main(["render", str(GPT), "-o", target, "--after", "dce"]) == 0
        assert Path(target).read_text().startswith("// GPT")


@needs_dot
@pytest.mark.parametrize("spec, sets", [(GPT, ["D=768", "heads=12"]), (GPT2, [])])
def test_48_layers_draw_as_few_nodes_as_2(tmp_path: Path, spec: Path, sets: list[str], svg: Callable) -> None:
    """A deep stack is drawn once with its count (x48), so the diagram (and dot's layout work) does
    not grow with the depth: 48 layers give the nodes 2 layers give (no timing in a test)."""
    if not spec.is_file():
        pytest.skip(f"{spec.name} is not written yet")
    drawn = {}
    for depth in (2, 48):
        args = ["render", str(spec), "-o", str(tmp_path / f"net{depth}.svg"), "--set", f"depth={depth}"]
        for s in sets:
            args += ["--set", s]
        assert cli.main(args) == 0
        drawn[depth] = svg(tmp_path / f"net{depth}.svg")
    assert drawn[48].has("x48")
    assert len(drawn[48].nodes) == len(drawn[2].nodes)
