"""What the language means: each test compiles a small spec and checks the typed IR it gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from archc.elaborate import elaborate_file, elaborate_text
from archc.errors import ArchError
from archc.ir.verify import verify
from archc.sizes import Size


def compile_text(text: str, **overrides: object):
    graph = elaborate_text(text, "t.arch", overrides=overrides)
    return verify(graph)


def out_type(text: str, **overrides: object) -> str:
    g = compile_text(text, **overrides)
    return g.outputs[0].type.sizes_str()


def test_named_axes_bind_from_inputs_and_are_usable_as_sizes() -> None:
    spec = """
    axis B, T, D
    block Mlp(ratio: int = 4) (x: [*, D]) -> [*, D] {
        return x >> linear(ratio * D) >> gelu >> linear(D)
    }
    model M (x: [B, T, 48]) -> [B, T, 48] { return Mlp(ratio=2)(x) }
    """
    g = compile_text(spec)
    assert [n.op for n in g.nodes] == ["linear", "gelu", "linear"]
    assert g.values[g.nodes[0].outputs[0]].sizes_str() == "[B, T, 96]"
    assert g.params["mlp.linear.weight"].shape == (96, 48)
    assert g.params["mlp.linear_1.weight"].shape == (48, 96)
    assert str(g.outputs[0].type) == "f32[B, T, D=48]"  # the axis keeps its name through the block


def test_axis_arithmetic_is_solved_exactly() -> None:
    spec = """
    axis B, C, H, W
    block Down (x: [B, C, H, W]) -> [B, 2*C, H/2, W/2] {
        return conv2d(x, 2 * C, 3, stride=2, padding=1)
    }
    model M (x: [B, 8, 32, 32]) -> [B, 16, 16, 16] { return Down()(x) }
    """
    assert out_type(spec) == "[B, 16, 16, 16]"
    with pytest.raises(ArchError, match="31 is not divisible by 2"):
        compile_text(spec.replace("[B, 8, 32, 32]", "[B, 8, 31, 31]").replace("[B, 16, 16, 16]", "[B, 16, 15, 15]")
                     .replace("[B, 2*C, H/2, W/2]", "[B, 2*C, H/2, W/2]"))


def test_symbolic_axes_stay_symbolic() -> None:
    spec = """
    axis B, T
    model M (x: [B, T, 8]) -> [B, T, 8] { return x + x >> relu }
    """
    g = compile_text(spec)
    assert g.axes == ("B", "T")
    assert g.outputs[0].type.sizes[0] == Size.sym("B")


def test_dtypes_are_checked() -> None:
    spec = """
    axis B, T
    model M (tokens: i64[B, T]) -> f32[B, T, 16] { return embedding(tokens, 100, 16) }
    """
    assert out_type(spec) == "[B, T, 16]"
    with pytest.raises(ArchError, match="floating-point"):
        compile_text("axis B\nmodel M (x: i64[B, 4]) -> [B, 4] { return linear(x, 4) }")


def test_interfaces_are_checked_where_a_block_is_passed() -> None:
    spec = """
    axis B, T, D
    interface Mixer (x: [B, T, D]) -> [B, T, D]
    block Attn(heads: int) : Mixer {
        q, k, v = x >> linear(3 * D) >> rearrange("b t (three h d) -> three b h t d", three=3, h=heads) >> unbind()
        return attention(q, k, v) >> rearrange("b h t d -> b t (h d)")
    }
    block Pool (x: [B, C, H, W]) -> [B, C, H, W] { return x }
    block Meta(mixer: Mixer) (x: [B, T, D]) -> [B, T, D] {
        token_mixer = mixer
        return x + token_mixer(layernorm(x))
    }
    model M (x: [B, T, 32]) -> [B, T, 32] { return Meta(mixer=Attn(heads=4))(x) }
    """
    g = compile_text(spec)
    assert "meta.token_mixer.linear.weight" in g.params
    with pytest.raises(ArchError, match="does not fit the interface 'Mixer'"):
        compile_text(spec.replace("mixer=Attn(heads=4)", "mixer=Pool"))
    # an op in the slot is checked when applied: identity fits, a shape change does not
    assert out_type(spec.replace("mixer=Attn(heads=4)", "mixer=identity")) == "[B, T, 32]"
    with pytest.raises(ArchError, match="slot 'mixer: Mixer' returns"):
        compile_text(spec.replace("mixer=Attn(heads=4)", "mixer=linear(8)"))


def test_named_instances_name_parameters_and_share_weights() -> None:
    spec = """
    axis B, D
    model M (x: [B, 16]) -> [B, 16] {
        fc = linear(16)
        y = fc(fc(x))
        return y >> linear(16) >> linear(16)
    }
    """
    g = compile_text(spec)
    assert set(g.params) == {"fc.weight", "fc.bias", "linear.weight", "linear.bias",
                             "linear_1.weight", "linear_1.bias"}
    assert g.nodes[0].params == g.nodes[1].params  # applied twice, one set of weights


def test_stack_names_layers_like_a_sequential_and_passes_the_index() -> None:
    spec = """
    axis B, D
    block Layer(p: float) (x: [B, D]) -> [B, D] { return x + drop_path(linear(x, D), p) }
    model M (x: [B, 8]) -> [B, 8] {
        blocks = stack(3) { i => Layer(p = 0.1 * i) }
        return blocks(x)
    }
    """
    g = compile_text(spec)
    assert [k for k in g.params if k.endswith("weight")] == [f"blocks.{i}.linear.weight" for i in range(3)]
    drops = [n.attrs["p"] for n in g.nodes if n.op == "drop_path"]
    assert drops == pytest.approx([0.0, 0.1, 0.2])
    assert g.scopes["blocks"].kind == "stack" and g.scopes["blocks.1"].kind == "Layer"


def test_for_loops_unroll_and_index_instance_names() -> None:
    spec = """
    axis B
    model M (x: [B, 4]) -> [B, 4] {
        for i in range(2) {
            fc = linear(4)
            x = fc(x)
        }
        return x
    }
    """
    assert {"fc.0.weight", "fc.1.weight"} <= set(compile_text(spec).params)


def test_compile_time_if_selects_a_branch() -> None:
    spec = """
    axis B
    model M(wide: bool = false, depth: int = 2) (x: [B, 4]) -> [B, 4] {
        if wide and depth > 1 {
            x = x >> linear(16) >> relu >> linear(4)
        } elif depth == 2 {
            x = relu(x)
        } else {
            x = x
        }
        return x
    }
    """
    assert [n.op for n in compile_text(spec).nodes] == ["relu"]
    assert [n.op for n in compile_text(spec, wide=True).nodes] == ["linear", "relu", "linear"]
    assert compile_text(spec, depth=3).nodes == ()


def test_tuples_and_multiple_outputs() -> None:
    spec = """
    axis B, D
    block Two (x: [B, D]) -> ([B, D/2], [B, D/2]) { return chunk(x, 2) }
    model M (x: [B, 8]) -> ([B, 4], [B, 4]) {
        a, b = Two()(x)
        return b, a
    }
    """
    g = compile_text(spec)
    assert [p.type.sizes_str() for p in g.outputs] == ["[B, 4]", "[B, 4]"]


def test_indexing_lists_and_tensors() -> None:
    spec = """
    axis B, N
    model M(widths: list = [8, 16]) (x: [B, 5, 8]) -> [B, 16] {
        y = x[:, 0]
        return linear(y, widths[1])
    }
    """
    g = compile_text(spec)
    assert [n.op for n in g.nodes] == ["select", "linear"]
    assert out_type(spec) == "[B, 16]"


def test_imports_resolve_against_the_spec_folder_and_the_library(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.arch").write_text(
        "axis B, D\nlet WIDTH = 12\nblock Proj (x: [B, D]) -> [B, WIDTH] { return linear(x, WIDTH) }\n")
    (tmp_path / "main.arch").write_text(
        'import "lib/blocks.arch"\nimport "lib/blocks.arch" as lib\n'
        "model M (x: [B, 4]) -> [B, 12] { return x >> Proj() >> relu >> lib.Proj() }\n")
    g = verify(elaborate_file(tmp_path / "main.arch"))
    assert g.outputs[0].type.sizes_str() == "[B, 12]"


def test_model_parameters_are_overridable() -> None:
    spec = "axis B\nmodel M(width: int = 4) (x: [B, 4]) -> [B, width] { return linear(x, width) }"
    assert out_type(spec, width=7) == "[B, 7]"


def test_a_block_param_default_may_use_earlier_params() -> None:
    spec = """
    axis B, D
    block Mlp(dim: int, hidden: int = 4 * dim) (x: [B, D]) -> [B, D] { return x >> linear(hidden) >> linear(D) }
    model M (x: [B, 8]) -> [B, 8] { return Mlp(dim=8)(x) }
    """
    assert compile_text(spec).params["mlp.linear.weight"].shape == (32, 8)


def test_pipelines_of_callables_are_callables() -> None:
    spec = """
    axis B, D
    model M (x: [B, 8]) -> [B, 8] {
        branch = layernorm >> linear(8) >> gelu
        return residual(x, branch)
    }
    """
    g = compile_text(spec)
    assert [n.op for n in g.nodes] == ["layernorm", "linear", "gelu", "add"]
    assert "branch.linear.weight" in g.params


def test_annotations_are_kept_in_the_ir() -> None:
    spec = """
    axis B
    model M (x: [B, 8]) -> [B, 8] {
        @sparse("2:4") y = linear(x, 8)
        return y
    }
    """
    node = compile_text(spec).nodes[0]
    assert node.annotations[0].name == "sparse" and node.annotations[0].args == ("2:4",)


def test_the_zoo_and_std_specs_all_check() -> None:
    from archc import resources

    specs = sorted(resources.specs_root().rglob("*.arch"))
    assert specs
    for path in specs:
        if "std" in path.parts:
            continue  # libraries have no model of their own
        verify(elaborate_file(path))


def test_broadcasting_keeps_the_larger_axis_whatever_its_label() -> None:
    spec = """
    axis B
    model M (x: [B, 4, 6, 6]) -> [B, 4, 6, 6] {
        s = parameter([4], init=1.0)
        return x * rearrange(s, "c -> c 1 1")
    }
    """
    assert out_type(spec) == "[B, 4, 6, 6]"
    assert out_type(spec.replace("x * rearrange", "rearrange").replace(', "c -> c 1 1")', ', "c -> c 1 1") * x')) \
        == "[B, 4, 6, 6]"


def test_a_named_instance_applied_twice_shares_its_anonymous_parts() -> None:
    spec = """
    axis B, D
    block Mlp (x: [B, D]) -> [B, D] { return x >> linear(D) >> relu }
    model M (x: [B, 16]) -> [B, 16] {
        m = Mlp()
        g = linear(16) >> relu
        return m(m(g(g(x))))
    }
    """
    g = compile_text(spec)
    assert sorted(k for k in g.params if k.endswith("weight")) == ["g.linear.weight", "m.linear.weight"]


def test_statement_annotations_reach_the_ops_of_called_blocks() -> None:
    spec = """
    axis B, D
    block Mlp (x: [B, D]) -> [B, D] { return x >> linear(D) >> relu }
    model M (x: [B, 16]) -> [B, 16] {
        @deploy @sparse("2:4") y = Mlp()(x)
        return y
    }
    """
    nodes = compile_text(spec).nodes
    assert all(n.annotations and n.annotations[0].name == "deploy" for n in nodes)  # every op it makes
    # @sparse stays only where a weight can take it (the linear, not the relu): docs/sparsity.md
    assert [any(a.name == "sparse" for a in n.annotations) for n in nodes] == [n.op == "linear" for n in nodes]
    with pytest.raises(ArchError, match="unknown annotation '@bogus' on a block"):
        compile_text("axis B\n@bogus model M (x: [B, 4]) -> [B, 4] { return x }")


def test_tied_shares_another_instances_parameters() -> None:
    spec = """
    axis B, T
    model M (tokens: i64[B, T]) -> [B, T, 50] {
        wte = embedding(50, 8)
        head = linear(50, bias=false, tied=wte)
        return head(wte(tokens))
    }
    """
    g = compile_text(spec)
    assert set(g.params) == {"wte.weight"} and g.nodes[1].params == {"weight": "wte.weight"}
    with pytest.raises(ArchError, match="there is no parameter 'nope.weight'"):
        compile_text(spec.replace("tied=wte", 'tied="nope"'))


def test_unknown_initializers_are_caught_when_checking() -> None:
    with pytest.raises(ArchError, match="unknown initializer 'bogus"):
        compile_text('axis B\nmodel M (x: [B, 4]) -> [B, 4] { p = parameter([4], init="bogus(1)")\n return x * p }')


def test_python_overrides_take_lists_and_expressions_as_text() -> None:
    spec = """
    axis B
    model M(widths: list = [4], act: fn = relu) (x: [B, 4]) -> [B, 6] { return x >> linear(widths[0]) >> act }
    """
    g = compile_text(spec, widths=[6], act='gelu(approximate="tanh")')
    assert [n.op for n in g.nodes] == ["linear", "gelu"] and g.nodes[1].attrs["approximate"] == "tanh"
