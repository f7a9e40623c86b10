"""`archc deploy spec.arch --weights W.pt -o OUT/`: fold the train-time model for inference.

Builds the train-time graph, loads the weights (a state_dict saved with torch.save, or a
.safetensors file; keys as archc, timm or Hugging Face name them: --key-map), runs the
weight-changing passes in eval mode (BatchNorm folding, re-parameterization, dropout removal,
clean-up), checks on random inputs that the deployed model computes what the train-time model
computes (|deployed - train| <= atol + rtol * |train| everywhere, no NaN), and writes the folder OUT
holding OUT/deployed.pt (the deployed state_dict; OUT/deployed.safetensors with --format
safetensors) and OUT/<spec>.deploy.arch (the deployed IR as .arch, which archc compiles again),
both at once: an interrupted deploy leaves the old pair or the new one. OUT must be new or hold
only what a deploy wrote there. Nothing is written when the weights do not load or the check fails
(exit status 1).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from archc.cli import add_spec_args, load_graph
from archc.errors import ArchError
from archc.files import refuse_overwrite, write_folder_atomic
from archc.weights import FORMATS, KEY_MAPS, MAX_WEIGHTS_BYTES, weights_bytes

__all__ = ["MAX_WEIGHTS_BYTES", "read_weights", "register", "run"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("deploy", help="fold a trained multi-branch model into its deploy form, checked",
                       description="Fold BatchNorms and re-parameterize linear branches (eval mode), check the "
                                   "result against the train-time model on random inputs, and write the "
                                   "deployed weights and the deployed spec.")
    add_spec_args(p)
    p.add_argument("--weights", type=Path, required=True,
                   help="train-time state_dict: torch.save (read with weights_only=True) or .safetensors")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="the folder to write (new, or one a deploy wrote: it is replaced as a whole)")
    p.add_argument("--tolerance", "--atol", type=float, default=1e-4, dest="tolerance",
                   help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="relative tolerance: |deployed - train| <= atol + rtol * |train| (default 1e-4)")
    p.add_argument("--key-map", choices=KEY_MAPS, default="archc",
                   help="the weights' key names: archc's (default), timm's or Hugging Face's (hf: the zoo's "
                        "gpt2, llama, mixtral); see archc.zoo")
    p.add_argument("--format", choices=FORMATS, default="pt",
                   help="the deployed weights' file: deployed.pt (torch.save, default) or deployed.safetensors")
    p.add_argument("--trials", type=int, default=2, help="random input batches to compare on (default 2)")
    p.set_defaults(func=run)


def read_weights(path: Path, key_map: str = "archc", spec: Path | None = None,
                 param_names: set[str] | None = None) -> dict:  # type: ignore[type-arg]
    """The state_dict in `path` (archc.weights.read_weights: torch.save or .safetensors, read safely),
    its keys mapped to the spec's (archc.weights.map_keys)."""
    from archc.weights import map_keys
    from archc.weights import read_weights as read

    return map_keys(read(path), key_map, spec, param_names)


def run(args: argparse.Namespace) -> int:
    from archc.deploy import deploy
    from archc.elaborate import elaborate_text
    from archc.ir.printer import canonical, print_graph

    for value, flag in ((args.tolerance, "--tolerance"), (args.rtol, "--rtol")):
        if not (math.isfinite(value) and value >= 0):
            raise ArchError(f"{flag} must be a finite number >= 0, got {value}")
    refuse_overwrite(args.output, [args.spec, args.weights])
    graph = load_graph(args)
    sd = read_weights(args.weights, args.key_map, args.spec, {p.name for p in graph.params.values()})
    result = deploy(graph, sd, tolerance=args.tolerance, rtol=args.rtol, trials=args.trials)
    text = print_graph(result.graph)
    again = elaborate_text(text, f"{args.spec.stem}.deploy.arch")  # the deployed spec must compile again
    if canonical(again) != canonical(result.graph):
        raise RuntimeError("the deployed IR does not print back to the same IR")
    arch_path = args.output / f"{args.spec.stem}.deploy.arch"
    weights_path = args.output / f"deployed.{args.format}"
    write_folder_atomic(args.output, {weights_path.name: weights_bytes(result.state_dict, args.format),
                                      arch_path.name: text})
    before, after = graph.param_count(False), result.graph.param_count(False)
    print(f"{args.spec}: deployed model {graph.name}: {len(graph.nodes)} ops -> {len(result.graph.nodes)}, "
          f"{before:,} -> {after:,} parameters and buffers")
    print(f"check: max abs error {result.max_error:.3g}, max relative error {result.max_rel_error:.3g} "
          f"(atol {args.tolerance:g}, rtol {args.rtol:g}) on {args.trials} random batches, eval mode")
    print(f"wrote {weights_path} and {arch_path}")
    return 0
