"""Mixtures of experts under tensor parallelism (`archc.parallelize`, docs/parallel.md), two gloo
CPU processes on a 1-D "tp" mesh, against the one-process model with the same weights.

- A tiny Mixtral (specs/models/mixtral.arch, Hugging Face's layout: stacked experts) with each of
  the experts' lowerings (loop, grouped, batched): the router stays whole, every expert's hidden
  features are split (gate_up_proj by rows, gate and up alike; down_proj by columns), and one
  all-reduce per MoE layer sums the ranks' parts. The logits and the auxiliary loss equal the
  one-process model's on every rank, every gradient equals its one, and each rank's part of an
  expert weight's gradient is the matching slice of the one-process gradient.
- The block-expert spec (specs/examples/moe_any_expert.arch, Qwen2-MoE's sparse block: SwiGLU
  experts in an nn.ModuleList, a shared expert and its scalar gate): each expert's linears split as
  a dense MLP's; the same comparisons. Both also with idle experts (2 tokens, 8 experts).
- Mixtral under FSDP alone (a 1-D "dp" mesh), and Mixtral and the block-expert spec under FSDP x TP
  (a 2 x 2 mesh, 4 processes; Mixtral also with expert parallelism over "dp"), each data-parallel
  rank half the batch: the mean of the halves' gradients.
- Mixtral under expert parallelism (`ep=True` on a "dp" mesh: E / 2 experts per rank, tokens sent
  by all-to-all; loop and grouped lowerings, and idle experts): each rank's logits and aux loss,
  and the mean of the halves' gradients.

The parent makes the initial weights and the data, the workers run, and the parent compares with
its own one-process runs, so each assertion reads as a plain pytest failure.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.testing import assert_close

import archc
from archc.resources import specs_root
from dist_helpers import full, load_file

TOL = 1e-5  # rtol and atol of every comparison
WORLD = 2
AUX = 0.02  # router_aux_loss_coef: the loss is cross-entropy + AUX * aux
MIXTRAL = specs_root() / "models" / "mixtral.arch"
ANY = specs_root() / "examples" / "moe_any_expert.arch"
MIXTRAL_TINY: dict[str, Any] = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 16,
                                "num_local_experts": 4, "num_experts_per_tok": 2}
ANY_TINY: dict[str, Any] = {"vocab": 64, "dim": 32, "depth": 2, "heads": 2, "max_len": 16, "ff": "shared"}
MODELS: dict[str, tuple[Path, dict[str, Any]]] = {
    **{f"mixtral_{impl}": (MIXTRAL, {**MIXTRAL_TINY, "experts_impl": impl}) for impl in ("loop", "grouped", "batched")},
    "shared": (ANY, {**ANY_TINY, "num_experts": 4}),
    # 2 tokens, 8 experts, top 2: at least 4 experts idle on every rank (no tokens, empty tensors)
    "idle_mixtral": (MIXTRAL, {**MIXTRAL_TINY, "num_local_experts": 8, "experts_impl": "grouped"}),
    "idle_shared": (ANY, {**ANY_TINY, "num_experts": 8}),
}
BATCH = {"idle_mixtral": (2, 1), "idle_shared": (2, 1)}  # [batch, tokens]; the others (4, 8)
TWO_D = ("mixtral_loop", "shared")  # also under FSDP x TP (a 2 x 2 mesh), each data-parallel rank half the batch
EP = ("mixtral_loop", "mixtral_grouped", "idle_mixtral")  # also under expert parallelism (a "dp" mesh, ep=True)
HALVES = tuple(dict.fromkeys(TWO_D + EP))  # models also run on half the batch per data-parallel rank
EXPERTS = "model.layers.0.mlp.experts"  # Mixtral's stacked experts of layer 0
PRELOAD = ["torch", "torch._dynamo", "torch.distributed.fsdp", "torch.distributed.tensor.parallel",
           "archc.elaborate", "archc.backends.torch", "archc.backends.torch.parallel"]


def _compile(name: str) -> Any:
    spec, params = MODELS[name]
    return archc.compile(spec, **params)


def _step(model: torch.nn.Module, data: dict[str, torch.Tensor], part: int, parts: int,
          counts: list[int] | None = None) -> dict[str, Any]:
    """Forward and backward of this rank's `part` of the batch: logits, aux loss, the gradients
    whole; with `counts` (_count_all_reduces), the all-reduces of the forward and of the backward."""
    x, y = data["x"].chunk(parts)[part], data["y"].chunk(parts)[part]
    logits, aux = model(x)
    forward = counts[0] if counts else 0
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) + AUX * aux
    loss.backward()
    grads = {k: full(p.grad) for k, p in model.named_parameters() if p.grad is not None}
    return {"logits": logits.detach().clone(), "aux": aux.detach().clone(), "grads": grads,
            "all_reduces": (forward, counts[0] - forward) if counts else None}


# --- in the workers ----------------------------------------------------------------------------

def _count_all_reduces() -> list[int]:
    """Counts the calls of torch.distributed.all_reduce from now on (the experts' split calls it;
    DTensor's own styles use functional collectives, not counted)."""
    counts = [0]
    original = dist.all_reduce

    def counting(*args: Any, **kwargs: Any) -> Any:
        counts[0] += 1
        return original(*args, **kwargs)

    dist.all_reduce = counting
    return counts


def _worker(rank: int, folder: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))
    try:
        out: dict[str, Any] = {}
        tp_mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("tp",))
        dp_mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("dp",))
        original = dist.all_reduce
        for name in MODELS:
            init, data = (torch.load(Path(folder) / f"{name}_{k}.pt", weights_only=True) for k in ("init", "data"))
            model = _compile(name)
            model.load_state_dict(init)
            archc.parallelize(model, tp_mesh)
            counts = _count_all_reduces()
            result = _step(model, data, 0, 1, counts)  # every rank: the whole batch
            dist.all_reduce = original
            if name.startswith("mixtral"):
                experts = model.get_submodule(EXPERTS)
                result["local"] = {k: (p.to_local().detach().clone(), p.grad.to_local().clone())
                                   for k, p in experts.named_parameters() if isinstance(p, DTensor)}
            out[f"{name}_tp"] = result
        for name, ep in (("mixtral_loop", False), *((name, True) for name in EP)):
            init, data = (torch.load(Path(folder) / f"{name}_{k}.pt", weights_only=True) for k in ("init", "data"))
            model = _compile(name)
            model.load_state_dict(init)
            archc.parallelize(model, dp_mesh, ep=ep)
            result = _step(model, data, rank, WORLD)
            if ep:
                result["local"] = model.get_submodule(EXPERTS).gate_up_proj.to_local().shape
            out[f"{name}_{'ep' if ep else 'fsdp'}"] = result
        built = load_file(Path(folder) / "mixtral_ep.py")  # `archc build --parallel --ep 2`: needs only torch
        model = built.MixtralForCausalLM()
        model.load_state_dict(torch.load(Path(folder) / "mixtral_loop_init.pt", weights_only=True))
        built.parallelize(model, dp_mesh)
        out["mixtral_loop_file_ep"] = _step(model, torch.load(Path(folder) / "mixtral_loop_data.pt"), rank, WORLD)
        torch.save(out, Path(folder) / f"result{rank}.pt")
    finally:
        dist.destroy_process_group()


