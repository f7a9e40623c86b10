"""Spec text never becomes code in the Triton, CUDA, graphviz, ONNX and fx targets (issue #10).

Hostile text reaches these backends three ways:

(a) `str` parameters of a model and of a block (`model_args`, scope arguments): the docstrings of
    the kernel packages, the labels of the diagram;
(b) the file names of imported specs: the `file:line` comments of every generated file, the
    packages' docstrings, the `//` header of kernels.cu;
(c) an IR file (`Graph.from_json` of an edited dump) with hostile scope paths, parameter names,
    value ids, port, axis and dimension names, span file names, scope kinds and arguments, model
    argument names and the graph's name. archc refuses such names when it loads an IR file
    (archc/ir/names.py); these tests switch that check off (monkeypatch), so the backends are
    shown to hold on their own.

Each payload would create the file MARK in the test's folder (the current directory) if it ran,
as Python, as C (a constructor) or as a shell command. For every case MARK never appears, and
each artifact is valid:

    triton    every generated .py passes quote.verify_python (package() checks it), the package
              imports (TRITON_INTERPRET=1) and its forward matches the torch target
    cuda      the package imports; kernels.cu lexes to the same C tokens as for a plain name
              (comments and string literals aside) and compiles with nvcc where it is installed
    graphviz  the dot text lexes to the same DOT tokens and HTML tags as for a plain name, and
              `dot` (where installed) renders it to SVG with as many nodes, edges and clusters
              and no <a> or <script>
    onnx      the file passes onnx.checker and onnxruntime matches the torch target
    fx        the GraphModule runs, matches the torch target and has its state_dict keys

(a) and (b) go through the command line (`archc build`, `archc render`); a located ArchError
(`file:line:col: error:`, exit 1) is the other acceptable outcome there, never a traceback.

The default run takes a fixed sample of the corpus; ARCHC_FUZZ_FULL=1 runs all of it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tokenize
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import archc.ir.graph as ir_graph
from archc.api import build
from archc.backends.graphviz import to_dot
from archc.cli import main as cli
from archc.elaborate import elaborate_file, elaborate_text
from archc.errors import ArchError
from archc.ir.graph import Graph
from archc.ir.printer import arch_str

FULL = os.environ.get("ARCHC_FUZZ_FULL") == "1"

RUN = "__import__('os').system('touch MARK')"
C_RUN = '__attribute__((constructor)) static void archc_pwn(void) { system("touch MARK"); }'
HOSTILE: dict[str, str] = {
    "dquote": f'"+str({RUN})+"',
    "squote": f"'+str({RUN})+'",
    "docstring": f'"""+str({RUN})[:0]+"""',
    "sq_docstring": f"'''+str({RUN})[:0]+'''",
    "newline": f"x\n{RUN}\n#",
    "cr": f"x\r{RUN}\r#",
    "crlf": f"x\r\n{RUN}\r\n",
    "line_sep": f"x\u2028{RUN}\u2029",
    "form_feed": f"x\x0c{RUN}\x0b",
    "nul": f"x\x00{RUN}",
    "windows_path": "C:\\Users\\x\\N{BULLET}\\U0001",
    "backslash_end": "x\\",
    "c_comment_close": f"*/ {C_RUN} /*",
    "c_newline": f"\n{C_RUN}\n//",
    "c_splice": f"x \\\n{C_RUN}",
    "trigraph": f"x ??/\n{C_RUN}",
    "hash": f"# {RUN}",
    "slashes": f"// {RUN}",
    "html": "</script><script>alert(1)</script><b>x</b>&amp;",
    "dot_quote": '"]; pwn [label="x" URL="javascript:alert(1)"]; "',
    "dot_html": "> <b>x</b> < ]",
    "template": "{{ self.__init__.__globals__ }} {% raw %}",
    "percent": "%s %(x)s {0} %n",
    "unicode": "ﬁ ＡＢＣ Ω й привет 😀",
    "bidi": "x\u202e\u200bgnp.exe",
    "long": "x" * 3000,
}
# Every trick at once: what the per-field IR tests use.
MEGA = ('"+\'"""\'\'\'\n' + RUN + "\r\u2028\x0c\x00 */ " + C_RUN + " ??/ \\\n<b>&\"]; pwn [URL=x] // # {{ % ﬁй \\")
SAMPLE = ["dquote", "docstring", "newline", "line_sep", "nul", "windows_path", "backslash_end",
          "c_comment_close", "c_splice", "dot_quote", "html", "unicode"]
