"""`archc deploy spec.arch --weights W.pt -o OUT/`: fold the train-time model for inference.

Builds the train-time graph, loads the weights (a state_dict saved with torch.save), runs the
weight-changing passes in eval mode (BatchNorm folding, re-parameterization, dropout removal,
clean-up), checks on random inputs that the deployed model computes what the train-time model
computes (max abs error, --tolerance), and writes OUT/deployed.pt (the deployed state_dict) and
OUT/<spec>.deploy.arch (the deployed IR as .arch, which archc compiles again). Nothing is
written when the check fails (exit status 1).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

from archc.cli import add_spec_args, load_graph
from archc.errors import ArchError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("deploy", help="fold a trained multi-branch model into its deploy form, checked",
                       description="Fold BatchNorms and re-parameterize linear branches (eval mode), check the "
                                   "result against the train-time model on random inputs, and write the "
                                   "deployed weights and the deployed spec.")
    add_spec_args(p)
    p.add_argument("--weights", type=Path, required=True, help="train-time state_dict (torch.save)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="folder to write into")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs error allowed (default 1e-4)")
    p.add_argument("--key-map", choices=("archc", "timm"), default="archc",
                   help="the weights' key names: archc's (default) or timm's (zoo specs; see archc.zoo)")
    p.add_argument("--trials", type=int, default=2, help="random input batches to compare on (default 2)")
    p.set_defaults(func=run)


def _read_weights(path: Path, key_map: str, spec: Path) -> dict:  # type: ignore[type-arg]
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch.load raises many kinds; all mean "not a checkpoint")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArchError(f"{path}: cannot read the weights (expected a state_dict saved with torch.save): "
                        f"{first}") from None
    if hasattr(sd, "state_dict") and not isinstance(sd, dict):
        sd = sd.state_dict()
    if not isinstance(sd, dict):
        raise ArchError(f"{path}: expected a state_dict (a dict of tensors), got {type(sd).__name__}")
    if key_map == "timm":
        from archc.zoo import timm_to_archc

        sd = timm_to_archc(spec.stem, sd)
    return sd


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_together(files: dict[Path, bytes]) -> None:
    """Write several files so that none is ever seen half-written: all go to temporary files in
    their folders first, and are renamed into place only when every one has been written."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def run(args: argparse.Namespace) -> int:
    import torch

    from archc.deploy import deploy
    from archc.elaborate import elaborate_text
    from archc.ir.printer import canonical, print_graph

    graph = load_graph(args)
    sd = _read_weights(args.weights, args.key_map, args.spec)
    result = deploy(graph, sd, tolerance=args.tolerance, trials=args.trials)
    text = print_graph(result.graph)
    again = elaborate_text(text, f"{args.spec.stem}.deploy.arch")  # the deployed spec must compile again
    if canonical(again) != canonical(result.graph):
        raise RuntimeError("the deployed IR does not print back to the same IR")
    buffer = io.BytesIO()
    torch.save(result.state_dict, buffer)
    arch_path = args.output / f"{args.spec.stem}.deploy.arch"
    weights_path = args.output / "deployed.pt"
    write_together({weights_path: buffer.getvalue(), arch_path: text.encode()})
    before, after = graph.param_count(False), result.graph.param_count(False)
    print(f"{args.spec}: deployed model {graph.name}: {len(graph.nodes)} ops -> {len(result.graph.nodes)}, "
          f"{before:,} -> {after:,} parameters and buffers")
    print(f"check: max abs error {result.max_error:.3g} (tolerance {args.tolerance:g}) "
          f"on {args.trials} random batches, eval mode")
    print(f"wrote {weights_path} and {arch_path}")
    return 0
