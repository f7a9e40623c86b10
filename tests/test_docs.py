"""The documentation is tested: every spec in docs/*.md and README.md compiles, every error shown
is the error archc gives, every command shown prints what is shown, and the op table is current.

Fenced blocks, by their info string:

- ```arch: a spec. A spec with models elaborates each model (and the IR verifies); a library
  (no model) is loaded, and each of its blocks that can stand alone (every parameter has a
  default, no '*' in its inputs) is elaborated as if it were the model.
  A search space (a spec with `choice(...)` holes) elaborates each of its well-typed completions,
  and must have one.
- ```arch file=lib/layers.arch: the same, and the file is written (before any block of that
  page runs) where the other blocks of the page can import it.
- ```arch-fragment: a piece of syntax (items, statements or an expression) that is only parsed.
- ```arch-error: a spec that must fail; the ```text block right after it is the error exactly as
  archc prints it (the spec is compiled as `spec.arch`).
- ```console: lines `$ archc ...` are run (in the page's folder of files, where `specs/` is the
  repository's) and what they print must be the lines after them, up to the next `$`; a time
  such as `(12 ms)` matches any time. A console block that shows no output at all is a list of
  commands: each must succeed (exit status 0).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from archc.elaborate import elaborate_text
from archc.elaborate.elaborator import Elaborator
from archc.elaborate.loader import Loader
from archc.errors import ArchError
from archc.frontend import ast as A
from archc.frontend.parser import parse, parse_expr
from archc.ir.verify import verify

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
SPEC = "spec.arch"  # the name a page's example is compiled under (errors quote it)
REFRESH = "if archc's output changed on purpose, run: .venv/bin/python docs/refresh_examples.py PAGE"


@dataclass(frozen=True)
class Fence:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    options: dict[str, str]
    text: str

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def fences(page: Path) -> list[Fence]:
    out: list[Fence] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)(.*)$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        body = []
        i += 1
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        options = dict(opt.split("=", 1) for opt in m.group(2).split() if "=" in opt)
        out.append(Fence(page, start + 1, m.group(1), options, "\n".join(body) + "\n"))
        i += 1
    return out


ALL = [f for page in PAGES for f in fences(page)]


def cases(*langs: str) -> list[object]:
    return [pytest.param(f, id=f.id) for f in ALL if f.lang in langs]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """The page's files (```arch file=...), written into a fresh folder that is the working one."""
    fence: Fence = request.node.callspec.params["fence"]
    for f in fences(fence.page):
        if f.lang == "arch" and "file" in f.options:
            path = tmp_path / f.options["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f.text, encoding="utf-8")
    (tmp_path / "specs").symlink_to(ROOT / "specs", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def standalone(b: A.BlockDef, env: object) -> bool:
    """Can this block be compiled as the entry point? Needs defaults for all its parameters and
    inputs without '*' (a model's inputs are concrete)."""
    if any(p.default is None for p in b.params):
        return False
    ports, _ = Elaborator().signature(b, env)  # type: ignore[arg-type]
    return not any(isinstance(d, A.Star) for p in ports if isinstance(p.type, A.TensorTypeExpr) for d in p.type.dims)


def compile_spec(text: str, name: str, folder: Path) -> int:
    """Compile every model of a spec, or every stand-alone block of a library; returns how many."""
    module = parse(text, name)
    if any(isinstance(n, A.Choice) for n in A.walk(module)):  # a search space: each completion compiles
        from archc.space import Space

        (folder / Path(name).name).write_text(text, encoding="utf-8")
        space = Space(folder / Path(name).name)
        for choice in space.enumerate():
            verify(space.elaborate(choice))
        assert space.count() > 0, f"{name}: no completion of the search space type-checks"
        return space.count()
    defs = [it for it in module.items if isinstance(it, A.BlockDef)]
    models = [b.name for b in defs if b.kind == "model"]
    if not models:
        env = Loader().load_text(text, name, folder)
        models = [b.name for b in defs if standalone(b, env)]
    for model in models:
        verify(elaborate_text(text, name, model=model, folder=folder))
    return len(models)


@pytest.mark.parametrize("fence", cases("arch"))
def test_spec_compiles(fence: Fence, folder: Path) -> None:
    name = fence.options.get("file", SPEC)
    compile_spec(fence.text, name, folder / Path(name).parent)


ITEM_WORDS = ("import", "from", "axis", "let", "interface", "block", "model", "@")


@pytest.mark.parametrize("fence", cases("arch-fragment"))
def test_fragment_parses(fence: Fence) -> None:
    """A fragment is items (a file), statements (a block body) or one expression."""
    code = [ln.strip() for ln in fence.text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if code and (code[0].startswith("@") or code[0].split(maxsplit=1)[0].split("(")[0] in ITEM_WORDS):
        parse(fence.text, SPEC)
        return
    try:
        parse("block Fragment() (x: [1]) -> [1] {\n" + fence.text + "}\n", SPEC)
    except ArchError:
        parse_expr(fence.text.strip(), SPEC)


def _expected_after(fence: Fence, lang: str) -> str:
    following = ALL[ALL.index(fence) + 1] if fence is not ALL[-1] else None
    if following is None or following.page != fence.page or following.lang != lang:
        pytest.fail(f"{fence.id}: an ```{fence.lang} block must be followed by a ```{lang} block")
    return following.text.rstrip("\n")


@pytest.mark.parametrize("fence", cases("arch-error"))
def test_error_is_the_one_shown(fence: Fence, folder: Path) -> None:
    expected = _expected_after(fence, "text")
    with pytest.raises(ArchError) as info:
        compile_spec(fence.text, SPEC, folder)
    assert info.value.render() == expected, REFRESH


def _normalize(text: str) -> str:
    return re.sub(r"\(\d+ ms\)", "(N ms)", text.rstrip("\n"))


@pytest.mark.parametrize("fence", cases("console"))
def test_console_output_is_real(fence: Fence, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from archc.cli import main

    runs: list[tuple[str, list[str]]] = []
    for line in fence.text.splitlines():
        if line.startswith("$ "):
            runs.append((line[2:], []))
        elif runs:
            runs[-1][1].append(line)
    assert runs, f"{fence.id}: a console block shows at least one '$ archc ...' command"
    transcript = any(line.strip() for _, shown in runs for line in shown)
    for command, shown in runs:
        argv = shlex.split(command)
        assert argv[0] == "archc", f"{fence.id}: only archc commands are run, got '{command}'"
        capsys.readouterr()
        status = main(argv[1:])
        out = capsys.readouterr()
        if transcript:
            assert _normalize(out.out + out.err) == _normalize("\n".join(shown)), f"{command}\n{REFRESH}"
        else:
            assert status == 0, f"{command}\n{out.out}{out.err}"


def test_the_op_table_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_ops", ROOT / "docs" / "gen_ops.py")
    assert spec and spec.loader
    gen_ops = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = gen_ops  # dataclasses look their module up while the class is made
    spec.loader.exec_module(gen_ops)
    doc = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    assert gen_ops.render(doc) == doc, "the op table in docs/language.md is stale: run .venv/bin/python docs/gen_ops.py"


def test_every_page_is_tested() -> None:
    """Spec-like blocks must be marked: a fence with no language would not be checked."""
    for f in ALL:
        assert f.lang, f"{f.id}: give the code block a language (arch, arch-fragment, arch-error, text, sh...)"
    assert any(f.lang == "arch" for f in ALL)