CASES = list(HOSTILE) if FULL else SAMPLE

HAVE_DOT = shutil.which("dot") is not None
HAVE_NVCC = shutil.which("nvcc") is not None
X = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Payloads touch MARK in the current folder: the test's own. Kernel packages run on the CPU."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when a kernel is decorated, not at import of triton
    return tmp_path


def _assert_nothing_ran(workdir: Path) -> None:
    assert not (workdir / "MARK").exists(), "a payload ran"


# -- lexers: the code of a file, without its comments and string literals ------------------------------
_C_TOKEN = re.compile(r"""(?P<ws>\s+)|(?P<comment>//[^\n]*|/\*.*?\*/)|(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>\.?[0-9](?:[eEpP][+-]|[0-9A-Za-z_.])*)|(?P<op>.)""", re.S | re.X)


def c_tokens(src: str, names: bool) -> list[tuple[str, str]]:
    """C tokens without comments, literals blanked (`names=False`: identifiers blanked too). The
    phases before tokenizing must be no-ops: no trigraph, no line splice (backslash-newline)."""
    assert "??" not in src, "a trigraph in C source"
    assert not re.search(r"\\[ \t]*\n", src), "a line splice in C source"
    out = []
    for m in _C_TOKEN.finditer(src):
        kind = m.lastgroup or ""
        if kind in ("ws", "comment"):
            continue
        value = m.group() if kind == "op" or (kind == "name" and names) else ""
        out.append((kind, value))
    return out


def py_tokens(src: str, names: bool) -> list[tuple[str, str]]:
    """Python tokens without comments and non-logical newlines, string literals blanked."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL):
            continue
        kind = tokenize.tok_name[tok.type]
        value = tok.string if tok.type == tokenize.OP or (tok.type == tokenize.NAME and names) else ""
        out.append((kind, value))
    return out


_DOT_TOKEN = re.compile(r"""(?P<ws>\s+)|(?P<comment>//[^\n]*|/\*.*?\*/)|(?P<string>"(?:[^"\\]|\\.)*")
    |(?P<id>[A-Za-z_][A-Za-z0-9_]*|-?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?))|(?P<op>->|--|[{}\[\];,=:])|(?P<html><)|(?P<bad>.)""",
                        re.S | re.X)


def dot_tokens(src: str) -> list[tuple[str, str]]:
    """DOT tokens: ids and strings blanked, keywords and punctuation kept, an HTML-like label as the
    sequence of its tags (`<b>`, `<br/>`, `<font>`), which must balance."""
    out, i = [], 0
    while i < len(src):
        m = _DOT_TOKEN.match(src, i)
        assert m is not None
        kind = m.lastgroup or ""
        if kind == "html":
            depth, j = 0, i
            while True:
                assert j < len(src), "an HTML-like label does not close"
                depth += {"<": 1, ">": -1}.get(src[j], 0)
                j += 1
                if depth == 0:
                    break
            tags = re.findall(r"<\s*(/?\s*[A-Za-z]*)", src[i + 1:j - 1])
            out.append(("html", " ".join(tags)))
            i = j
            continue
        assert kind != "bad", f"a character DOT does not know outside a string: {m.group()!r}"
        if kind == "id" and m.group().lower() in ("digraph", "graph", "subgraph", "node", "edge", "strict"):
            out.append(("keyword", m.group().lower()))
        elif kind not in ("ws", "comment"):  # a quoted string is an id as a bare name is
            out.append(("op", m.group()) if kind == "op" else ("id", ""))
        i = m.end()
    return out


def _same(lex: Callable[[str], list[tuple[str, str]]], hostile: str, plain: str, what: str) -> None:
    a, b = lex(hostile), lex(plain)
    if a != b:
        k = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise AssertionError(f"{what}: the code differs from a plain name's at token {k}: "
                             f"{a[max(0, k - 3):k + 3]} != {b[max(0, k - 3):k + 3]}")


# -- artifacts ---------------------------------------------------------------------------------------
def _import_package(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Import the package in `folder` (its name is an identifier) and forget it afterwards."""
    monkeypatch.syspath_prepend(str(folder.parent))
    importlib.invalidate_caches()
    try:
        return importlib.import_module(folder.name)
    finally:
        for key in [k for k in sys.modules if k == folder.name or k.startswith(folder.name + ".")]:
            del sys.modules[key]


