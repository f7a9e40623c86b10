"""docs/passes.md shows real output: its before/after examples are what the passes print now."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pass_examples_in_the_docs_are_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_passes", ROOT / "docs" / "gen_passes.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = gen
    spec.loader.exec_module(gen)
    doc = gen.DOC.read_text()
    assert gen.render(doc) == doc, "docs/passes.md is stale: run .venv/bin/python docs/gen_passes.py"
