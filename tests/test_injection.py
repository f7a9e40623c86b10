"""Spec text never becomes code: the torch target, the IR printer, IR files and deploy.

The reproducers of issue #10 (a `str` default that closes the generated docstring, the same in a
list, a `@scope` path that reaches torch.fx, file names with newlines and quotes, a backslash
that is legal in .arch but not in Python, names equal after NFKC) and a corpus of hostile strings
go through `archc.compile` (torch and fx), `archc build --target torch` (the file is imported),
`archc ir --arch` (the text elaborates back), `archc ir --load` and `archc deploy`. Each payload
would create the file MARK in the test's folder if it ran; no test may find it, and every
artifact must be valid. The other targets (Triton, CUDA, ONNX, graphviz) are covered by
tests/test_injection_backends.py.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import archc
from archc.cli import main as cli
from archc.elaborate import elaborate_file, elaborate_text
from archc.errors import ArchError
from archc.ir import Graph
from archc.ir.printer import arch_str
from archc.resources import specs_root

RUN = "__import__('os').system('touch MARK')"
HOSTILE = [
    f'"""+str({RUN})[:0]+"""',                      # closes a docstring (issue #10)
    f"'''+str({RUN})[:0]+'''",
    f"\n{RUN}\n#",                                  # a new line of code
    f"\r{RUN}\r",
    f"\u2028{RUN}",                                 # a line separator to str.splitlines
    f"\x0c\x0b{RUN}",
    "C:\\Users\\x\\N{BULLET}\\U0001",               # legal in .arch, broken escapes in Python
    "\\",                                           # a lone backslash at the end
    f"*/ {RUN} /*",
    "{{ self.__init__.__globals__ }} {% raw %}",    # template syntax
    "%s %(x)s {0}",
    "ﬁ ＡＢＣ Ω й 😀",                              # NFKC-folded and non-ASCII
    "x" * 3000,
]
IDS = [f"s{i}" for i in range(len(HOSTILE))]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Payloads touch MARK in the current folder: the test's own."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _import_file(path: Path, name: str) -> object:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def _every_python_artifact(spec: Path, workdir: Path, model_args: dict[str, object]) -> None:
    """Compile `spec` through the torch and fx targets, write and import the .py file, print the
    IR as .arch and elaborate that back; every artifact works and nothing ran."""
    x = torch.randn(2, 16)
    m = archc.compile(spec)
    out = m(x)
    fx = archc.compile(spec, target="fx")
    fx.load_state_dict(m.state_dict())
    torch.testing.assert_close(fx(x), out)
    assert cli(["build", str(spec), "--target", "torch", "-o", str(workdir / "model.py")]) == 0
    module = _import_file(workdir / "model.py", "archc_injection_model")
    built = module.M()  # type: ignore[attr-defined]
    built.load_state_dict(m.state_dict())
    torch.testing.assert_close(built(x), out)
    assert cli(["ir", str(spec), "--arch", "-o", str(workdir / "printed.arch")]) == 0
    again = elaborate_file(workdir / "printed.arch")
    assert list(again.params) == list(m.state_dict())
    graph = elaborate_file(spec)
    assert graph.model_args == model_args
    assert not (workdir / "MARK").exists()


@pytest.mark.parametrize("text", HOSTILE, ids=IDS)
def test_a_str_model_parameter_stays_a_string(workdir: Path, text: str) -> None:
    spec = workdir / "m.arch"
    spec.write_text(f"axis B\nmodel M(tag: str = {arch_str(text)}) (x: [B, 16]) -> [B, 16] {{\n"
                    "    return linear(x, 16)\n}\n")
    _every_python_artifact(spec, workdir, {"tag": text})
    source = (workdir / "model.py").read_text()
    module = _import_file(workdir / "model.py", "archc_injection_doc")
    assert repr(text) in (module.__doc__ or "") or len(text) > 1000, source[:400]


@pytest.mark.parametrize("text", HOSTILE[:4] + HOSTILE[6:8], ids=IDS[:4] + IDS[6:8])
def test_a_str_in_a_list_and_a_block_argument_stays_a_string(workdir: Path, text: str) -> None:
    spec = workdir / "m.arch"
    spec.write_text("axis B\n"
                    "block Tagged(tag: str) (x: [B, 16]) -> [B, 16] {\n    proj = linear(16)\n    return proj(x)\n}\n"
                    f"model M(tags: list = [{arch_str(text)}, \"plain\"]) (x: [B, 16]) -> [B, 16] {{\n"
                    "    body = Tagged(tags[0])\n    return body(x)\n}\n")
    _every_python_artifact(spec, workdir, {"tags": [text, "plain"]})
    module = _import_file(workdir / "model.py", "archc_injection_block")
    assert repr(text) in (type(module.M().body).__doc__ or "")  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", [
    'a"+str(getattr(__import__("os"),"system")("touch MARK"))[:0]+"',  # issue #10, fx's getattr
    "a\nb", "a b", "a..b", ".a", "a.", "a-b", "ﬁ", "Ω", "a.0-x",
])
def test_a_scope_path_segment_must_be_a_name_or_an_index(workdir: Path, path: str) -> None:
    text = f"axis B\nmodel M (x: [B, 16]) -> [B, 16] {{\n    @scope({arch_str(path)}) y = linear(x, 16)\n    return y\n}}\n"
    with pytest.raises(ArchError) as err:
        elaborate_text(text, "m.arch")
    shown = err.value.render()
    assert shown.startswith("m.arch:3:5: error: @scope path") and "^" in shown
    assert not (workdir / "MARK").exists()


def test_scope_paths_of_names_and_indices_are_fine() -> None:
    graph = elaborate_text("axis B\nmodel M (x: [B, 16]) -> [B, 16] {\n"
                           '    @scope("blocks.0.fc_1") y = linear(x, 16)\n    return y\n}\n', "m.arch")
    assert list(graph.params) == ["blocks.0.fc_1.weight", "blocks.0.fc_1.bias"]


def test_nfkc_equal_names_never_become_one_parameter(workdir: Path) -> None:
    """`ﬁ` and `fi` are one identifier to Python: archc refuses the first in a spec and in an IR file."""
    text = "axis B\nmodel M (x: [B, 16]) -> [B, 16] {\n    fi = linear(16)\n    return fi(x)\n}\n"
    graph = elaborate_text(text, "m.arch")
    dump = graph.to_json().replace('"fi.', '"\\ufb01.').replace('"fi"', '"\\ufb01"')  # `fi` becomes `ﬁ`
    assert "\\ufb01" in dump
    (workdir / "bad.json").write_text(dump)
    with pytest.raises(ValueError, match="not a valid name"):
        Graph.from_json(dump)
    assert cli(["ir", "--load", str(workdir / "bad.json")]) == 1


@pytest.mark.parametrize("field,value", [
    ("name", "M\nimport os"), ("name", "M(x)"), ("port", "x; import os"), ("axis", "B)"),
    ("param", "fc.weight\n"), ("param", "fc.we ight"), ("scope", "fc\"]"), ("arg", "a b"),
])
def test_an_ir_file_with_a_hostile_name_is_refused_with_a_message(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                                   field: str, value: str) -> None:
    graph = elaborate_text("axis B\nmodel M(k: int = 1) (x: [B, 16]) -> [B, 16] {\n    fc = linear(16)\n"
                           "    return fc(x)\n}\n", "m.arch")
    data = json.loads(graph.to_json())
    if field == "name":
        data["name"] = value
    elif field == "port":
        data["inputs"][0]["name"] = value
    elif field == "axis":
        data["axes"] = [value]
    elif field == "param":
        data["params"][value] = data["params"].pop("fc.weight") | {"name": value}
        data["nodes"][0]["params"]["weight"] = value
    elif field == "scope":
        data["scopes"][value] = data["scopes"].pop("fc") | {"path": value}
    else:
        data["model_args"] = {value: 1}
    path = workdir / "bad.json"
    path.write_text(json.dumps(data))
    assert cli(["ir", "--load", str(path)]) == 1
    err = capsys.readouterr().err
    assert "not a valid archc IR file" in err and "not a valid name" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ['we"ird', "new\nline", "it's", "a\\b", "x\n'''\n" + RUN + "\n#",
                                  "*) __attribute__((constructor)) void f(){} \\\\", "ﬁle"])
def test_file_names_reach_artifacts_only_quoted(workdir: Path, name: str) -> None:
    lib = workdir / f"{name}.arch"
    lib.write_text("axis B\nblock Proj() (x: [B, 16]) -> [B, 16] {\n    fc = linear(16)\n    return fc(x)\n}\n")
    spec = workdir / "main.arch"
    spec.write_text(f"import {arch_str(lib.name)}\naxis B\nmodel M (x: [B, 16]) -> [B, 16] {{\n"
                    "    p = Proj()\n    return p(x)\n}\n")
    _every_python_artifact(spec, workdir, {})
    source = (workdir / "model.py").read_text()
    assert repr(lib.name)[1:-1] in source  # the comments name the file, escaped
    printed = (workdir / "printed.arch").read_text()
    assert len(printed.splitlines()) == len(elaborate_file(spec).nodes) + 7


def test_instances_named_like_module_methods_work(workdir: Path) -> None:
    """`forward`, `reset_parameters`, `training` ... are fine instance names: torch keeps them apart."""
    spec = workdir / "m.arch"
    spec.write_text("axis B\nmodel M (x: [B, 16]) -> [B, 16] {\n    reset_parameters = linear(16)\n"
                    "    forward = linear(16)\n    to = linear(16)\n    return x >> reset_parameters >> forward >> to\n}\n")
    _every_python_artifact(spec, workdir, {})
    m = archc.compile(spec)
    assert list(m.state_dict()) == ["reset_parameters.weight", "reset_parameters.bias", "forward.weight",
                                    "forward.bias", "to.weight", "to.bias"]


@pytest.mark.parametrize("text", [HOSTILE[0], HOSTILE[2], HOSTILE[6]], ids=["doc", "newline", "backslash"])
def test_deploy_writes_artifacts_that_hold_the_text_as_data(workdir: Path, text: str) -> None:
    spec = workdir / "m.arch"
    spec.write_text(f"axis B, C, H, W\nmodel M(tag: str = {arch_str(text)}) (x: [B, 3, 8, 8]) -> [B, 8, 8, 8] {{\n"
                    "    conv = conv2d(8, 3, padding=1, bias=false)\n    bn = batchnorm()\n    return x >> conv >> bn\n}\n")
    m = archc.compile(spec)
    torch.save(m.state_dict(), workdir / "w.pt")
    assert cli(["deploy", str(spec), "--weights", str(workdir / "w.pt"), "-o", str(workdir / "out")]) == 0
    deployed = next((workdir / "out").glob("*.arch"))
    graph = elaborate_file(deployed)
    assert graph.model_args.get("tag", text) == text
    assert not (workdir / "MARK").exists()


def test_spec_text_the_file_does_not_hold_is_no_error() -> None:
    """An explicit `connect=residual` stack is an nn.Sequential: its argument text is nowhere in the
    file, which is safe (verify_python checks the spec text the file holds, not that it holds it)."""
    from archc.backends.quote import GeneratedCodeError, verify_python
    from archc.backends.torch import emit_python
    from archc.elaborate import elaborate_text

    text = emit_python(elaborate_text("""axis B, D
