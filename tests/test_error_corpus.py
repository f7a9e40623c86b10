"""The error corpus: every file in `tests/errors/*.arch` is a wrong spec whose header states the error.

    # error: LINE:COL: SUBSTRING OF THE MESSAGE          (first line; `FILE:LINE:COL` when the error
    # hint: SUBSTRING OF THE HINT                          is reported in an imported file)
    # model: NAME                                         (optional, anywhere in the leading comments:
                                                           elaborate with --model NAME)
    # note: LINE:COL: SUBSTRING OF THE NOTE               (optional, repeatable: a note the error
                                                           must carry, at a place in this file)

Each file must fail with an `ArchError` (never another exception) at exactly that line and column,
and its rendering must read `file:line:col: error: message`, then the source line and a caret.
Files under `tests/errors/lib/` are helpers that the corpus imports.

To add a case: write the spec with `# error: ?` on its first line, run this test, and copy the
location and message it reports into the header after checking that they are right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from archc.elaborate import elaborate_file, elaborate_text
from archc.errors import ArchError

CORPUS = Path(__file__).parent / "errors"
CASES = sorted(CORPUS.glob("*.arch"))

_ERROR = re.compile(r"#\s*error:\s*(?:(?P<file>[^\s:]+\.arch):)?(?P<line>\d+):(?P<col>\d+):\s*(?P<message>.+?)\s*$")
_HINT = re.compile(r"#\s*hint:\s*(?P<hint>.+?)\s*$")
_MODEL = re.compile(r"#\s*model:\s*(?P<model>\w+)\s*$")
_NOTE = re.compile(r"#\s*note:\s*(?P<line>\d+):(?P<col>\d+):\s*(?P<text>.+?)\s*$")


@dataclass(frozen=True)
class Expected:
    file: Path
    line: int
    col: int
    message: str
    hint: str | None
    model: str | None
    notes: tuple[tuple[int, int, str], ...] = ()


def expected(path: Path) -> Expected:
    lines = path.read_text(encoding="utf-8").splitlines()
    head = _ERROR.fullmatch(lines[0]) if lines else None
    assert head, f"{path.name}: the first line must be '# error: LINE:COL: message', got {lines[:1]}"
    leading = [ln for ln in lines[1:] if ln.startswith("#")]
    hint = next((m["hint"] for ln in lines[1:2] if (m := _HINT.fullmatch(ln))), None)
    model = next((m["model"] for ln in leading if (m := _MODEL.fullmatch(ln))), None)
    notes = tuple((int(m["line"]), int(m["col"]), m["text"]) for ln in leading if (m := _NOTE.fullmatch(ln)))
    where = (CORPUS / head["file"]) if head["file"] else path
    return Expected(where.resolve(), int(head["line"]), int(head["col"]), head["message"], hint, model, notes)


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 45


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_wrong_spec_fails_with_a_located_error(path: Path) -> None:
    want = expected(path)
    with pytest.raises(ArchError) as info:
        elaborate_file(path, model=want.model)
    err = info.value
    assert err.span is not None, f"no location: {err.render()}"
    got = (Path(err.span.file).resolve(), err.span.line, err.span.col)
    assert got == (want.file, want.line, want.col), err.render()
    assert want.message in err.message, err.render()
    if want.hint is not None:
        assert err.hint is not None and want.hint in err.hint, err.render()
    for line, col, note in want.notes:  # a note at a place in the spec itself
        assert any(at is not None and Path(at.file).resolve() == path.resolve() and (at.line, at.col) == (line, col)
                   and note in text for text, at in err.notes), err.render()

    text = err.render()
    first, *rest = text.splitlines()
    assert first.startswith(f"{err.span.file}:{want.line}:{want.col}: error: "), text
    source = want.file.read_text(encoding="utf-8").splitlines()[want.line - 1]
    assert rest and rest[0].endswith(source.expandtabs(1)), text
    caret = rest[1]
    assert re.fullmatch(r" *\^~*", caret), text
    gutter = rest[0].index("| ") + 2
    assert caret.index("^") == gutter + want.col - 1, text  # the caret stands under the column


# -- regressions found while writing the corpus ---------------------------------------------------

def test_an_if_that_returns_may_be_followed_by_more_statements() -> None:
    spec = """
    axis B, T, D
    block Maybe(on: bool) (x: [B, T, D]) -> [B, T, D] {
        if on {
            return relu(x)
        }
        return x
    }
    model M (x: [B, T, 8]) -> [B, T, 8] { return Maybe(true)(x) >> Maybe(false) }
    """
    g = elaborate_text(spec, "maybe.arch")
    assert [n.op for n in g.nodes] == ["relu"]


def test_statements_after_a_return_are_refused_in_every_branch() -> None:
    spec = """
    axis B, T, D
    model M (x: [B, T, 8]) -> [B, T, 8] {
        if false {
            return x
            x = relu(x)
        }
        return x
    }
    """
    with pytest.raises(ArchError, match="never reached") as info:
        elaborate_text(spec, "dead.arch")
    assert info.value.span is not None and info.value.span.line == 6


def test_op_arguments_are_not_converted() -> None:
    base = "axis B, T\nmodel M (x: [B, T, 8]) -> [B, T, 8] {{ return linear(x, {}) }}\n"
    for arg, message in (('"8"', "valid integer"), ("8.0", "valid integer"), ("true", "valid integer"),
                         ("8, bias=1", "valid boolean")):
        with pytest.raises(ArchError, match=message):
            elaborate_text(base.format(arg), "conv.arch")


def _deep(expr: str, levels: int = 62) -> str:
    return f"""
    axis B, T, D
    block Deep(n: int) (x: [B, T, D]) -> [B, T, D] {{
        if n < {levels} {{
            return {expr}
        }}
        return x
    }}
    model M (x: [B, T, 8]) -> [B, T, 8] {{ return Deep(0)(x) }}
    """


@pytest.mark.parametrize("python_limit", [120, 1000, 100_000])
def test_nesting_limits_are_archcs_own_whatever_pythons_recursion_limit(python_limit: int) -> None:
    """archc's nesting limits (MAX_TREE_DEPTH, MAX_NESTING, 64 blocks) decide, never Python's
    recursion limit nor what ran before: the same specs give the same result at any limit."""
    import sys

    from archc.elaborate.elaborator import MAX_NESTING

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(python_limit)
    try:
        # 12 blocks deep, each with a 400-deep expression evaluated before the next block: accepted
        left = "(" * 400 + "x" + " + x)" * 400
        assert len(elaborate_text(_deep(f"Deep(n + 1)({left})", 12), "deep.arch").nodes) == 12 * 400
        # the next block applied inside a 400-deep expression at each level: past MAX_NESTING
        right = "(x + " * 400 + "Deep(n + 1)(x)" + ")" * 400
        with pytest.raises(ArchError, match="nests too deeply") as info:
            elaborate_text(_deep(right), "deep.arch")
        assert info.value.span is not None and info.value.span.line == 5
        assert MAX_NESTING < 62 * 400
        # a sum of 2,000 terms is 2,000 levels of syntax: refused by the parser, located
        with pytest.raises(ArchError, match="nests too deeply") as info:
            elaborate_text(_deep("x" + " + x" * 2000), "sum.arch")
        assert info.value.span is not None and info.value.span.line == 5
    finally:
        sys.setrecursionlimit(old)
    assert sys.getrecursionlimit() == old


def test_deeply_nested_command_line_values_are_arch_errors() -> None:
    from archc.frontend.parser import parse_expr

    for text in ("-" * 5000 + "1", "not " * 5000 + "true", "[" * 5000 + "]" * 5000):
        with pytest.raises(ArchError):
            parse_expr(text, "<command line>")


def test_a_syntax_error_on_the_first_token_is_located() -> None:
    with pytest.raises(ArchError, match="unexpected 'else'") as info:
        elaborate_text("else { }\n", "first.arch")
    assert info.value.span is not None and (info.value.span.line, info.value.span.col) == (1, 1)


def test_a_byte_order_mark_and_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    spec = tmp_path / "windows.arch"
    spec.write_bytes(b"\xef\xbb\xbfaxis B\r\nmodel M() (x: [B, 4]) -> [B, 4] {\r\n    return relu(x)  # c\r\n}\r\n")
    assert [n.op for n in elaborate_file(spec).nodes] == ["relu"]


def test_an_error_in_the_standard_library_points_at_each_file_on_the_way() -> None:
    """docs/language.md, "Errors": the error is where it happens (std/nn.arch), with a note at the
    application in each file that led there, the user's line last."""
    spec = ("import \"std/transformer.arch\"\nmodel M (x: [B, T, 16]) -> [B, T, 16] {\n"
            "    return TransformerBlock(mixer=identity, act=chunk(2))(x)\n}\n")
    with pytest.raises(ArchError, match=r"linear\(\) takes 1 tensor input, got 2") as info:
        elaborate_text(spec, "user.arch")
    err = info.value
    assert err.span is not None and err.span.file.endswith("std/nn.arch")
    where = [(text, Path(at.file).name, at.line) for text, at in err.notes if at is not None]
    assert where[-2][:2] == ("in 'Mlp', applied here", "transformer.arch")
    assert where[-1] == ("in 'TransformerBlock', applied here", "user.arch", 3)
    assert "user.arch:3:12: note: in 'TransformerBlock', applied here" in err.render()
