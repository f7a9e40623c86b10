"""How fast `archc check` is on a 48-layer transformer (GPT-2 XL's depth and width).

Prints, side by side: the whole command in a fresh process (Python start, imports, grammar,
elaboration), and in-process elaboration split into parse and elaborate, cold and warm. Writes
nothing; copy the table into docs/benchmarks.md. Run: python bench/bench_check.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_of  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "models" / "gpt2.arch"
SETS = ["depth=48", "dim=1600", "heads=25"]




def main() -> None:
    from archc.cli import parse_sets
    from archc.elaborate import elaborate_file
    from archc.frontend.parser import parse

    cmd = [sys.executable, "-m", "archc", "check", str(SPEC)] + [a for s in SETS for a in ("--set", s)]
    cli_best, cli_med = best_of(lambda: subprocess.run(cmd, check=True, capture_output=True), 5)
    overrides = parse_sets(SETS)
    t = time.perf_counter()
    graph = elaborate_file(SPEC, overrides=overrides)
    cold = time.perf_counter() - t
    warm_best, warm_med = best_of(lambda: elaborate_file(SPEC, overrides=overrides), 5)
    text = SPEC.read_text()
    parse_best, _ = best_of(lambda: parse(text, str(SPEC)), 20)
    print(f"spec: {SPEC.relative_to(ROOT)} --set {' '.join(SETS)}: {len(graph.nodes)} ops, "
          f"{graph.param_count():,} parameters")
    print("| what | best | median |")
    print("|---|---|---|")
    print(f"| `archc check` (new process, end to end) | {cli_best * 1000:.0f} ms | {cli_med * 1000:.0f} ms |")
    print(f"| elaborate, first call in a process (grammar built) | {cold * 1000:.0f} ms | |")
    print(f"| elaborate, warm (parse + elaborate + IR) | {warm_best * 1000:.0f} ms | {warm_med * 1000:.0f} ms |")
    print(f"| parse gpt2.arch alone | {parse_best * 1000:.1f} ms | |")


if __name__ == "__main__":
    main()
