"""The Python API: `archc.compile(path, target="torch", **params) -> nn.Module`, `emit_python(graph)`.

torch is imported only when a backend is used, so `import archc` stays light.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

from archc.errors import ArchError, did_you_mean
from archc.ir.graph import Graph

TARGETS = ("torch", "fx")
_GRAPHS: weakref.WeakKeyDictionary[Any, Graph] = weakref.WeakKeyDictionary()  # module -> the IR it was built from


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ArchError(f"unknown target '{target}'", None,
                        did_you_mean(target, TARGETS) or f"the targets are {', '.join(TARGETS)}")


def memory_bytes() -> int | None:
    """This machine's physical memory, where the OS says (None elsewhere)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(graph: Graph) -> None:
    """Refuse, before allocating, a model whose parameters and buffers do not fit in this
    machine's memory (a spec may declare up to 10^11 elements; 10^10 f32 are 40 GB)."""
    need = sum(p.nbytes for p in graph.params.values())
    have = memory_bytes()
    if have is None or need <= have:
        return
    biggest = max(graph.params.values(), key=lambda p: p.numel)
    owner = next((n for n in graph.nodes if biggest.name in n.params.values()), None)
    raise ArchError(f"the parameters and buffers of {graph.name} need {_size(need)}, more than this "
                    f"machine's {_size(have)} of memory (the largest, '{biggest.name}', holds "
                    f"{biggest.numel:,} elements)", owner.span.to_span() if owner and owner.span else None,
                    "build it on a larger machine, or on the meta device from the generated file")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def build(graph: Graph, target: str = "torch") -> Any:
    """Lower an IR graph: "torch" gives an `nn.Module`, "fx" a `torch.fx.GraphModule`."""
    check_target(target)
    check_memory(graph)
    if target == "torch":
        from archc.backends.torch import build_module

        module = build_module(graph)
        _GRAPHS[module] = graph
        return module
    from archc.backends.fx import build_graph_module

    return build_graph_module(graph)


def compile(path: str | Path, target: str = "torch", model: str | None = None, dtype: str = "f32", opt: int = 0,
            **model_params: Any) -> Any:
    """Compile the spec at `path` to a freshly initialized module. `model` picks a model or block
    when the file has several; `dtype` ("f32", "bf16", "f16", "f64") is the dtype of the model's
    inputs that do not name one and of the parameters no input decides (archc/elaborate/dtypes.py);
    `opt` runs the passes of `archc build -O<opt>` first (docs/passes.md: -O1 keeps the
    state_dict, -O2 makes an eval-mode model whose weights a trained -O0 model's give through
    `archc.passes.manager.run_pipeline(graph, LEVELS[2]).weights(state_dict)`, or `archc deploy`);
    `model_params` override the model's parameters (`depth=4`)."""
    from archc.elaborate import elaborate_file
    from archc.passes.manager import LEVELS, run_pipeline

    check_target(target)
    if opt not in LEVELS:
        raise ArchError(f"unknown optimization level {opt!r}", None, f"the levels are {', '.join(map(str, LEVELS))}")
    overrides = {k: _as_spec_value(v) for k, v in model_params.items()}
    graph = elaborate_file(path, model=model, overrides=overrides, dtype=dtype)
    return build(run_pipeline(graph, LEVELS[opt]).graph if opt else graph, target)


def _as_spec_value(value: Any) -> Any:
    """A Python value as the elaborator holds it: lists are tuples (`depths=[2, 2, 6, 2]`)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_spec_value(v) for v in value)
    return value


def parallelize(model: Any, mesh: Any, *, tp: bool | None = None, fsdp: bool | None = None,
                sp: bool = False, ep: bool = False, loss_parallel: bool = False, mp_policy: Any = None,
                norms_fp32: bool = True, replicate: tuple[str, ...] = (), graph: Graph | None = None,
                **fsdp_options: Any) -> Any:
    """Split a model that archc built over a torch DeviceMesh, in place, and return the plan
    (archc/analysis/parallel.py): tensor parallelism derived from the IR's axes over the mesh's
    "tp" dimension, then FSDP2 (`fully_shard` per stack layer, then the root) over "dp"; `ep`
    splits stacked experts over "dp" (expert parallelism, all-to-all) instead of over "tp". A model
    made on the meta device gets its weights afterwards with `archc.init_weights(model)`. See
    docs/parallel.md."""
    from archc.backends.torch.parallel import parallelize as apply

    graph = graph or _GRAPHS.get(model)
    if graph is None:
        raise ArchError("parallelize needs the IR of the model: pass graph= (a model from archc.compile "
                        "or archc.build carries its own)")
    return apply(model, mesh, graph, tp=tp, fsdp=fsdp, sp=sp, ep=ep, loss_parallel=loss_parallel, mp_policy=mp_policy,
                 norms_fp32=norms_fp32, replicate=tuple(replicate), **fsdp_options)


def init_weights(model: Any, device: Any = "cpu") -> Any:
    """Storage and initial values for a model made on the meta device (after `parallelize`)."""
    from archc.backends.torch.parallel import init_weights as init

    return init(model, device)


def emit_python(graph: Graph) -> str:
    """The text of a standalone `.py` file (needs only torch) that defines the model."""
    from archc.backends.torch import emit_python as emit

    return emit(graph)


__all__ = ["TARGETS", "build", "check_target", "compile", "emit_python", "init_weights", "parallelize"]