def _worker4(rank: int, folder: str) -> None:
    """A 2 x 2 ("dp", "tp") mesh: FSDP over the halves of the batch, tensor parallelism inside."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store4", rank=rank, world_size=2 * WORLD,
                            timeout=timedelta(seconds=120))
    try:
        out: dict[str, Any] = {}
        mesh = init_device_mesh("cpu", (WORLD, WORLD), mesh_dim_names=("dp", "tp"))
        for name, ep in (*((name, False) for name in TWO_D), ("mixtral_loop", True)):
            init, data = (torch.load(Path(folder) / f"{name}_{k}.pt", weights_only=True) for k in ("init", "data"))
            model = _compile(name)
            model.load_state_dict(init)
            archc.parallelize(model, mesh, ep=ep)
            out[f"{name}_ep" if ep else name] = _step(model, data, mesh["dp"].get_local_rank(), WORLD)["grads"]
        if rank == 0:
            torch.save(out, Path(folder) / "result_2d.pt")
    finally:
        dist.destroy_process_group()


# --- in the parent ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("parallelize_moe")
    refs: dict[str, Any] = {}
    for seed, name in enumerate(MODELS):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = _compile(name)
        gen = torch.Generator().manual_seed(10 + seed)
        shape = BATCH.get(name, (4, 8))
        data = {"x": torch.randint(0, 64, shape, generator=gen), "y": torch.randint(0, 64, shape, generator=gen)}
        torch.save(copy.deepcopy(model.state_dict()), folder / f"{name}_init.pt")
        torch.save(data, folder / f"{name}_data.pt")
        refs[name] = _step(model, data, 0, 1)
        if name in HALVES:  # FSDP: the mean of the gradients of each rank's half (aux is not linear in the batch)
            halves = []
            for part in range(WORLD):
                model.zero_grad()
                halves.append(_step(model, data, part, WORLD))
            mean = {k: sum(h["grads"][k] for h in halves) / WORLD for k in halves[0]["grads"]}
            refs[f"{name}_halves"] = {"grads": mean, "logits": [h["logits"] for h in halves],
                                      "aux": [h["aux"] for h in halves]}
    from archc.cli import main

    sets = [a for k, v in MODELS["mixtral_loop"][1].items()
            for a in ("--set", f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}")]
    assert main(["build", str(MIXTRAL), *sets, "--target", "torch", "--parallel", "--ep", str(WORLD),
                 "-o", str(folder / "mixtral_ep.py")]) == 0
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
        mp.start_processes(_worker, args=(str(folder),), nprocs=WORLD, join=True, start_method="forkserver")
        mp.start_processes(_worker4, args=(str(folder),), nprocs=2 * WORLD, join=True, start_method="forkserver")
    got = [torch.load(folder / f"result{rank}.pt", weights_only=False) for rank in range(WORLD)]
    return {"refs": refs, "got": got, "2d": torch.load(folder / "result_2d.pt", weights_only=False)}


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert_close(actual, expected, rtol=TOL, atol=TOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", list(MODELS))
def test_tensor_parallel_moe_equals_one_process(runs: dict[str, Any], name: str) -> None:
    """Logits and the aux loss on every rank, and every gradient (whole), as one process."""
    want = runs["refs"][name]
    for rank, got in enumerate(runs["got"]):
        got = got[f"{name}_tp"]
        _close(got["logits"], want["logits"], f"{name} rank {rank} logits")
        _close(got["aux"], want["aux"], f"{name} rank {rank} aux loss")
        assert got["grads"].keys() == want["grads"].keys()
        for k, v in want["grads"].items():
            _close(got["grads"][k], v, f"{name} rank {rank} gradient of {k}")


@pytest.mark.parametrize("impl", ["loop", "grouped", "batched"])
def test_each_rank_holds_its_slice_of_every_expert(runs: dict[str, Any], impl: str) -> None:
    """Rank r holds rows r of gate and of up (gate_up_proj [E, 2h, D]) and columns r of down_proj
    [E, D, h], and its gradients are those slices of the one-process gradients; each MoE layer runs
    one all-reduce forward (its output) and one backward (the gradients of its input and routing
    weights)."""
    name = f"mixtral_{impl}"
    want = runs["refs"][name]["grads"]
    h = MIXTRAL_TINY["intermediate_size"] // WORLD
    for rank, got in enumerate(runs["got"]):
        got = got[f"{name}_tp"]
        assert got["all_reduces"] == (MIXTRAL_TINY["num_hidden_layers"],) * 2  # per layer: one forward, one backward
        local = got["local"]
        assert local.keys() == {"gate_up_proj", "down_proj"}
        gate_up = want[f"{EXPERTS}.gate_up_proj"]
        gate, up = gate_up.chunk(2, dim=1)
        part = slice(rank * h, (rank + 1) * h)
        weight, grad = local["gate_up_proj"]
        assert weight.shape == (MIXTRAL_TINY["num_local_experts"], 2 * h, MIXTRAL_TINY["hidden_size"])
        _close(grad, torch.cat([gate[:, part], up[:, part]], dim=1), f"{name} rank {rank} gate_up_proj slice")
        weight, grad = local["down_proj"]
        assert weight.shape == (MIXTRAL_TINY["num_local_experts"], MIXTRAL_TINY["hidden_size"], h)
        _close(grad, want[f"{EXPERTS}.down_proj"][:, :, part], f"{name} rank {rank} down_proj slice")


@pytest.mark.parametrize(("name", "scheme"), [("mixtral_loop", "fsdp"), *((name, "fsdp_tp") for name in TWO_D),
                                               ("mixtral_loop", "ep_tp")])
def test_fsdp_moe_equals_one_process(runs: dict[str, Any], name: str, scheme: str) -> None:
    """Each data-parallel rank's loss on its half of the batch; FSDP averages the gradients of the
    halves (under FSDP x TP the experts are split by FSDP along E, by TP along their hidden features;
    under "ep_tp", expert parallelism over "dp" and tensor parallelism for the rest)."""
    want = runs["refs"][f"{name}_halves"]["grads"]
    got = runs["got"][0][f"{name}_fsdp"]["grads"] if scheme == "fsdp" else \
        runs["2d"][f"{name}_ep" if scheme == "ep_tp" else name]
    assert got.keys() == want.keys()
    for k, v in want.items():
        _close(got[k], v, f"{name} under {scheme}: gradient of {k}")


@pytest.mark.parametrize("name", [*EP, "mixtral_loop_file"])
def test_expert_parallel_moe_equals_one_process(runs: dict[str, Any], name: str) -> None:
    """Expert parallelism over 2 data-parallel ranks: each holds E / 2 whole experts, its tokens go
    to the experts' ranks by all-to-all and back. Each rank's logits and aux loss are the one-process
    model's on its half of the batch, and the gradients are the mean of the halves' (the experts'
    summed over both ranks' tokens, then halved). "mixtral_loop_file": the .py file of `archc build
    --parallel --ep 2` (its own model class and parallelize)."""
    want = runs["refs"][f"{name.removesuffix('_file')}_halves"]
    for rank, got in enumerate(runs["got"]):
        got = got[f"{name}_ep"]
        if "local" in got:
            assert got["local"][0] * WORLD == MODELS[name][1]["num_local_experts"]
        _close(got["logits"], want["logits"][rank], f"{name} rank {rank} logits")
        _close(got["aux"], want["aux"][rank], f"{name} rank {rank} aux loss")
        assert got["grads"].keys() == want["grads"].keys()
        for k, v in want["grads"].items():
            _close(got["grads"][k], v, f"{name} under ep, rank {rank}: gradient of {k}")
