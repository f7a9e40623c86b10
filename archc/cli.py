"""The `archc` command line. Subcommands live in `archc/commands/`, one module each.

A mistake in a spec prints `file:line:col: error: ...` with the line and a caret, and exits 1.
Anything else that goes wrong is a bug in archc and says so.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from archc.errors import ArchError

DESCRIPTION = """archc compiles neural-network architectures written in .arch files.

  archc check  spec.arch              parse and type-check; errors point at file:line:col
  archc check  resnet50               a zoo model's name works wherever a spec path does
  archc list                          the zoo: references, parameters, ops
  archc import net.py:Net --example-input 2,16   a PyTorch module as a spec, checked
  archc ir     spec.arch [-o F.json]  the typed IR as JSON (or --arch: printed back as .arch)
  archc fmt    spec.arch [--check]    canonical formatting, in place
  archc build  spec.arch --target T   lower to PyTorch and other targets
  archc render spec.arch -o net.svg   draw the architecture
  archc summary spec.arch             parameters, FLOPs and activation memory per block
  archc bench  spec.arch             time eager, -O2 and torch.compile side by side
  archc space  space.arch --count    a spec with choice(...) holes: count, --enumerate, --sample N
"""


def parse_value(text: str) -> Any:
    """A `--set` value: any .arch expression (`4`, `0.1`, `true`, `"name"`, `[2, 2, 6, 2]`,
    `hyper(n=4)`). It is evaluated in the model's file, so it may name blocks and ops."""
    from archc.frontend.parser import parse_expr

    return parse_expr(text, file="--set")


def parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip().isidentifier():
            raise ArchError(f"--set takes NAME=VALUE, got '{item}'")
        out[name.strip()] = parse_value(value.strip())
    return out


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """The arguments every command that compiles a spec takes."""
    from archc.registry import spec_argument

    p.add_argument("spec", type=spec_argument, help="the .arch file, or a zoo model's name (archc list)")
    p.add_argument("--model", help="which model or block to compile (when the file has several)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="override a model parameter, e.g. --set depth=24 (repeatable)")
    p.add_argument("--dtype", choices=("f32", "bf16", "f16", "f64"), default="f32",
                   help="the dtype of inputs that name none, and of the parameters no input decides")
    p.add_argument("--include", action="append", type=Path, default=[], metavar="DIR",
                   help="also allow imports from DIR (repeatable)")
    p.add_argument("--max-nodes", type=int, default=50_000,  # archc.ir.verify.MAX_NODES
                   help="expansion limit (ops)")


def load_graph(args: argparse.Namespace) -> Any:
    """Elaborate the spec named by add_spec_args' arguments into the IR."""
    from archc.elaborate import Limits, elaborate_file
    from archc.registry import check_spec_exists

    check_spec_exists(args.spec)
    return elaborate_file(args.spec, model=args.model, overrides=parse_sets(args.set),
                          includes=args.include, limits=Limits(max_nodes=args.max_nodes),
                          dtype=getattr(args, "dtype", "f32"))


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file so that a reader sees the old content or the new one, never a part
    (archc.files.write_atomic: the mode of the file it replaces is kept)."""
    from archc.files import write_atomic as write

    write(path, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archc", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"archc {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import archc.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"archc.commands.{info.name}")
        module.register(sub)
    return parser


def _version() -> str:
    from archc import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ArchError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # a bug in archc, never a mistake in the spec
        traceback.print_exc()
        print("archc: internal error: this is a bug in archc, not in your spec; please report it",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
