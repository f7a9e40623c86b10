"""A spec from a stranger is safe to compile.

- Nothing in a spec runs as Python: Python-looking text is a syntax or name error, and a sentinel
  file that the text would create is never created (in process and through `archc check`).
- Imports resolve only inside the spec's folder, the standard library and `includes`: paths
  that climb out, absolute paths and links that point out are refused before anything outside is
  read; FIFOs and device files are never opened.
- Expansion is bounded: specs that would expand to millions of ops, build huge lists or numbers,
  or recurse forever fail with a located ArchError, without using much memory (and quickly: see
  tests/test_bounded_work.py; no test here measures time).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from archc.elaborate import Limits, elaborate_file, elaborate_text
from archc.errors import ArchError

ROOT = Path(__file__).resolve().parents[1]
HEADER = "axis B, T, D\n"


def model(body: str) -> str:
    """A model around `body` (statements; `x: [B, T, 64]` in scope)."""
    return HEADER + "model M(D: int = 64) (x: [B, T, D]) -> [B, T, D] {\n" + textwrap.indent(
        textwrap.dedent(body).strip(), "    ") + "\n}\n"


# ---- no Python runs ----------------------------------------------------------------------------------

def _python_payloads(sentinel: Path) -> list[str]:
    s = str(sentinel)
    return [
        model(f'y = __import__("os").system("touch {s}")\nreturn x'),
        model(f'os = __import__("os")\nos.system("touch {s}")\nreturn x'),
        model(f'exec("open(\'{s}\', \'w\').close()")\nreturn x'),
        model(f'y = eval("open(\'{s}\', \'w\')")\nreturn x'),
        model(f'y = open("{s}", "w")\nreturn x'),
        model(f'y = x.__class__.__init__.__globals__["os"].system("touch {s}")\nreturn x'),
        model(f'y = rearrange(x, "{{__import__(\'os\').system(\'touch {s}\')}}")\nreturn x'),
        model(f'y = linear(x, {{{{ cycler.__init__.__globals__.os.system("touch {s}") }}}})\nreturn x'),
        f'import os\nos.system("touch {s}")\n',
        f'from "{s}.py" import run\n',
        f'def f():\n    open("{s}", "w")\nf()\n',
        f'lambda: __import__("os").system("touch {s}")\n',
        f'# comment\n@__import__("os").system("touch {s}")\nmodel M() (x: [B]) -> [B] {{ return x }}\n',
    ]


def test_python_in_a_spec_is_an_error_and_never_runs(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    for i, text in enumerate(_python_payloads(sentinel)):
        with pytest.raises(ArchError):
            elaborate_text(text, f"payload{i}.arch", folder=tmp_path)
        assert not sentinel.exists(), f"payload {i} created the sentinel:\n{text}"


def test_archc_check_reports_python_as_an_error_without_running_it(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    spec = tmp_path / "evil.arch"
    spec.write_text(model(f'y = __import__("os").system("touch {sentinel}")\nreturn x'), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "archc", "check", str(spec)], check=False, capture_output=True,
                         text=True, cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 1, run.stderr
    assert "error: unknown name '__import__'" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert not sentinel.exists()


def test_a_python_file_next_to_the_spec_is_never_imported(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    (tmp_path / "helpers.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    (tmp_path / "helpers.arch.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    for imp in ('import "helpers.py"', 'import "helpers"', 'from "helpers.py" import x'):
        with pytest.raises(ArchError, match="must name an .arch file"):
            elaborate_text(imp + "\n" + model("return x"), "main.arch", folder=tmp_path)
    assert not sentinel.exists()


# ---- imports stay inside the allowed folders ----------------------------------------------------------

@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/proj/main.arch, tmp/proj/lib/ok.arch, and tmp/outside/secret.arch (a file archc must not read:
    it is not valid .arch, so reading it would show up as a syntax error instead of a refusal)."""
    proj, outside = tmp_path / "proj", tmp_path / "outside"
    (proj / "lib").mkdir(parents=True)
    outside.mkdir()
    (proj / "lib" / "ok.arch").write_text("axis B, T, D\nblock Id() (x: [B, T, D]) -> [B, T, D] { return x }\n")
    (outside / "secret.arch").write_text("this is not a spec {{{\n")
    (outside / "lib.arch").write_text("axis B, T, D\nblock Out() (x: [B, T, D]) -> [B, T, D] { return x }\n")
    return tmp_path


