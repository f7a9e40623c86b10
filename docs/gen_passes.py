"""Fill the before/after examples of docs/passes.md with real output of the passes.

    .venv/bin/python docs/gen_passes.py           # rewrite the examples in docs/passes.md
    .venv/bin/python docs/gen_passes.py --check   # exit 1 if an example is stale

Each example is a marker `<!-- example: PASSES on SPEC -->` followed by generated text up to
`<!-- end example -->`: the spec (tests/passes/specs/SPEC.arch) elaborated and printed with
print_graph, then the same after the comma-separated PASSES. tests/passes/test_pass_docs.py fails
when the page differs from what this prints.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "passes.md"
SPECS = ROOT / "tests" / "passes" / "specs"
EXAMPLE = re.compile(r"(<!-- example: ([\w,]+) on (\w+) -->\n)(.*?)(<!-- end example -->)", re.S)
LOCATION = re.compile(r"# (?:\S*/)?([\w.-]+\.arch:\d+)$", re.M)


def _print(graph: object) -> str:
    from archc.ir.printer import print_graph

    return LOCATION.sub(r"# \1", print_graph(graph))  # type: ignore[arg-type]


def example(passes: str, spec: str) -> str:
    from archc.elaborate import elaborate_file
    from archc.passes.manager import run_pipeline

    before = elaborate_file(SPECS / f"{spec}.arch")
    after = run_pipeline(before, passes.split(",")).graph
    fence = "arch-fragment" if any(a.name == "fused" for n in after.nodes for a in n.annotations) else "arch"
    return (f"Before (`tests/passes/specs/{spec}.arch`, elaborated):\n\n```arch\n{_print(before)}```\n\n"
            f"After `{passes.replace(',', ', ')}`:\n\n```{fence}\n{_print(after)}```\n")


def render(text: str) -> str:
    return EXAMPLE.sub(lambda m: m.group(1) + example(m.group(2), m.group(3)) + m.group(5), text)


def main() -> int:
    text = DOC.read_text()
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            print("docs/passes.md is stale: run .venv/bin/python docs/gen_passes.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
