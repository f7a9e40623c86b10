"""`archc import module.py:Class --example-input 2,16 [-o spec.arch]`: a PyTorch module as a spec.

Runs the Python file (it is the user's own code: importing a module means running it), builds
`Class()` with no arguments, and writes what `archc.import_module` returns for random example
inputs of the given shapes: spec text whose parameter names are the module's state_dict keys,
verified before it is written (strict state_dict load, outputs within 1e-5). See docs/zoo.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from archc.errors import ArchError, did_you_mean
from archc.files import refuse_overwrite, write_atomic


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("import", help="turn a PyTorch module into a spec (checked before it is written)",
                       description="Import the nn.Module class CLASS of the Python file FILE (which is run) as "
                                   ".arch text whose parameter names are its state_dict keys; the spec is built "
                                   "and compared with the module on random example inputs before it is written.")
    p.add_argument("target", metavar="FILE.py:CLASS", help="the Python file and the class in it (built with no arguments)")
    p.add_argument("--example-input", action="append", required=True, metavar="SHAPE",
                   help="the shape of an example input, e.g. 2,3,224,224, or i64:2,16 for token ids (axis 0 is "
                        "the batch; repeat per input)")
    p.add_argument("-o", "--output", type=Path, help="write the spec here instead of printing it")
    p.set_defaults(func=run)


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`2,16` (f32) or `i64:2,16` (tokens) as (dtype, shape)."""
    dtype, _, dims = text.rpartition(":")
    try:
        shape = tuple(int(part) for part in dims.split(","))
    except ValueError:
        shape = ()
    if dtype not in ("", "f32", "i64") or not shape or any(d <= 0 for d in shape) or len(shape) > 8:
        raise ArchError(f"--example-input takes a shape such as 2,16 (positive sizes; i64:2,16 for token ids), "
                        f"got '{text}'")
    return dtype or "f32", shape


def _example(dtype: str, shape: tuple[int, ...], g: Any) -> Any:
    """A random example input: normal floats, or token ids 0 and 1 (within any vocabulary)."""
    import torch

    return torch.randn(shape, generator=g) if dtype == "f32" else torch.randint(0, 2, shape, generator=g)


def load_class(target: str) -> Any:
    """The class CLASS of FILE.py, from `FILE.py:CLASS` (the file is run)."""
    path_text, colon, name = target.rpartition(":")
    if not colon or not path_text or not name.isidentifier():
        raise ArchError(f"expected FILE.py:CLASS, got '{target}'")
    path = Path(path_text)
    if not path.is_file():
        raise ArchError(f"no such Python file: {path}")
    spec = importlib.util.spec_from_file_location(f"_archc_import_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ArchError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `import` does: dataclasses and pickling look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001  (the user's file fails: say so, not as archc's bug)
        sys.modules.pop(spec.name, None)
        raise ArchError(f"{path}: running it failed: {type(err).__name__}: {err}") from None
    if not hasattr(module, name):
        classes = [k for k, v in vars(module).items() if isinstance(v, type)]
        raise ArchError(f"{path} has no '{name}'", None, did_you_mean(name, classes))
    return getattr(module, name)


def run(args: argparse.Namespace) -> int:
    import torch

    from archc.importer import import_module

    shapes = [_shape(text) for text in args.example_input]
    cls = load_class(args.target)
    try:
        module = cls()
    except Exception as err:  # noqa: BLE001
        raise ArchError(f"{args.target}(): building it failed: {type(err).__name__}: {err}") from None
    if not isinstance(module, torch.nn.Module):
        raise ArchError(f"{args.target} is not an nn.Module class")
    g = torch.Generator().manual_seed(0)
    source = f"{Path(args.target.rpartition(':')[0]).name}:{cls.__name__}"
    text = import_module(module, [_example(dtype, shape, g) for dtype, shape in shapes], source=source)
    if args.output:
        refuse_overwrite(args.output, [Path(args.target.rpartition(":")[0])])
        write_atomic(args.output, text)
        print(f"wrote {args.output}: {type(module).__name__}, checked against the module")
    else:
        sys.stdout.write(text)
    return 0