def _compile_importing(tree: Path, path: str, includes: list[Path] | None = None) -> None:
    main = tree / "proj" / "main.arch"
    main.write_text(f'import "{path}"\n' + model("return x"))
    elaborate_file(main, includes=includes)


def test_imports_inside_the_spec_folder_and_the_standard_library_resolve(tree: Path) -> None:
    _compile_importing(tree, "lib/ok.arch")
    _compile_importing(tree, "std/nn.arch")


@pytest.mark.parametrize("path", ["../outside/secret.arch", "lib/../../outside/secret.arch",
                                  "../../../../../../../../etc/passwd.arch", "/etc/passwd.arch",
                                  "OUTSIDE_ABSOLUTE"])
def test_imports_that_leave_the_allowed_folders_are_refused(tree: Path, path: str) -> None:
    path = str(tree / "outside" / "secret.arch") if path == "OUTSIDE_ABSOLUTE" else path
    with pytest.raises(ArchError, match="outside the allowed folders") as info:
        _compile_importing(tree, path)
    assert info.value.span is not None and info.value.span.line == 1


def test_a_link_that_points_outside_is_refused(tree: Path) -> None:
    proj = tree / "proj"
    (proj / "link.arch").symlink_to(tree / "outside" / "secret.arch")
    (proj / "linkdir").symlink_to(tree / "outside", target_is_directory=True)
    with pytest.raises(ArchError, match="link to a file outside the allowed folders"):
        _compile_importing(tree, "link.arch")
    with pytest.raises(ArchError, match="outside the allowed folders"):
        _compile_importing(tree, "linkdir/secret.arch")


def test_device_files_and_fifos_are_never_read(tree: Path) -> None:
    proj = tree / "proj"
    (proj / "zero.arch").symlink_to("/dev/zero")
    with pytest.raises(ArchError, match="outside the allowed folders"):
        _compile_importing(tree, "zero.arch")
    if hasattr(os, "mkfifo"):
        os.mkfifo(proj / "pipe.arch")  # opening it for reading would block forever
        with pytest.raises(ArchError, match="cannot find"):
            _compile_importing(tree, "pipe.arch")


def test_includes_widen_the_allowed_folders(tree: Path) -> None:
    with pytest.raises(ArchError, match="cannot find 'lib.arch'"):
        _compile_importing(tree, "lib.arch")
    _compile_importing(tree, "lib.arch", includes=[tree / "outside"])


def test_an_included_file_cannot_climb_out_either(tree: Path) -> None:
    (tree / "outside" / "lib.arch").write_text('import "../../../../../../../etc/passwd.arch"\n')
    with pytest.raises(ArchError, match="outside the allowed folders") as info:
        _compile_importing(tree, "lib.arch", includes=[tree / "outside"])
    assert info.value.span is not None and info.value.span.file.endswith("lib.arch")


def test_a_spec_given_as_text_resolves_against_its_folder_only(tree: Path) -> None:
    text = 'import "lib/ok.arch"\n' + model("return x")
    elaborate_text(text, "t.arch", folder=tree / "proj")
    with pytest.raises(ArchError, match="cannot find"):
        elaborate_text(text, "t.arch", folder=tree / "outside")


def test_a_huge_imported_file_is_refused_before_it_is_read(tree: Path) -> None:
    big = tree / "proj" / "big.arch"
    with big.open("wb") as f:
        f.truncate(64 << 20)  # a sparse 64 MiB file
    with pytest.raises(ArchError, match="larger than 4 MiB"):
        _compile_importing(tree, "big.arch")


# ---- expansion is bounded ----------------------------------------------------------------------------

