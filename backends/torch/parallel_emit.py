"""The parallel plan as readable code: `def parallelize(model, mesh, ...)`, torchtitan style, plain
PyTorch calls. `archc build --target torch --parallel` appends it to the model's file, and
`archc.parallelize` runs the same text (archc/generated), so there is one spelling of a plan.

Module paths are spec text: they reach the code only as string constants (quote.py_str). The
helpers that torch has no public spelling for (the strided column split of a fused q/k/v
projection, the splits of stacked experts, FSDP's placement for them, the tensors FSDP2 cannot
split) are copied from backends/torch/parallel.py, where they are tested as they are.
"""

from __future__ import annotations

import inspect
import textwrap

from archc.backends.quote import py_comment, py_docstring, py_str, verify_python

from archc.analysis.parallel import ParallelPlan, Placement

_HEADER = """import torch
from torch import nn
"""

_IMPORTS = """from typing import Any

from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Partial, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (ColwiseParallel, ParallelStyle, PrepareModuleInput,
                                               PrepareModuleInputOutput, PrepareModuleOutput, RowwiseParallel,
                                               SequenceParallel, parallelize_module)
from torch.distributed.tensor.placement_types import _StridedShard
"""

# placement style -> its torch spelling; `logits` is Shard(-1) under loss parallelism, else Replicate();
# {seq} is the sequence axis of the stream under sequence parallelism
STYLES = {
    "colwise": "ColwiseParallel()",
    "fused": "FusedColwiseParallel({chunks})",
    "experts": "ExpertsTensorParallel({chunks})",
    "experts_partial": "ExpertsTensorParallel({chunks}, reduce=False)",
    "rowwise": "RowwiseParallel()",
    "rowwise_seq": "RowwiseParallel(output_layouts=Shard({seq}))",
    "embedding": "RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())",
    "head": "ColwiseParallel(output_layouts=logits, use_local_output=not loss_parallel)",
    "tied_output": "PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=Replicate(), "
                   "use_local_output=False)",
    "gather_output": "PrepareModuleOutput(output_layouts=Shard(-1), desired_output_layouts=logits, "
                     "use_local_output=not loss_parallel)",
    "split_stream": "SequenceSplit({seq}, inputs={inputs}, outputs={outputs}, where={where})",
    "sequence": "SequenceParallel(sequence_dim={seq}, use_local_output=True)",
    "gather_input": "PrepareModuleInput(input_layouts={ins}, desired_input_layouts={ins_whole}, "
                    "use_local_output={local})",
    "gathered": "PrepareModuleInputOutput(input_layouts={ins}, desired_input_layouts={ins_whole}, use_local_input=True, "
                "output_layouts={outs_whole}, desired_output_layouts={outs}, use_local_output=True)",
    "split_layers": "SequenceSplit({seq}, inputs={inputs}, outputs={outputs}, where={where})",
}


def _layouts(flags: tuple[bool, ...], layout: str) -> str:
    """`(Shard(1), None, None)`: `layout` for the stream, None (passed as it is) for the rest."""
    items = [layout if f else "None" for f in flags]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _spell(p: Placement) -> str:
    style = "fused" if p.style == "colwise" and p.chunks > 1 else \
        "rowwise_seq" if p.style == "rowwise" and p.seq is not None else \
        "experts_partial" if p.style == "experts" and p.shard_output else p.style
    shard = f"Shard({p.seq})"
    return STYLES[style].format(chunks=p.chunks, seq=p.seq, ins=_layouts(p.inputs, shard),
                                ins_whole=_layouts(p.inputs, "Replicate()"), outs=_layouts(p.outputs, shard),
                                outs_whole=_layouts(p.outputs, "Partial()" if p.shard_output else "Replicate()"),
                                inputs=p.inputs, outputs=p.outputs, where=py_str(p.where), local=p.local)


def _helpers() -> str:
    from archc.backends.torch import parallel

    parts = [parallel.FusedColwiseParallel, parallel._SumGradients, parallel._SumOutputs,
             parallel.ExpertsTensorParallel, parallel.SequenceSplit, parallel.ExpertParallel, parallel._expert_params,
             parallel.meshes,
             parallel._blocks_split, parallel._fsdp_placement, parallel._kept_whole]
    return "\n\n".join(inspect.getsource(f) for f in parts)


def _layer_groups(plan: ParallelPlan) -> tuple[list[tuple[tuple[str, ...], list[tuple[str, Placement]]]],
                                               list[Placement]]:
    """Layers whose placements are alike (relative to the layer), with those placements; and the
    placements outside every layer."""
    inside: dict[str, list[tuple[str, Placement]]] = {layer: [] for layer in plan.layers}
    rest = []
    for p in plan.placements:
        layer = next((lay for lay in plan.layers if p.path.startswith(lay + ".")), None)
        if layer is None:
            rest.append(p)
        else:
            inside[layer].append((p.path[len(layer) + 1:], p))
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for layer, items in inside.items():
        if items:
            groups.setdefault(tuple((rel, _spell(p)) for rel, p in items), []).append(layer)
    return [(tuple(layers), inside[layers[0]]) for layers in groups.values()], rest


def _paths(paths: tuple[str, ...] | list[str], indent: str) -> str:
    """A tuple of string constants, a few per line."""
    items = [py_str(p) for p in paths]
    lines, line = [], ""
    for item in items:
        if line and len(line) + len(item) > 90:
            lines.append(line)
            line = ""
        line += item + ", "
    lines.append(line)
    text = f"\n{indent} ".join(x.rstrip() for x in lines)
    return "(" + (text if len(items) == 1 else text.rstrip(",")) + ")"


