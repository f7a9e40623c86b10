"""`python -m archc.demo [spec.arch]`: compile a spec, run it on a random input, print what came out.

Symbolic axes get small sizes (B=2, T=16, others 32). Without an argument, or when the file does
not exist, the demo falls back to the bundled `examples/gpt_tiny.arch`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from archc.errors import ArchError

DEFAULT_SPEC = "specs/models/resnet18.arch"


def find_spec(argument: str | None) -> Path:
    """The spec to run: the argument if it exists (also under the bundled specs), else gpt_tiny."""
    from archc.resources import specs_root

    text = argument or DEFAULT_SPEC
    bundled = specs_root() / text.removeprefix("specs/")  # the same file in an installed archc
    for candidate in (Path(text), bundled):
        if candidate.is_file():
            return candidate
    fallback = specs_root() / "examples" / "gpt_tiny.arch"
    print(f"{text} does not exist; running {fallback.name} instead", file=sys.stderr)
    return fallback


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    spec = find_spec(args[0] if args else None)
    try:
        import torch

        from archc.backends.torch import build_module
        from archc.backends.torch.inputs import example_inputs
        from archc.elaborate import elaborate_file

        start = time.perf_counter()
        graph = elaborate_file(spec)
        module = build_module(graph).eval()
        built = time.perf_counter() - start
        inputs = example_inputs(graph)
        with torch.no_grad():
            out = module(*inputs)
    except ArchError as err:
        print(err.render(), file=sys.stderr)
        return 1
    outs = out if isinstance(out, tuple) else (out,)
    n_params = sum(p.numel() for p in module.parameters())
    print(f"model {graph.name} from {spec.name}: {len(graph.nodes)} ops, compiled in {built * 1000:.0f} ms")
    for port, x in zip(graph.inputs, inputs):
        print(f"  input  {port.name}: {port.type} -> {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}")
    for port, y in zip(graph.outputs, outs):
        print(f"  output {port.name}: {port.type} -> {tuple(y.shape)} {str(y.dtype).removeprefix('torch.')}")
    print(f"  parameters: {n_params:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
