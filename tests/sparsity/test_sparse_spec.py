"""`@sparse(...)` is a checked attribute of a weight (#16): it parses into a pattern, goes only to
ops whose weight has a reduction axis, gives each a `weight_mask` buffer, and every misuse is an
error at the annotation with a caret."""

from __future__ import annotations

import pytest

from archc.elaborate import elaborate_text
from archc.errors import ArchError
from archc.ir import sparsity as S
from archc.ir.graph import AnnotationIR
from archc.ir.verify import VerifyError, load_json, verify

HEAD = "axis B, D\n"
MLP = """block Mlp() (x: [B, D]) -> [B, D] {
    return x >> linear(4 * D) >> gelu >> layernorm >> linear(D)
}
"""


def graph(body: str, width: int = 64):
    return elaborate_text(HEAD + MLP + f"model M (x: [B, {width}]) -> [B, {width}] {{\n{body}\n}}\n", file="m.arch")


def error(body: str, width: int = 64) -> ArchError:
    with pytest.raises(ArchError) as e:
        graph(body, width)
    return e.value


def test_a_statement_annotation_reaches_the_linears_of_the_block_it_calls() -> None:
    g = graph('    @sparse("2:4") y = Mlp()(x)\n    return y')
    sparse = {n.scope: S.of(n) for n in g.nodes if S.of(n)}
    assert set(sparse) == {"mlp.linear", "mlp.linear_1"}  # not gelu, not layernorm
    assert all(s == S.Sparsity(kind="n:m", n=2, m=4) for s in sparse.values())
    mask = g.params["mlp.linear.weight_mask"]
    assert (mask.shape, mask.dtype, mask.trainable, mask.init) == ((256, 64), "bool", False, "nm_mask(2,4)")
    assert not any(a.name == "sparse" for n in g.nodes if n.op in ("gelu", "layernorm") for a in n.annotations)
    verify(g)


@pytest.mark.parametrize("ann, want", [
    ('"2:4"', S.Sparsity(kind="n:m", n=2, m=4)),
    ('"1:8"', S.Sparsity(kind="n:m", n=1, m=8)),
    ("0.9", S.Sparsity(kind="unstructured", density=0.1)),
    ("block=[16, 32], density=0.25", S.Sparsity(kind="block", block=(16, 32), density=0.25)),
])
def test_patterns_parse(ann: str, want: S.Sparsity) -> None:
    g = graph(f"    @sparse({ann}) y = linear(x, 64)\n    return y")
    assert S.of(g.nodes[0]) == want
    assert g.params["linear.weight_mask"].init == want.init


def test_an_inner_annotation_wins_over_an_outer_one() -> None:
    text = HEAD + """block L() (x: [B, D]) -> [B, D] {
    @sparse(0.5) y = linear(x, D)
    return y
}
model M (x: [B, 64]) -> [B, 64] {
    @sparse("2:4") y = L()(x)
    return y
}
"""
    g = elaborate_text(text, file="m.arch")
    assert S.of(g.nodes[0]) == S.Sparsity(kind="unstructured", density=0.5)
    assert [a.name for a in g.nodes[0].annotations].count("sparse") == 1


def test_a_block_annotation_makes_its_linears_sparse() -> None:
    text = HEAD + """@sparse("2:4")
block L() (x: [B, D]) -> [B, D] {
    return x >> linear(D) >> relu >> linear(D)
}
model M (x: [B, 64]) -> [B, 64] { return L()(x) }
"""
    g = elaborate_text(text, file="m.arch")
    assert sorted(n.scope for n in g.nodes if S.of(n)) == ["l.linear", "l.linear_1"]


def test_convolutions_group_along_input_channels() -> None:
    text = """axis B, C, H, W
model M (x: [B, 8, H, W]) -> [B, 16, H, W] {
    @sparse("2:4") y = conv2d(x, 16, 3, padding=1)
    return y
}
"""
    g = elaborate_text(text, file="m.arch")
    assert g.params["conv2d.weight_mask"].shape == (16, 8, 3, 3)