def _dict(items: list[tuple[str, Placement]], indent: str) -> list[str]:
    out = ["{"]
    for rel, p in items:
        note = f"  # {py_comment(p.why)}" if p.why else ""
        out.append(f"{indent}    {py_str(rel)}: {_spell(p)},{note}")
    out.append(f"{indent}}}")
    return out


def parallelize_function(plan: ParallelPlan, model_name: str) -> str:
    """`def parallelize(model, mesh, ...)` for the plan."""
    doc = (f"Split a {model_name} over a torch DeviceMesh, in place, as archc planned it from the spec's axes "
           f"(divisibility checked for tp={plan.tp}; docs/parallel.md).\n\n"
           "mesh: 1-D (named 'tp' or 'dp', or say which with tp=/fsdp=) or 2-D named ('dp', 'tp'). "
           "Tensor parallelism over 'tp' (Megatron column/row splits, vocabulary-parallel embeddings), "
           "then FSDP2 over 'dp': one fully_shard per layer, then the root. loss_parallel leaves the "
           "logits split on the vocabulary. mp_policy: FSDP2's MixedPrecisionPolicy; norms_fp32 keeps "
           "the norms in fp32.\n")
    lines = ["def parallelize(model: nn.Module, mesh: Any, *, tp: bool | None = None, fsdp: bool | None = None,",
             "                loss_parallel: bool = False, mp_policy: Any = None, norms_fp32: bool = True,",
             "                reshard_after_forward: bool = True) -> nn.Module:",
             py_docstring("\n\n".join(textwrap.fill(part, 92) for part in doc.split("\n\n")), indent="    "),
             "    dp_mesh, tp_mesh = meshes(mesh, tp, fsdp)"]
    if plan.experts:  # the plan split the experts for this many data-parallel ranks, not for whole ones
        lines += [f"    if dp_mesh is None or dp_mesh.size() != {plan.ep}:",
                  f"        raise ValueError('this plan splits the experts over {plan.ep} data-parallel (\"dp\") ranks; the mesh '",
                  "                         + ('has none' if dp_mesh is None else f'has {dp_mesh.size()}'))"]
    lines += ["    logits = Shard(-1) if loss_parallel else Replicate()",
              "    if tp_mesh is not None:"]
    groups, rest = _layer_groups(plan)
    root = [p for p in rest if p.path == ""]
    rest = [p for p in rest if p.path != ""]
    for layers, items in groups:
        lines.append(f"        for layer in {_paths(layers, ' ' * 24)}:")
        body = _dict(items, " " * 12)
        lines.append(f"            parallelize_module(model.get_submodule(layer), tp_mesh, {body[0]}")
        lines += body[1:-1] + [body[-1] + ")"]
    if rest:
        body = _dict([(p.path, p) for p in rest], " " * 8)
        lines.append(f"        parallelize_module(model, tp_mesh, {body[0]}")
        lines += body[1:-1] + [body[-1] + ")"]
    for p in root:
        lines.append(f"        parallelize_module(model, tp_mesh, {_spell(p)})  # {py_comment(p.why)}")
    if not plan.placements:
        lines.append("        pass  # nothing to split")
    lines += ["    if dp_mesh is not None:"]
    if plan.experts:
        lines += [f"        experts = {_paths(plan.experts, ' ' * 19)}  # expert parallelism: {plan.ep} ranks",
                  "        for path in experts:",
                  "            parallelize_module(model.get_submodule(path), dp_mesh, ExpertParallel())"]
    kept = "_kept_whole(model, dp_mesh)" + (" | _expert_params(model, experts, dp_mesh)" if plan.experts else "")
    lines += ["        policy = mp_policy or MixedPrecisionPolicy()",
              "        options = {'mesh': dp_mesh, 'reshard_after_forward': reshard_after_forward,",
              f"                   'ignored_params': {kept}, 'shard_placement_fn': _fsdp_placement}}",
              "        if mp_policy is not None and norms_fp32 and policy.param_dtype not in (None, torch.float32):",
              "            fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32,",
              "                                        output_dtype=policy.param_dtype)",
              f"            for norm in {_paths(plan.norms, ' ' * 24)}:",
              "                module = model.get_submodule(norm)",
              "                if isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):",
              "                    fully_shard(module, mp_policy=fp32, **options)"]
    layers = plan.fsdp_units[:-1]
    if layers:
        lines += [f"        for layer in {_paths(layers, ' ' * 22)}:",
                  "            fully_shard(model.get_submodule(layer), mp_policy=policy, **options)"]
    lines += ["        fully_shard(model, mp_policy=policy, **options)",
              "    return model"]
    return "\n".join(lines) + "\n"


def parallel_source(plan: ParallelPlan, model_name: str = "model", standalone: bool = False) -> str:
    """The parallel section of a generated file: imports, helpers, `parallelize`. `standalone`
    adds the imports of the model file's head (torch, nn), for running it on its own."""
    text = (_HEADER + "\n" if standalone else "") + _IMPORTS + "\n\n" + _helpers() + "\n\n" + \
        parallelize_function(plan, model_name)
    paths = tuple(p.path for p in plan.placements if p.path) + plan.norms + plan.fsdp_units[:-1] + plan.experts + \
        tuple(p.where for p in plan.placements if p.where)  # where: the spec's file name and place
    verify_python(text, "<archc: parallelize>", strings=tuple(dict.fromkeys(paths)))
    return text


__all__ = ["STYLES", "parallel_source", "parallelize_function"]