def _package_name(files: dict[str, str], target: str) -> str:
    return f"archc_inj_{target}_{hashlib.sha256(''.join(files.values()).encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8", errors="surrogatepass")
    return folder


def _read(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.iterdir()) if p.is_file()}


def _check_triton(folder: Path, graph: Graph, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton package imports and runs (interpreted on the CPU) as the torch target does."""
    package = _import_package(folder, monkeypatch)
    model = getattr(package, package.__all__[0])().eval()
    reference = build(graph, "torch").eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference(X))


def _check_cuda(folder: Path, plain: dict[str, str] | None, names: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA package imports (the kernels need a GPU to run); kernels.cu is the plain one's code."""
    package = _import_package(folder, monkeypatch)
    assert package.__all__
    cu = (folder / "kernels.cu").read_text()
    c_tokens(cu, names)  # no trigraph, no splice, lexes
    if plain is not None:
        _same(lambda s: c_tokens(s, names), cu, plain["kernels.cu"], "kernels.cu")


def _nvcc(cu: Path) -> None:
    result = subprocess.run([shutil.which("nvcc") or "nvcc", "-std=c++17", "-arch=sm_80", "-c", str(cu), "-o",
                             str(cu.with_suffix(".o"))], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def _svg(dot_text: str) -> bytes:
    result = subprocess.run(["dot", "-Tsvg"], input=dot_text.encode("utf-8", "surrogatepass"), capture_output=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def _check_dot(dot_text: str, plain_dot: str, svg: bytes | None = None) -> None:
    """The dot text has the plain diagram's structure, and graphviz draws it (or drew it: `svg`)
    with the plain diagram's nodes, edges and clusters."""
    _same(dot_tokens, dot_text, plain_dot, "dot")
    if not HAVE_DOT:
        return
    counts = []
    for drawn in (svg or _svg(dot_text), _svg(plain_dot)):
        root = ET.fromstring(drawn)  # well-formed XML
        tags = {el.tag.rpartition("}")[2] for el in root.iter()}
        assert not tags & {"a", "script", "foreignObject"}, tags
        classes = [el.get("class") for el in root.iter() if el.get("class") in ("node", "edge", "cluster")]
        counts.append(sorted(classes))
    assert counts[0] == counts[1], "the diagram has other nodes, edges or clusters than the plain one"


def _check_onnx(graph: Graph) -> None:
    import onnx

    from archc.backends.onnx import export_onnx, max_diff

    module = build(graph, "torch").eval()
    data = export_onnx(graph, module)
    onnx.checker.check_model(onnx.load_from_string(data))
    assert max_diff(graph, module, data) < 1e-4


def _check_fx(graph: Graph) -> None:
    module = build(graph, "torch").eval()
    gm = build(graph, "fx").eval()
    assert list(gm.state_dict()) == list(module.state_dict())
    gm.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(gm(X), module(X))


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str | None:
    """Run archc: its stdout when it succeeded, None on a located spec error (exit 1), which must
    read `file:line:col: error:`. Anything else (a traceback, exit 70) fails the test."""
    code = cli(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err, captured.err
    if code == 1:
        assert re.search(r"^\S.*:\d+:\d+: error: ", captured.err, re.M), captured.err
        return None
    assert code == 0, captured.err
    return captured.out


# -- (a) and (b): specs through the command line -------------------------------------------------------
BLOCK = "block Tagged(tag: str) (x: [B, 16]) -> [B, 16] {\n    fc = linear(16)\n    return fc(x) >> gelu\n}\n"


def _str_spec(text: str) -> str:
    return ("axis B\n" + BLOCK + f"model M(tag: str = {arch_str(text)}) (x: [B, 16]) -> [B, 16] {{\n"
            "    body = Tagged(tag)\n    h = layernorm(x) >> body\n    return softmax(h + x)\n}\n")


LIB = "axis B\n" + BLOCK
MAIN = ("import {lib}\naxis B\nmodel M (x: [B, 16]) -> [B, 16] {{\n    body = Tagged(\"t\")\n"
        "    h = layernorm(x) >> body\n    return softmax(h + x)\n}}\n")


def _spec_folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root / "main.arch"


def _through_every_target(spec: Path, plain_spec: Path, workdir: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """archc build --target triton / cuda / onnx and archc render, checked against the plain spec's."""
    graph = elaborate_file(spec)
    plain_graph = elaborate_file(plain_spec)
    from archc.backends.cuda.emit import package as cuda_package
    from archc.backends.triton.emit import package as triton_package

    for target, make in (("triton", triton_package), ("cuda", cuda_package)):
        out = workdir / "pkgs" / f"archc_inj_{target}_{hashlib.sha256(str(workdir).encode()).hexdigest()[:12]}"
        shown = _cli(["build", str(spec), "--target", target, "--explain", "-o", str(out)], capsys)
        assert shown is not None and all(line.isprintable() for line in shown.splitlines())
        files, plain = _read(out), make(plain_graph)
        for name in files:
            if name.endswith(".py"):
                _same(lambda s: py_tokens(s, True), files[name], plain[name], f"{target} {name}")
        if target == "triton":
            _check_triton(out, graph, monkeypatch)
        else:
            _check_cuda(out, plain, True, monkeypatch)
    assert _cli(["render", str(spec), "-o", str(workdir / "net.dot")], capsys) is not None
    if HAVE_DOT:
        assert _cli(["render", str(spec), "-o", str(workdir / "net.svg")], capsys) is not None
    _check_dot((workdir / "net.dot").read_text(), to_dot(plain_graph),
               (workdir / "net.svg").read_bytes() if HAVE_DOT else None)
    assert _cli(["build", str(spec), "--target", "onnx", "-o", str(workdir / "net.onnx")], capsys) is not None
    _assert_nothing_ran(workdir)


@pytest.mark.parametrize("case", CASES)
def test_a_str_parameter_reaches_every_target_as_data(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    text = HOSTILE[case]
    spec = _spec_folder(workdir / "spec", {"main.arch": _str_spec(text)})
    plain = _spec_folder(workdir / "plain", {"main.arch": _str_spec("plain")})
    assert elaborate_file(spec).model_args == {"tag": text}
    _through_every_target(spec, plain, workdir, capsys, monkeypatch)


def _lib_name(text: str, folder: Path) -> str | None:
    """Write LIB as `<text>.arch` under `folder` (a '/' makes folders: `a*/b` is the label `a*/b`);
    the relative path, or None when the OS refuses the name (NUL, a part too long) or it is no
    path inside `folder` (absolute)."""
    name = f"{text}.arch"
    parts = name.split("/")
    if "\x00" in name or name.startswith("/") or any(len(p.encode()) > 255 or p in (".", "..") for p in parts):
        return None  # an absolute path would not be a file of this folder
    if not (folder / name).resolve().is_relative_to(folder.resolve()):
        return None
    try:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(LIB)
    except (OSError, ValueError, UnicodeEncodeError):
        return None
    return name


@pytest.mark.parametrize("case", CASES)
def test_a_file_name_reaches_every_target_as_data(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    folder = workdir / "spec"
    folder.mkdir()
    lib = _lib_name(HOSTILE[case], folder)
    if lib is None:
        pytest.skip("the OS refuses this file name")
    spec = _spec_folder(folder, {"main.arch": MAIN.format(lib=arch_str(lib))})
    plain = _spec_folder(workdir / "plain", {"main.arch": MAIN.format(lib='"lib.arch"'), "lib.arch": LIB})
    try:
        graph = elaborate_file(spec)
    except ArchError as err:  # the loader may refuse a name: with a located error
        assert re.match(r"\S.*:\d+:\d+: error: ", err.render()), err.render()
        _assert_nothing_ran(workdir)
        return
    assert any(n.span and n.span.file.endswith(lib.rpartition("/")[2]) for n in graph.nodes)
    _through_every_target(spec, plain, workdir, capsys, monkeypatch)


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc is not installed: kernels.cu is checked by the C lexer only")
def test_kernels_cu_with_hostile_file_names_compiles(workdir: Path) -> None:
    """One spec that imports a file of every hostile name nvcc can see: kernels.cu compiles, and
    the object file has no constructor of a payload."""
    from archc.backends.cuda.emit import package

    folder = workdir / "spec"
    folder.mkdir()
    cases = CASES if FULL else ["c_comment_close", "c_newline", "c_splice", "trigraph", "unicode"]
    names = [n for case in cases if (n := _lib_name(HOSTILE[case], folder)) is not None]
    lines = [f"import {arch_str(n)} as lib{i}" for i, n in enumerate(names)]
    body = "".join(f"    h{i + 1} = softmax((layernorm(h{i}) >> lib{i}.Tagged(\"t\")) + h{i})\n"
                   for i in range(len(names)))
    spec = _spec_folder(folder, {"main.arch": "\n".join(lines) + "\naxis B\nmodel M (x: [B, 16]) -> [B, 16] {\n"
                                 f"    h0 = x\n{body}    return h{len(names)}\n}}\n"})
    graph = elaborate_file(spec)
    assert len({n.span.file for n in graph.nodes if n.span}) == len(names) + 1
    cu = _write(workdir / "pkg", package(graph)) / "kernels.cu"
    code_names = {value for kind, value in c_tokens(cu.read_text(), True) if kind == "name"}
    assert not code_names & {"system", "archc_pwn", "__attribute__", "touch", "MARK"}
    _nvcc(cu)
    assert b"archc_pwn" not in cu.with_suffix(".o").read_bytes()
    _assert_nothing_ran(workdir)


# -- (c) IR files ------------------------------------------------------------------------------------
BASE = elaborate_text(_str_spec("plain"), "m.arch")


def _rename_paths(data: dict[str, Any], old: str, new: str) -> None:
    """Rename the top scope `old` to `new` everywhere: node scopes, parameter names, scope paths."""
    def ren(path: str) -> str:
        return new + path[len(old):] if path == old or path.startswith(old + ".") else path

    for node in data["nodes"]:
        node["scope"] = ren(node["scope"])
        node["params"] = {role: ren(p) for role, p in node["params"].items()}
    data["params"] = {ren(k): v | {"name": ren(k)} for k, v in data["params"].items()}
    data["scopes"] = {ren(k): v | {"path": ren(k)} for k, v in data["scopes"].items()}


def _rename_values(data: dict[str, Any], text: str) -> None:
    """Rename every value id (`%3` -> `<text>3`): the keys of `values` and every string of the dump
    that is a value id (node inputs and outputs, ports, the scopes' recorded calls)."""
    ren = {v: f"{text}{v.lstrip('%')}" for v in data["values"]}

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return ren.get(item, item)
        if isinstance(item, list):
            return [walk(x) for x in item]
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        return item

    values = data.pop("values")
    data.update(walk({k: v for k, v in data.items() if k not in ("name", "model_args")}))
    data["values"] = {ren[k]: t for k, t in values.items()}


def _dims(data: dict[str, Any]) -> list[dict[str, Any]]:
    types = [p["type"] for p in data["inputs"] + data["outputs"]] + list(data["values"].values())
    return [d for t in types for d in t["shape"]]


def _mutate(field: str, text: str, dots: bool = False, braces: bool = False) -> Callable[[dict[str, Any]], None]:
    """Put `text` into one field of an IR dump (or into all). In scope paths and parameter names a
    '.' splits the text into segments; `dots=False` writes it as ',' (see test_dotted_scope_paths),
    and `braces=False` writes `{}` in a parameter name as `()` (see test_braces_in_a_parameter_name)."""
    segment = text if dots else text.replace(".", ",")
    leaf = segment if braces else segment.replace("{", "(").replace("}", ")")

    def apply(data: dict[str, Any]) -> None:
        if field in ("scope", "all"):
            _rename_paths(data, "body", segment)
        if field in ("param", "all"):
            old = "layernorm.weight"
            data["params"][f"layernorm.{leaf}"] = data["params"].pop(old) | {"name": f"layernorm.{leaf}"}
            for node in data["nodes"]:
                node["params"] = {r: f"layernorm.{leaf}" if p == old else p for r, p in node["params"].items()}
        if field in ("value", "all"):
            _rename_values(data, text)
        if field in ("port", "all"):
            data["inputs"][0]["name"] = text + "_in"
            data["outputs"][0]["name"] = text + "_out"
        if field in ("file", "all"):
            for item in data["nodes"] + list(data["scopes"].values()):
                if item.get("span"):
                    item["span"]["file"] = text + ".arch"
        if field in ("kind", "all"):
            for info in data["scopes"].values():
                info["kind"] = text + info["kind"]
                info["args"] = {k: text for k in info["args"]}
        if field in ("name", "all"):
            data["name"] = text
            data["model_args"] = {text: text}
        if field in ("dim", "all"):
            for d in _dims(data):
                if d["name"] is not None:
                    d["name"] = text
    return apply


def _plain_twin(text: str) -> str:
    """Inert text with the same scope structure: every character but '.' becomes 'a'."""
    return "".join("." if c == "." else "a" for c in text)


def _ir(mutate: Callable[[dict[str, Any]], None]) -> Graph:
    data = json.loads(BASE.to_json())
    mutate(data)
    return Graph.from_json(json.dumps(data))


def _every_backend_holds(field: str, text: str, workdir: Path, monkeypatch: pytest.MonkeyPatch,
                         dots: bool = False, braces: bool = False) -> None:
    monkeypatch.setattr(ir_graph, "check_graph_names", lambda graph: None, raising=False)  # the backends alone
    graph = _ir(_mutate(field, text, dots, braces))
    plain = _ir(_mutate(field, _plain_twin(text), dots, braces))
    from archc.backends.cuda.emit import package as cuda_package
    from archc.backends.kernels.targets import explain
    from archc.backends.triton.emit import package as triton_package

    files = triton_package(graph)
    out = _write(workdir / "pkgs" / _package_name(files, "triton"), files)
    _check_triton(out, graph, monkeypatch)
    files = cuda_package(graph)
    out = _write(workdir / "pkgs" / _package_name(files, "cuda"), files)
    _check_cuda(out, cuda_package(plain), False, monkeypatch)
    for target in ("triton", "cuda"):
        assert all(line.isprintable() for line in explain(graph, target))
    _check_dot(to_dot(graph), to_dot(plain))
    _check_fx(graph)
    _check_onnx(graph)
    _assert_nothing_ran(workdir)


@pytest.mark.parametrize("case", CASES)
def test_an_ir_file_with_hostile_text_everywhere(workdir: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    _every_backend_holds("all", HOSTILE[case], workdir, monkeypatch)


@pytest.mark.parametrize("field", ["scope", "param", "value", "port", "file", "kind", "name", "dim"])
def test_an_ir_file_with_hostile_text_in_one_field(workdir: Path, monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    _every_backend_holds(field, MEGA, workdir, monkeypatch)


@pytest.mark.parametrize("field", ["scope", "param"])
def test_dotted_scope_paths(workdir: Path, monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    """A '.' in hostile text makes more scope levels, each segment hostile (fx splits targets there;
    the torch file holds the path one segment at a time, which quote.verify_python accepts)."""
    _every_backend_holds(field, MEGA, workdir, monkeypatch, dots=True)


def test_braces_in_a_parameter_name(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _every_backend_holds("param", "w{x}{BULLET}", workdir, monkeypatch, braces=True)


def test_the_fx_reproducer_of_issue_10(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scope path that closes fx's `getattr(self, "...")`: a string constant, and fx's code checks."""
    monkeypatch.setattr(ir_graph, "check_graph_names", lambda graph: None, raising=False)
    path = 'a"+str(getattr(__import__("os"),"system")("touch MARK"))[:0]+"'
    graph = _ir(lambda data: _rename_paths(data, "body", path))
    gm = build(graph, "fx")
    tree = ast.parse(gm.code)
    assert path in {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert not {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} & {"__import__", "getattr", "eval"}
    gm(X)
    _check_fx(graph)
    _assert_nothing_ran(workdir)


@pytest.mark.parametrize("name", ["eval", "state_dict", "recompile", "print_readable", "training_step",
                                  "forward_hooks", "0", "ﬁ", ""])
def test_fx_reads_parameters_under_names_that_graphmodule_shadows(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  name: str) -> None:
    """`self.eval.weight` would read the method; such names go through `_modules[...]`."""
    monkeypatch.setattr(ir_graph, "check_graph_names", lambda graph: None, raising=False)
    graph = _ir(lambda data: _rename_paths(data, "body", name))
    _check_fx(graph)
    if hasattr(torch.fx.GraphModule, name):  # a method: read through the dict, not as `self.eval`
        assert f"self.{name}." not in build(graph, "fx").code


@pytest.mark.parametrize("name", ["graph", "code", "meta", "_code"])
def test_fx_refuses_root_names_that_graphmodule_keeps(name: str) -> None:
    """A GraphModule sets `self.graph`, `self.meta`, ...: an instance of that name is a located error."""
    graph = elaborate_text(f"axis B\nmodel M (x: [B, 16]) -> [B, 16] {{\n    {name} = linear(16)\n"
                           f"    return {name}(x)\n}}\n", "m.arch")
    build(graph, "torch")  # the torch target takes it
    with pytest.raises(ArchError) as err:
        build(graph, "fx")
    assert re.match(r"m\.arch:[34]:\d+: error: the instance name", err.value.render()), err.value.render()


def test_onnx_output_named_like_an_input(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`model M (out: ...)`: the output, archc's `out`, gets another ONNX name; the file works."""
    spec = workdir / "m.arch"
    spec.write_text("axis B\nmodel M (out: [B, 16]) -> [B, 16] {\n    return linear(out, 16)\n}\n")
    assert _cli(["build", str(spec), "--target", "onnx", "-o", str(workdir / "m.onnx")], capsys) is not None
    import onnx

    model = onnx.load(str(workdir / "m.onnx"))
    assert [i.name for i in model.graph.input] == ["out"] and [o.name for o in model.graph.output] == ["out_1"]


def test_the_lexers_catch_what_they_are_for() -> None:
    """The checks above would see an injection: a second statement, an unclosed comment, a splice."""
    with pytest.raises(AssertionError):
        _same(lambda s: c_tokens(s, True), "// a\nint x;\n", "// a */ b\n", "c")
    with pytest.raises(AssertionError):
        c_tokens("// a \\\nint x;\n", True)
    with pytest.raises(AssertionError):
        c_tokens("// a ??/\nint x;\n", True)
    with pytest.raises(AssertionError):
        _same(lambda s: py_tokens(s, True), "x = 1  # a\n", "x = 1  # a\nimport os\n", "py")
    with pytest.raises(AssertionError):
        _same(dot_tokens, 'a [label="x"];', 'a [label="x"]; b [URL="y"];', "dot")
    with pytest.raises(AssertionError):
        _same(dot_tokens, "a [label=<x>];", "a [label=<<b>x</b>>];", "dot")


@pytest.mark.parametrize("case", ["docstring", "newline", "line_sep"])
def test_the_fx_file_names_its_spec_files_as_data(workdir: Path, case: str) -> None:
    """`archc build --target fx` writes a docstring naming the spec files: fx_source quotes them."""
    from archc.backends.fx.build import fx_source

    folder = workdir / "spec"
    folder.mkdir()
    lib = _lib_name(HOSTILE[case], folder)
    assert lib is not None
    spec = _spec_folder(folder, {"main.arch": MAIN.format(lib=arch_str(lib))})
    text = fx_source(elaborate_file(spec))
    tree = ast.parse(text)
    doc = ast.get_docstring(tree, clean=False) or ""
    assert lib in doc and len(tree.body) == 3  # the docstring, `import torch`, `def forward`


def test_archc_build_target_fx_writes_file_names_as_data(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = workdir / "spec"
    folder.mkdir()
    lib = _lib_name(HOSTILE["docstring"], folder)
    assert lib is not None
    spec = _spec_folder(folder, {"main.arch": MAIN.format(lib=arch_str(lib))})
    assert _cli(["build", str(spec), "--target", "fx", "-o", str(workdir / "fx.py")], capsys) is not None
    tree = ast.parse((workdir / "fx.py").read_text())
    assert lib in (ast.get_docstring(tree, clean=False) or "") and len(tree.body) == 3