@pytest.mark.parametrize("body, message", [
    ('    @sparse("banana") y = linear(x, 64)\n    return y', "is not an N:M pattern"),
    ('    @sparse("4:4") y = linear(x, 64)\n    return y', "1 <= N < M"),
    ("    @sparse(1.5) y = linear(x, 64)\n    return y", "strictly between 0 and 1"),
    ("    @sparse(true) y = linear(x, 64)\n    return y", "@sparse(true)"),
    ('    @sparse("2:4", 1) y = linear(x, 64)\n    return y', "takes one argument"),
    ("    @sparse(block=[16, 0], density=0.5) y = linear(x, 64)\n    return y", "two positive ints"),
    ("    @sparse(block=[16, 16]) y = linear(x, 64)\n    return y", "block= and density="),
    ('    @sparse("2:4") y = relu(x)\n    return y', "reaches no op with a weight"),
    ('    @sparse("2:4") y = layernorm(x)\n    return y', "reaches no op with a weight"),
    ('    @sparse("2:4") y = linear(x, 64)\n    return y', "not a multiple of 4"),
    ("    @sparse(block=[16, 16], density=0.5) y = linear(x, 64)\n    return y", "not made of 16x16 blocks"),
    ("    @sparse(0.999) y = linear(x, 8)\n    return y", "keeps none"),
])
def test_misuse_is_an_error_at_the_annotation(body: str, message: str) -> None:
    width = 30 if "not a multiple" in message or "not made of" in message else 64
    if "keeps none" in message:
        body = body.replace("linear(x, 8)", "linear(x, 64)")
        width = 8
    err = error(body.replace("linear(x, 64)", f"linear(x, {width})"), width)
    assert message in err.message
    assert err.span is not None and err.span.line == 6 and err.span.col == 5  # the `@` of the annotation


def test_a_tied_weight_cannot_take_a_mask() -> None:
    err = error('    a = linear(64)\n    y = a(x)\n    @sparse("2:4") z = linear(y, 64, tied="a")\n    return z')
    assert "tied" in err.message and err.span.line == 8


def test_an_ir_file_with_a_bad_sparse_annotation_is_refused() -> None:
    g = graph('    @sparse("2:4") y = linear(x, 64)\n    return y')
    bad = g.model_copy(update={"nodes": [g.nodes[0].model_copy(update={
        "annotations": (AnnotationIR(name="sparse", args=("banana",)),)})]})
    with pytest.raises(VerifyError, match="not an N:M pattern"):
        verify(bad)
    no_mask = g.model_copy(update={"nodes": [g.nodes[0].model_copy(update={"annotations": ()})]})
    with pytest.raises(VerifyError, match="the op owns"):
        verify(no_mask)
    assert load_json(g.model_dump_json()).params["linear.weight_mask"].dtype == "bool"


def test_the_printed_ir_keeps_the_annotation_and_reparses() -> None:
    from archc.ir.printer import print_graph

    g = graph('    @sparse(block=[16, 16], density=0.25) y = linear(x, 64)\n    return y')
    again = elaborate_text(print_graph(g), file="printed.arch")
    assert S.of(again.nodes[0]) == S.of(g.nodes[0])
    assert again.params["linear.weight_mask"] == g.params["linear.weight_mask"]


SPARSE_SPEC = HEAD + MLP + """model M (x: [B, 64]) -> [B, 64] {
    @sparse("2:4") y = Mlp()(x)
    @sparse(0.9) z = linear(y, 64)
    return z
}
"""


def test_check_and_summary_report_dense_and_nonzero_parameters_and_flops(tmp_path, capsys) -> None:
    import json

    from archc.cli import main

    spec = tmp_path / "m.arch"
    spec.write_text(SPARSE_SPEC)
    assert main(["check", str(spec)]) == 0
    out = capsys.readouterr().out
    # 64*256+256 + 2*256 (layernorm) + 256*64+64 + 64*64+64 = 37,760 dense; 2:4 zeroes 16,384 of the
    # 32,768 weights of the Mlp, 0.9 zeroes 3,686 of 4,096
    assert "note: 3 sparse weights (2:4 (x2); unstructured, 0.1 kept (x1)): 17,690 of 37,760 parameters nonzero" in out
    assert "no GPU speed-up expected for 2 of them: f32" in out
    assert main(["summary", str(spec), "--json", "--axis", "B=8"]) == 0
    rows = {r["weight"]: r for r in json.loads(capsys.readouterr().out)["sparsity"]}
    fc1 = rows["mlp.linear.weight"]
    assert (fc1["dense"], fc1["kept"], fc1["flops"], fc1["effective_flops"]) == (16384, 8192, 2 * 8 * 16384, 8 * 16384)
    assert rows["linear.weight"]["kept"] == 410


def test_the_diagram_marks_sparse_ops() -> None:
    from archc.backends.graphviz import to_dot

    dot = to_dot(elaborate_text(SPARSE_SPEC, file="m.arch"))
    assert dot.count("sparse 2:4") == 2 and dot.count("sparse unstructured, 0.1 kept") == 1
    assert dot.count("rounded,filled,dotted") == 3
