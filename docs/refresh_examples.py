"""Rewrite the outputs shown in a documentation page from what archc prints now.

    .venv/bin/python docs/refresh_examples.py docs/language.md README.md

For each ```arch-error block, the ```text block after it becomes the error archc gives; for each
```console transcript, the lines after each `$ archc ...` become what the command prints. Run it
after changing an error message or an output format, then read the diff: `tests/test_docs.py`
checks the pages against the compiler, and this is the way to update them on purpose.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _test_docs() -> Any:
    spec = importlib.util.spec_from_file_location("test_docs", ROOT / "tests" / "test_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _outputs(page: Path, td: Any) -> dict[int, str]:
    """New bodies, by the 1-based line of the fence they replace."""
    from archc.cli import main
    from archc.errors import ArchError

    fences = td.fences(page)
    new: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for f in fences:
            if f.lang == "arch" and "file" in f.options:
                path = folder / f.options["file"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f.text, encoding="utf-8")
        (folder / "specs").symlink_to(ROOT / "specs", target_is_directory=True)
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            for i, f in enumerate(fences):
                if f.lang == "arch-error" and i + 1 < len(fences) and fences[i + 1].lang == "text":
                    try:
                        td.compile_spec(f.text, td.SPEC, folder)
                        new[fences[i + 1].line] = "(no error: this example compiles)"
                    except ArchError as err:
                        new[fences[i + 1].line] = err.render()
                elif f.lang == "console" and any(ln.strip() and not ln.startswith("$ ")
                                                 for ln in f.text.splitlines()):
                    lines = []
                    for line in f.text.splitlines():
                        if line.startswith("$ "):
                            buf = io.StringIO()
                            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                                main(shlex.split(line[2:])[1:])
                            lines += [line, buf.getvalue().rstrip("\n")]
                    new[f.line] = "\n".join(lines)
        finally:
            os.chdir(cwd)
    return new


def refresh(page: Path) -> bool:
    """Rewrite one page; True when it changed. A body whose only difference is a time
    (`(12 ms)`) is left as it is, so the diff shows real changes only."""
    td = _test_docs()
    new = _outputs(page, td)
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        body = new.get(i + 1)  # is this line an opening fence whose body is replaced?
        i += 1
        if body is None:
            continue
        start = i
        while lines[i] != "```":
            i += 1
        old = "\n".join(lines[start:i])
        out += (old if td._normalize(old) == td._normalize(body) else body).splitlines()
    text = "\n".join(out) + "\n"
    changed = text != page.read_text(encoding="utf-8")
    if changed:
        page.write_text(text, encoding="utf-8")
    return changed


def main(argv: list[str]) -> int:
    for name in argv or ["docs/language.md", "README.md"]:
        page = Path(name).resolve()
        print(f"{'updated' if refresh(page) else 'unchanged'}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