block L() (x: [B, D]) -> [B, D] { return x >> linear(D) >> relu }
model M (x: [B, 8]) -> [B, 8] {
    h = stack(2, connect=residual) { L() }
    return h(x)
}
""", file="m.arch"))
    assert "residual(post=false)" not in text
    verify_python("x = 1\n", strings=("residual(post=false)",))  # not held: nothing to check
    with pytest.raises(GeneratedCodeError, match="not a string constant"):
        verify_python("x = 1  # residual(post=false)\nresidual = x\n", strings=("residual(post=false)",))


@pytest.mark.parametrize("name", ["x\n'''\n" + RUN + "\n#", 'we"ird\\'])
def test_a_mixture_and_hoisted_constants_hold_file_names_as_data(workdir: Path, name: str) -> None:
    """The code written this session (a mixture of block experts, one loop over their ModuleList;
    constants computed in reset_constants at -O1) carries the spec's file names in its `file:line`
    comments: quoted, the file imports, and it computes what the -O0 module does."""
    lib = workdir / f"{name}.arch"
    lib.write_text("axis B, D\nblock Expert() (x: [B, D]) -> [B, D] {\n    fc = linear(D)\n    return fc(x)\n}\n")
    spec = workdir / "main.arch"
    spec.write_text(f"import {arch_str(lib.name)}\naxis B\nmodel M (x: [B, 16]) -> [B, 16] {{\n"
                    "    weights, index = moe_router(linear(x, 4, bias=false), 2)\n"
                    "    experts = moe(4, Expert())\n"
                    "    freqs = exp(arange(x, 0, 16, dtype=\"f32\") * -0.5)\n"
                    "    return experts(x, weights, index) * freqs\n}\n")
    torch.manual_seed(0)
    plain = archc.compile(spec)
    assert cli(["build", str(spec), "-O1", "--target", "torch", "-o", str(workdir / "model.py")]) == 0
    source = (workdir / "model.py").read_text()
    assert "def reset_constants" in source and "for e, expert in enumerate(self.experts)" in source
    module = _import_file(workdir / "model.py", "archc_injection_moe")
    built = module.M()  # type: ignore[attr-defined]
    built.load_state_dict(plain.state_dict())
    x = torch.randn(5, 16)
    torch.testing.assert_close(built(x), plain(x))
    assert not (workdir / "MARK").exists()


@pytest.mark.parametrize("name", ["x\n'''\n" + RUN + "\n#", "we'ird\\"])
def test_the_parallel_plan_file_holds_file_names_as_data(workdir: Path, name: str) -> None:
    """`archc build --parallel --sp` writes where each split stack is (`file:line:col`) into the
    SequenceSplit of its parallelize(): quoted, the file imports and its plan names the file."""
    spec = workdir / f"{name}.arch"
    spec.write_text((specs_root() / "models" / "gpt2.arch").read_text())
    sets = [a for k, v in {"vocab": 64, "dim": 32, "depth": 2, "heads": 2, "max_len": 16}.items()
            for a in ("--set", f"{k}={v}")]
    assert cli(["build", str(spec), *sets, "--target", "torch", "--parallel", "--tp", "2", "--sp",
                "-o", str(workdir / "model.py")]) == 0
    calls = [n for n in ast.walk(ast.parse((workdir / "model.py").read_text()))
             if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "SequenceSplit"]
    wheres = [ast.literal_eval(k.value) for c in calls for k in c.keywords if k.arg == "where"]
    assert wheres and all(w.startswith(spec.name + ":") for w in wheres)
    module = _import_file(workdir / "model.py", "archc_injection_parallel")
    assert callable(module.parallelize)  # type: ignore[attr-defined]
    assert not (workdir / "MARK").exists()
