"""Apply a parallel plan (archc/analysis/parallel.py) to the module the torch backend built:
tensor parallelism with `parallelize_module`, then FSDP2's `fully_shard` per unit, as torchtitan's
`parallelize_llama` does by hand. `archc.parallelize(model, mesh, ...)` is the entry point; it
runs the function that backends/torch/parallel_emit.py writes for the plan, and the helpers below
(the fused column split, the splits of stacked experts, FSDP's placements, the tensors kept whole)
are copied into that text.

    mesh            a 1-D DeviceMesh (named "tp" or "dp", or say which with tp=/fsdp=) or a 2-D
                    one named ("dp", "tp"): FSDP over "dp", tensor parallelism over "tp"
    mp_policy       FSDP2's MixedPrecisionPolicy for every unit; with `norms_fp32` the norms are
                    units of their own that keep fp32 parameters and compute and hand the unit's
                    dtype on (MixedPrecisionPolicy's output_dtype)
    sp              sequence parallelism: inside each stack the stream is split along the sequence
                    between the tensor-parallel blocks (norms SequenceParallel)
    ep              expert parallelism: stacked experts split over "dp" (E / n each), their tokens
                    sent by all-to-all (otherwise tensor parallelism splits their hidden features)
    loss_parallel   the logits stay split on the vocabulary (a DTensor, Shard(-1)): compute the
                    loss under `torch.distributed.tensor.parallel.loss_parallel()`

`init_weights(model, device)` gives a model made on the meta device its storage and its initial
values (each module's own `reset_parameters`, children before parents, so the spec's initializers
win over torch's defaults), after parallelizing: each rank then only allocates its shards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle
from torch.distributed.tensor.placement_types import _StridedShard

from archc.analysis.parallel import ParallelPlan, plan_parallel
from archc.errors import ArchError
from archc.ir.graph import Graph


class FusedColwiseParallel(ColwiseParallel):
    """ColwiseParallel for a linear whose output features are `chunks` blocks (GPT-2's c_attn: q, k,
    v): each rank holds its part of every block (`_StridedShard(0, split_factor=chunks)`), so it
    computes whole heads of q, of k and of v. A plain column split would give rank 0 all of q."""

    def __init__(self, chunks: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunks = chunks

    def _partition_linear_fn(self, name: str, module: nn.Module, device_mesh: Any) -> None:
        for key, param in module.named_parameters():
            placement = [_StridedShard(0, split_factor=self.chunks)]
            module.register_parameter(key, nn.Parameter(distribute_tensor(param, device_mesh, placement),
                                                        requires_grad=param.requires_grad))

    @staticmethod
    def _prepare_output_fn(output_layouts: Any, use_local_output: bool, mod: nn.Module, outputs: Any,
                           device_mesh: Any) -> Any:
        return outputs.to_local()  # this rank's part of each block, in block order


class _SumGradients(torch.autograd.Function):
    """Megatron-LM's f for a mixture's inputs x and routing weights: the identity, whose backward
    sums both gradients over the ranks in one all-reduce (each rank's part of the experts gives its
    part of each)."""

    @staticmethod
    def forward(ctx: Any, group: Any, x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.group = group
        return x.view_as(x), weights.view_as(weights)

    @staticmethod
    def backward(ctx: Any, dx: torch.Tensor, dw: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(dx.dtype, dw.dtype)
        flat = torch.cat([dx.reshape(-1).to(dtype), dw.reshape(-1).to(dtype)])
        torch.distributed.all_reduce(flat, group=ctx.group)
        return None, flat[:dx.numel()].view_as(dx).to(dx.dtype), flat[dx.numel():].view_as(dw).to(dw.dtype)


class _SumOutputs(torch.autograd.Function):
    """Megatron-LM's g: the sum over the ranks of their partial outputs, whose backward is the
    identity (every rank's part gets the whole gradient)."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, group: Any) -> torch.Tensor:
        y = y.contiguous().clone()
        torch.distributed.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class ExpertsTensorParallel(ParallelStyle):
    """Tensor parallelism inside stacked experts (moe_experts), as in a dense MLP: every expert's
    hidden features are split over the ranks, its first weight [E, h, D] by rows (`chunks` 2: gate
    and up, each split, `_StridedShard(1, split_factor=2)`) and its second [E, D, h] by columns. The
    router's choices are the same on every rank, so each rank runs every token through its part
    of its experts (backends/torch/conditional.py reads the DTensors' local parts); the partial sums
    are all-reduced once, after the combine, and in the backward pass the gradients of the input
    and of the routing weights (each rank's part of every expert's output multiplies them), one
    all-reduce for both. `reduce=False` leaves the partial sums to the module around (sequence
    parallelism: its output `Partial()`, reduce-scattered along the sequence)."""

    def __init__(self, chunks: int = 1, reduce: bool = True) -> None:
        super().__init__()
        self.chunks, self.reduce = chunks, reduce

    def _partition(self, name: str, module: nn.Module, device_mesh: Any) -> None:
        if name:
            return
        (first_name, first), (second_name, second) = module.named_parameters(recurse=False)
        rows = _StridedShard(1, split_factor=self.chunks) if self.chunks > 1 else Shard(1)
        for key, param, placement in ((first_name, first, rows), (second_name, second, Shard(2))):
            module.register_parameter(key, nn.Parameter(distribute_tensor(param, device_mesh, [placement]),
                                                        requires_grad=param.requires_grad))

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        group = device_mesh.get_group()
        return distribute_module(
            module, device_mesh, self._partition,
            input_fn=lambda mod, inputs, mesh: (*_SumGradients.apply(group, inputs[0], inputs[1]), *inputs[2:]),
            output_fn=lambda mod, output, mesh: _SumOutputs.apply(output, group) if self.reduce else output)


class SequenceSplit(ParallelStyle):
    """Sequence parallelism's ends for a stack that is no module of its own (its layers take more
    than the stream: Llama's rotary tables): on the first layer, the inputs flagged in `inputs` are
    sliced along `sequence_dim` (each rank keeps its part, no communication; the backward pass
    gathers the gradient); on the last layer, the outputs flagged in `outputs` are gathered. A
    length the ranks do not divide is an error that names the stack's place in the spec (`where`)."""

    def __init__(self, sequence_dim: int, *, inputs: tuple[bool, ...] = (), outputs: tuple[bool, ...] = (),
                 where: str = "") -> None:
        super().__init__()
        self.dim, self.inputs, self.outputs, self.where = sequence_dim, inputs, outputs, where

    def _split(self, x: torch.Tensor, mesh: Any) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        if x.shape[self.dim] % mesh.size():
            raise ValueError(f"{self.where}: error: sequence parallelism over {mesh.size()} ranks splits the "
                             f"{x.shape[self.dim]} positions of the stream, which {mesh.size()} does not divide")
        whole = DTensor.from_local(x, mesh, [Replicate()], run_check=False)
        return whole.redistribute(placements=[Shard(self.dim)]).to_local()

    def _gather(self, x: torch.Tensor, mesh: Any) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        part = DTensor.from_local(x, mesh, [Shard(self.dim)], run_check=False)
        return part.redistribute(placements=[Replicate()]).to_local()

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        if self.inputs:
            module.register_forward_pre_hook(lambda mod, args: tuple(
                self._split(a, device_mesh) if split else a for a, split in zip(args, self.inputs)))
        if self.outputs:
            def gather(mod: nn.Module, args: Any, out: Any) -> Any:
                many = isinstance(out, tuple)
                got = tuple(self._gather(o, device_mesh) if split else o
                            for o, split in zip(out if many else (out,), self.outputs))
                return got if many else got[0]
            module.register_forward_hook(gather)
        return module


class ExpertParallel(ParallelStyle):
    """Expert parallelism (GShard, Lepikhin et al. 2021; torchtitan's ExpertParallel): the E stacked
    experts split over the data-parallel ranks (E / n each, `Shard(0)`). Each rank sends every
    choice of its tokens (the token and its routing weight) to the rank that holds the chosen
    expert (all-to-all), runs its experts on what it receives (one choice per row), sends the
    outputs back (all-to-all) and sums each token's k choices."""

    def _partition(self, name: str, module: nn.Module, device_mesh: Any) -> None:
        if name:
            return
        for key, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(key, nn.Parameter(distribute_tensor(param, device_mesh, [Shard(0)]),
                                                        requires_grad=param.requires_grad))

    def _dispatch(self, module: nn.Module, inputs: Any, device_mesh: Any) -> Any:
        import torch.distributed._functional_collectives as funcol

        x, weights, indices = inputs
        group, ranks = device_mesh.get_group(), device_mesh.size()
        local = next(module.parameters()).shape[0] // ranks  # experts per rank
        k = indices.shape[-1]
        flat = indices.reshape(-1)
        order = torch.argsort(flat, stable=True)  # the choices by expert, so by rank
        send = torch.bincount(flat // local, minlength=ranks)
        recv = torch.empty_like(send)
        torch.distributed.all_to_all_single(recv, send, group=group)
        send, recv = send.tolist(), recv.tolist()
        rows = x.reshape(-1, x.shape[-1])[order // k]
        rows = torch.cat([rows, weights.reshape(-1)[order].to(rows.dtype).unsqueeze(1)], dim=1)
        got = funcol.all_to_all_single_autograd(rows, recv, send, group)
        expert = torch.empty(sum(recv), dtype=flat.dtype, device=flat.device)
        torch.distributed.all_to_all_single(expert, (flat[order] % local).contiguous(), recv, send, group=group)
        module._expert_route = (order, k, send, recv, x.shape)
        return got[:, :-1], got[:, -1:], expert.unsqueeze(1)

    def _combine(self, module: nn.Module, output: torch.Tensor, device_mesh: Any) -> torch.Tensor:
        import torch.distributed._functional_collectives as funcol

        order, k, send, recv, shape = module._expert_route
        back = funcol.all_to_all_single_autograd(output, send, recv, device_mesh.get_group())
        y = back.new_zeros(order.shape[0] // k, back.shape[-1]).index_add(0, order // k, back)
        return y.reshape(shape[:-1] + y.shape[-1:])

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        return distribute_module(module, device_mesh, self._partition, input_fn=self._dispatch,
                                 output_fn=self._combine)


def _expert_params(model: nn.Module, paths: tuple[str, ...], mesh: Any) -> set[nn.Parameter]:
    """The parameters of experts split by expert parallelism: FSDP leaves them (each rank holds its
    experts whole), and their gradients, sums over every rank's tokens, are divided by the number
    of ranks (FSDP's mean over the data-parallel ranks)."""
    size = mesh.size()

    def mean(p: torch.Tensor) -> None:
        assert p.grad is not None
        p.grad.div_(size)

    params = {p for path in paths for p in model.get_submodule(path).parameters()}
    for p in params:
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(mean)
    return params


def meshes(mesh: Any, tp: bool | None = None, fsdp: bool | None = None) -> tuple[Any, Any]:
    """(the data-parallel mesh or None, the tensor-parallel mesh or None) of a 1-D or 2-D mesh."""
    names = tuple(mesh.mesh_dim_names or ())
    if mesh.ndim == 2:
        if names != ("dp", "tp"):
            raise ValueError(f"a 2-D mesh must be named ('dp', 'tp'), got {names or 'no names'}")
        return (mesh["dp"] if fsdp is not False else None), (mesh["tp"] if tp is not False else None)
    if mesh.ndim != 1:
        raise ValueError(f"parallelize takes a 1-D or 2-D device mesh, got {mesh.ndim} dimensions")
    if tp is None and fsdp is None:
        if names not in (("tp",), ("dp",)):
            raise ValueError("a 1-D mesh named neither 'tp' nor 'dp': say which with tp=True or fsdp=True")
        tp, fsdp = names == ("tp",), names == ("dp",)
    if bool(tp) == bool(fsdp):
        raise ValueError("a 1-D mesh carries one of tensor parallelism and FSDP; use a 2-D ('dp', 'tp') mesh for both")
    return (mesh if fsdp else None), (mesh if tp else None)


def parallelize(model: nn.Module, mesh: Any, graph: Graph, *, tp: bool | None = None, fsdp: bool | None = None,
                loss_parallel: bool = False, sp: bool = False, ep: bool = False, mp_policy: Any = None,
                norms_fp32: bool = True, replicate: tuple[str, ...] = (),
                reshard_after_forward: bool = True) -> ParallelPlan:
    """Split `model` (built from `graph`) over `mesh`, in place; returns the plan it applied. The
    plan runs as the function `archc build --parallel` writes (one spelling: the code a user can
    read is the code that runs)."""
    from archc.backends.torch.parallel_emit import parallel_source

    from archc import generated

    try:
        dp_mesh, tp_mesh = meshes(mesh, tp, fsdp)
    except ValueError as err:
        raise ArchError(str(err)) from None
    if ep and dp_mesh is None:
        raise ArchError("expert parallelism splits the experts over the data-parallel ('dp') ranks; the mesh has none")
    plan = plan_parallel(graph, tp=tp_mesh.size() if tp_mesh is not None else 1, loss_parallel=loss_parallel,
                         replicate=tuple(replicate), sp=sp and tp_mesh is not None,
                         ep=dp_mesh.size() if ep and dp_mesh is not None else 1)
    module = generated.load(parallel_source(plan, standalone=True))
    module.parallelize(model, mesh, tp=tp_mesh is not None, fsdp=dp_mesh is not None, loss_parallel=loss_parallel,
                       mp_policy=mp_policy, norms_fp32=norms_fp32, reshard_after_forward=reshard_after_forward)
    return plan


def _fsdp_placement(param: nn.Parameter) -> Any:
    """FSDP splits a tensor's rows; one whose rows are already split in strided blocks over the
    tensor-parallel ranks (fused q/k/v) is split by columns instead: a rank's rows of every block,
    halved by rows, would not be a part that a placement can describe. (Stacked experts' blocks are
    along dim 1: FSDP splits the experts.)"""
    return Shard(1) if _blocks_split(param) and param.ndim <= 2 else None


def _kept_whole(model: nn.Module, mesh: Any) -> set[nn.Parameter]:
    """Parameters FSDP2 cannot split: 0-d ones (hyper-connections' scales; FSDP2 refuses them) and
    1-d ones split in strided blocks over the tensor-parallel ranks (a fused q/k/v bias). They stay
    whole on every data-parallel rank, and a hook averages their gradients over those ranks, as DDP
    would."""
    from torch.distributed.tensor import DTensor

    group, size = mesh.get_group(), mesh.size()

    def average(p: torch.Tensor) -> None:
        assert p.grad is not None
        grad = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        torch.distributed.all_reduce(grad, group=group)
        grad.div_(size)

    kept = {p for p in model.parameters() if p.ndim == 0 or (p.ndim == 1 and _blocks_split(p))}
    for p in kept:
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(average)
    return kept


def _blocks_split(tensor: Any) -> bool:
    """A DTensor split over the tensor-parallel ranks in strided blocks (a fused q/k/v projection):
    torch.distributed.checkpoint describes a rank's part by one offset, which such a part has not."""
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return False
    names = tensor.device_mesh.mesh_dim_names or ()
    return any(isinstance(p, _StridedShard) and (names[i] if names else "") != "dp"
               for i, p in enumerate(tensor.placements))


def checkpoint_state_dict(model: nn.Module) -> dict[str, Any]:
    """The model's sharded state dict for torch.distributed.checkpoint (`dcp.save`): as
    `get_model_state_dict`, except that a tensor split in strided blocks is whole on every rank
    (checkpoint writes it once). It loads back with `dcp.load` into this model's
    `checkpoint_state_dict` (then `load_checkpoint_state_dict`) or into the one-process model's
    plain `state_dict()`."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model)
    return {k: v.redistribute(placements=[Replicate()] * v.device_mesh.ndim) if _blocks_split(v) else v
            for k, v in state.items()}


def load_checkpoint_state_dict(model: nn.Module, state: dict[str, Any]) -> None:
    """Put a `checkpoint_state_dict` filled by `dcp.load` back into the model's (split) tensors."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    own = model.state_dict()
    fixed = {k: distribute_tensor(v.to_local(), own[k].device_mesh, own[k].placements) if _blocks_split(own[k]) else v
             for k, v in state.items()}
    set_model_state_dict(model, fixed)


def init_weights(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Storage on `device` for a model made on the meta device, then its initial values: every
    module's `reset_parameters`, descendants before ancestors (a class's own initializers follow
    its leaves' torch defaults, as when the model is made directly)."""
    model.to_empty(device=device)
    with torch.no_grad():
        for module in reversed(list(model.modules())):
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return model


__all__ = ["ExpertParallel", "ExpertsTensorParallel", "FusedColwiseParallel", "SequenceSplit", "checkpoint_state_dict",
           "init_weights", "load_checkpoint_state_dict", "meshes", "parallelize", "plan_parallel"]