BOMBS = {
    "stack of stacks": ("return stack(1000) { stack(1000) { relu } }(x)", "would expand to at least"),
    "three nested stacks": ("return stack(100) { stack(100) { stack(100) { relu } } }(x)", "would expand"),
    "nested loops": ("""
        for i in range(1000) {
            for j in range(1000) {
                x = relu(x)
            }
        }
        return x""", "would expand to at least"),
    "a million-layer stack": ("return stack(1000000) { linear(D) }(x)", "exceeds the expansion limit"),
    "a loop of 10**8": ("for i in range(100000000) {\n    x = relu(x)\n}\nreturn x", "exceeds the expansion limit"),
    "2 ** 100000": ("n = 2 ** 100000\nreturn x", "too large"),
    "a doubling list": ("l = [0]\nfor i in range(64) {\n    l = l + l\n}\nreturn x", "list is too long"),
    "a doubling string": ('s = "ab"\nfor i in range(64) {\n    s = s + s\n}\nreturn x', "string is too long"),
    "lists kept alive": ("l = [0]\nfor i in range(100000) {\n    l = [l, range(100000)]\n}\nreturn x",
                         "steps|expansion limit"),
    "parameters": ("return linear(x, 4000000000) >> linear(D)", "parameters"),
    "recursion": ("""
        return Forever(0)(x)
    }
    block Forever(n: int) (x: [B, T, D]) -> [B, T, D] {
        if n >= 0 {
            return Forever(n + 1)(x)
        }
        return x""", "nest more than"),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_expansion_bombs_fail_fast_with_a_clear_error(name: str) -> None:
    body, message = BOMBS[name]
    with pytest.raises(ArchError, match=message) as info:
        elaborate_text(model(body), "bomb.arch")
    assert info.value.span is not None, info.value.render()


def test_exponential_recursion_is_bounded_by_the_step_limit() -> None:
    """A block that calls itself twice per level would make 2**40 ops; under lowered limits too,
    the forecast (archc/elaborate/forecast.py) refuses it where it recurses. The default limits
    are in tests/test_bounded_work.py."""
    spec = HEADER + """
    block F(n: int) (x: [B, T, D]) -> [B, T, D] {
        if n < 40 {
            return F(n + 1)(F(n + 1)(x))
        }
        return relu(x)
    }
    model M (x: [B, T, 8]) -> [B, T, 8] { return F(0)(x) }
    """
    with pytest.raises(ArchError, match="steps|ops"):
        elaborate_text(spec, "rec.arch", limits=Limits(max_steps=50_000, max_nodes=5_000))


def test_bombs_do_not_use_much_memory(tmp_path: Path) -> None:
    """Every bomb above, in a fresh process whose address space is capped at 2 GiB: the peak
    resident memory stays small (the bombs fail before they allocate)."""
    script = tmp_path / "bombs.py"
    script.write_text(textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        sys.path.insert(0, {str(ROOT)!r})
        from archc.elaborate import elaborate_text
        from archc.errors import ArchError
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from test_safety import BOMBS, model
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for name, (body, _) in BOMBS.items():
            try:
                elaborate_text(model(body), "bomb.arch")
                print("compiled:", name)
            except ArchError:
                pass
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(before // 1024, after // 1024)
    """))
    run = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    before_mb, after_mb = map(int, run.stdout.split()[-2:])
    assert "compiled:" not in run.stdout
    assert after_mb - before_mb < 300, f"peak memory grew by {after_mb - before_mb} MiB"


def test_naming_in_a_recursion_that_doubles_is_linear() -> None:
    """A block that calls itself twice per level: each application used to rescan every naming
    counter (quadratic: the 6-line spec ran for over ten minutes); now it touches only the counters
    below the scope it restarts, so the step limit is reached in a time proportional to it."""
    spec = """
    axis B, D
    block R(n: int) (x: [B, D]) -> [B, D] {
        if n > 0 { return R(n - 1)(R(n - 1)(x)) }
        return relu(x)
    }
    model M (x: [B, 8]) -> [B, 8] { return R(40)(x) }
    """
    with pytest.raises(ArchError, match="steps|ops") as info:
        elaborate_text(spec, "twice.arch", limits=Limits(max_steps=150_000))
    assert info.value.span is not None and info.value.span.line == 4


def _fails_fast(spec: str, match: str, line: int) -> ArchError:
    with pytest.raises(ArchError, match=match) as info:
        elaborate_text(spec, "bound.arch")
    assert info.value.span is not None and info.value.span.line == line, info.value.render()
    return info.value


def test_a_product_of_sums_of_sizes_is_capped_where_it_is_built() -> None:
    """(A0+1)*(A1+1)*...*(A15+1) has 2**16 terms: K=13 used to take 84 s, K=22 a MemoryError."""
    axes = [f"A{i}" for i in range(16)]
    product = "*".join(f"({a}+1)" for a in axes)
    spec = (f"axis B, {', '.join(axes)}\n"
            f"model M (x: [B, {', '.join(axes)}]) -> [B, *] {{\n"
            f"    n = {product}\n"
            "    return x\n}\n")
    err = _fails_fast(spec, "terms, more than the limit", 3)
    assert err.span is not None and err.span.col == 9


def test_an_axis_squared_forty_times_is_capped() -> None:
    spec = """axis B, S
block Sq (x: [B, S]) -> [B, S*S] {
    return rearrange(einsum(x, x, "b i, b j -> b i j"), "b i j -> b (i j)")
}
model M (x: [B, S]) -> [B, *] {
    return x >> stack(40) { Sq() }
}
"""
    _fails_fast(spec, "degree", 3)


def test_a_huge_string_literal_is_refused_quickly_and_in_little_memory(tmp_path: Path) -> None:
    """A 4 MiB string literal: the lexer's pattern used to take 1.3 GB to match it."""
    spec = tmp_path / "big.arch"
    spec.write_text("axis B\nmodel M (x: [B, 4]) -> [B, 4] {\n    s = \"" + "a" * (4_000_000) + "\"\n"
                    "    return x\n}\n")
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from archc.elaborate import elaborate_file
        from archc.errors import ArchError
        try:
            elaborate_file({str(spec)!r})
        except ArchError as err:
            print(err.span.line, err.span.col, err.message[:30])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)  # a hang guard
    assert out.returncode == 0, out.stderr[-2000:]
    line, col, *rest = out.stdout.split()
    assert (line, col) == ("3", "9") and "string is too long" in " ".join(rest), out.stdout


def test_a_file_that_is_not_utf8_is_a_located_error(tmp_path: Path) -> None:
    spec = tmp_path / "latin1.arch"
    spec.write_bytes(b"axis B\nmodel M (x: [B, 4]) -> [B, 4] {\n    return x  # caf\xe9\n}\n")
    with pytest.raises(ArchError, match="not UTF-8") as info:
        elaborate_file(spec)
    assert info.value.span is not None and (info.value.span.line, info.value.span.col) == (3, 20)
    assert info.value.render().splitlines()[0].endswith("error: the file is not UTF-8 text: byte 0xe9 cannot "
                                                        "start or continue a character")


def test_naming_a_long_chain_of_one_op_is_linear() -> None:
    """`build` of a chain of 199k relus used to probe relu, relu_1, ... relu_n for every name."""
    from archc.backends.torch.naming import Namer

    namer = Namer()
    names = [namer.take("relu") for _ in range(100_000)]
    assert names[:3] == ["relu", "relu_1", "relu_2"] and len(set(names)) == len(names)
    namer.take("relu_100001")  # a name taken under another base is skipped, never given twice
    assert namer.take("relu") == "relu_100000" and namer.take("relu") == "relu_100002"


def test_symbolic_link_loops_are_located_errors(tmp_path: Path) -> None:
    """A main spec or an import that is a link loop is an error with its location, never exit 70."""
    (tmp_path / "loop.arch").symlink_to("loop.arch")
    (tmp_path / "a.arch").symlink_to("b.arch")
    (tmp_path / "b.arch").symlink_to("a.arch")
    (tmp_path / "m.arch").write_text('import "a.arch"\naxis B\nmodel M (x: [B, 4]) -> [B, 4] { return x }\n')
    with pytest.raises(ArchError, match="cannot open spec file"):
        elaborate_file(tmp_path / "loop.arch")
    with pytest.raises(ArchError) as err:
        elaborate_file(tmp_path / "m.arch")
    assert "m.arch:1:1: error: cannot import 'a.arch'" in err.value.render()
