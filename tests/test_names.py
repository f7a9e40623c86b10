"""Instance names (docs/language.md, "named instances"): names built from values
(`denselayer{i + 1}`, `@scope("denselayer" + str(i + 1))`), `@scope` relative to the block's
instance, and `@scope` that would name nothing as a located error."""

from __future__ import annotations

import re

import pytest

from archc.elaborate import elaborate_text
from archc.errors import ArchError
from archc.frontend.fmt import format_module
from archc.frontend.parser import parse


def _params(text: str) -> set[str]:
    return set(elaborate_text(text, "t.arch").params)


def test_a_built_name_names_the_instance_without_loop_indices() -> None:
    text = """axis B
    model M (x: [B, 8]) -> [B, 8] {
        for i in range(3) {
            denselayer{i + 1} = linear(8)
            stage{i}_norm = layernorm()
        }
        return x >> denselayer1 >> denselayer3 >> stage2_norm
    }"""
    assert _params(text) == {"denselayer1.weight", "denselayer1.bias", "denselayer3.weight", "denselayer3.bias",
                             "stage2_norm.weight", "stage2_norm.bias"}


def test_scope_and_str_name_instances_in_a_loop() -> None:
    text = """axis B, C
    block DenseLayer(growth: int) (x: [B, C]) -> [B, growth] { return linear(x, growth) }
    model M (x: [B, 8]) -> [B, 24] {
        for i in range(2) {
            @scope("denselayer" + str(i + 1))
            layer = DenseLayer(8)
            x = concat(x, layer(x))
        }
        return x
    }"""
    assert _params(text) == {"denselayer1.linear.weight", "denselayer1.linear.bias",
                             "denselayer2.linear.weight", "denselayer2.linear.bias"}


def test_scope_inside_a_block_is_relative_to_its_instance() -> None:
    text = """axis B, D
    block Layer (x: [B, D]) -> [B, D] {
        @scope("proj") y = linear(x, D)
        return y
    }
    model M (x: [B, 8]) -> [B, 8] {
        a = Layer()
        b = Layer()
        return a(b(x))
    }"""
    # each instance its own weights (an absolute path would tie a and b without a word)
    assert _params(text) == {"a.proj.weight", "a.proj.bias", "b.proj.weight", "b.proj.bias"}


def test_scope_in_the_model_still_ties_weights() -> None:
    text = """axis B, T
    model M (tokens: i64[B, T]) -> [B, T, 50] {
        wte = embedding(50, 16)
        @scope("wte") y = linear(wte(tokens), 50, bias=false)
        return y
    }"""
    assert _params(text) == {"wte.weight"}


def test_scope_names_a_block_instance_it_binds() -> None:
    text = """axis B, D
    block Layer (x: [B, D]) -> [B, D] { return linear(x, D) }
    model M (x: [B, 8]) -> [B, 8] {
        @scope("model") m = Layer()
        return m(m(x))
    }"""
    assert _params(text) == {"model.linear.weight", "model.linear.bias"}


@pytest.mark.parametrize(("body", "message", "at"), [
    # @scope on the application of an instance named before: it keeps its name
    ("blk = Layer()\n    @scope(\"other\") y = blk(x)\n    return y", "@scope names nothing here", "@scope"),
    ("@scope(\"p\") n = 3\n    return x", "@scope names nothing here", "@scope"),
    ("for i in range(2) {\n        layer{i} = linear(8)\n        layer{i + 1} = linear(8)\n    }\n    return x",
     "the instance name 'layer1' is already used", "layer{i}"),
    ("n = \"a.b\"\n    x{n} = linear(8)\n    return x", "builds the name \"xa.b\", which is not a name", "x{n}"),
    ("x{1.5} = linear(8)\n    return x", "a name is built from ints and strings; {1.5} is", "1.5"),
    ("@scope(\"layer\" + str(1.5)) y = linear(x, 8)\n    return y", "str() takes one int or string", "str("),
])
def test_naming_mistakes_are_located_errors(body: str, message: str, at: str) -> None:
    text = ("axis B, D\nblock Layer (x: [B, D]) -> [B, D] { return linear(x, D) }\n"
            f"model M (x: [B, 8]) -> [B, 8] {{\n    {body}\n}}\n")
    with pytest.raises(ArchError, match=re.escape(message)) as err:
        elaborate_text(text, "t.arch")
    span = err.value.span
    assert span is not None, err.value.render()
    assert text.splitlines()[span.line - 1][span.col - 1:].startswith(at), err.value.render()


def test_the_formatter_keeps_built_names() -> None:
    text = "axis B\nmodel M (x: [B, 8]) -> [B, 8] {\n    for i in range(2) { denselayer{i+1} = linear(8) }\n" \
           "    return denselayer1(x)\n}\n"
    out = format_module(parse(text, "t.arch"))
    assert "denselayer{i + 1} = linear(8)" in out
    assert _params(out) == _params(text)


def test_an_empty_scope_in_a_block_is_its_own_instance() -> None:
    """@scope("") is relative too: in the instance `blk` it names `blk` itself (it made the path
    'blk.' and an internal error)."""
    text = ("axis B\nblock Blk (x: [B, 8]) -> [B, 8] {\n    @scope(\"\") y = linear(x, 8)\n    return y\n}\n"
            "model M (x: [B, 8]) -> [B, 8] {\n    return Blk()(x)\n}\n")
    assert _params(text) == {"blk.weight", "blk.bias"}
