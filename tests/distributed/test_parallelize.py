"""`archc.parallelize` (#13) over gloo CPU processes: the plan derived from the IR trains like one
process. For GPT-2 (tiny, its head tied to the token embedding), the ViT spec (tiny), GPT-2 with
hyper-connections (n=2, dynamic), GPT-2 with DenseFormer's depth-weighted averages (dwa: the
history of layer outputs; the connection's streams and weights stay whole on every rank), and a
tiny Llama (separate q, k, v; grouped-query attention; rotary embeddings; SwiGLU), under
tensor parallelism (1-D mesh "tp" of 2), FSDP (1-D mesh "dp" of 2) and FSDP x TP (2-D mesh 2 x 2,
4 processes), a model with 2:4-sparse linears (their masks), and GPT-2 with sequence parallelism as
well: 3 SGD steps give the losses, the last step's gradients and the final weights of the same
training in one process, within rtol = atol = 1e-5.

Also: a model made on the meta device gets its initial values after sharding (`init_weights`);
bf16 mixed precision keeps the norms in fp32; a sharded checkpoint written by
torch.distributed.checkpoint from the 2 x 2 run loads into the one-process model.

The parent makes the initial weights and the data, the workers train (all scenarios of one world
size in one process group), and the parent compares with its own one-process runs.
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

STEPS = 3
TOL = 1e-5
GPT2 = specs_root() / "models" / "gpt2.arch"
VIT = specs_root() / "models" / "vit_small_patch16_224.arch"
LLAMA = specs_root() / "models" / "llama.arch"
GPT2_TINY: dict[str, Any] = {"vocab": 64, "dim": 32, "depth": 2, "heads": 2, "max_len": 16, "pdrop": 0.0}
MODELS: dict[str, tuple[Path, dict[str, Any]]] = {
    "gpt2": (GPT2, GPT2_TINY),
    "vit": (VIT, {"img_size": 32, "patch": 16, "D": 32, "depth": 2, "heads": 2, "num_classes": 8}),
    "gpt2_hyper": (GPT2, {**GPT2_TINY, "connect": "hyper(n=2)"}),
    "gpt2_dwa": (GPT2, {**GPT2_TINY, "connect": "dwa(1)"}),
    # separate q, k, v with grouped-query attention (4 heads, 2 key/value heads), rotary embeddings,
    # SwiGLU: the layout torchtitan's hand plan is written for; FSDP alone is not repeated for it
    "llama": (LLAMA, {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 16}),
    # 2:4-sparse MLP linears (@sparse): each mask is a buffer the layer multiplies its weight by, so
    # it must meet the weight's split (replicated against a sharded weight, or split alike)
    "sparse": (Path(__file__).parent / "sparse_lm.arch", {}),
}
PRELOAD = ["torch", "torch._dynamo", "torch.distributed.fsdp", "torch.distributed.tensor.parallel",
           "torch.distributed.checkpoint", "archc.elaborate", "archc.backends.torch",
           "archc.backends.torch.parallel"]


def _compile(name: str) -> Any:
    spec, params = MODELS[name]
    return archc.compile(spec, **params)


def _loss(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return F.cross_entropy(out.flatten(0, 1) if name != "vit" else out, y.flatten() if name != "vit" else y)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _data(name: str, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if name == "vit":
        return {"x": torch.randn(STEPS, 4, 3, 32, 32, generator=gen), "y": torch.randint(0, 8, (STEPS, 4), generator=gen)}
    return {"x": torch.randint(0, 64, (STEPS, 4, 8), generator=gen), "y": torch.randint(0, 64, (STEPS, 4, 8), generator=gen)}


def _train(name: str, model: torch.nn.Module, data: dict[str, torch.Tensor], part: int, parts: int,
           split_logits: bool = False) -> dict[str, Any]:
    """3 steps on this rank's `part` of each batch (of `parts`): mean losses over the ranks, the
    last step's gradients and the final weights, whole. `split_logits`: the loss of logits split
    on the vocabulary, under torch's `loss_parallel`."""
    from contextlib import nullcontext

    from torch.distributed.tensor.parallel import loss_parallel

    opt = _optimizer(model)
    losses = []
    for step in range(STEPS):
        x, y = data["x"][step].chunk(parts)[part], data["y"][step].chunk(parts)[part]
        with loss_parallel() if split_logits else nullcontext():
            loss = _loss(name, model, x, y)
            opt.zero_grad()
            loss.backward()
        opt.step()
        losses.append(full(loss))
    grads = {k: full(p.grad) for k, p in model.named_parameters() if p.grad is not None}
    weights = {k: full(p) for k, p in model.named_parameters()}
    return {"losses": torch.stack(losses), "grads": grads, "weights": weights}


def _mean_losses(result: dict[str, Any], group: Any, size: int) -> None:
    dist.all_reduce(result["losses"], group=group)
    result["losses"] /= size


# --- workers ---------------------------------------------------------------------------------

def _join(rank: int, folder: str, world: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store{world}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))


def _worker2(rank: int, folder: str) -> None:
    """Two ranks: TP over a 1-D "tp" mesh, FSDP over a 1-D "dp" mesh, for each model; meta-device
    init and bf16 with fp32 norms on GPT-2."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    _join(rank, folder, 2)
    try:
        out: dict[str, Any] = {}
        tp_mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
        dp_mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("dp",))
        for name in MODELS:
            init, data = (torch.load(Path(folder) / f"{name}_{k}.pt", weights_only=True) for k in ("init", "data"))
            model = _compile(name)
            model.load_state_dict(init)
            archc.parallelize(model, tp_mesh)
            out[f"{name}_tp"] = _train(name, model, data, 0, 1)  # every rank: the whole batch

            if name == "llama":
                continue
            model = _compile(name)
            model.load_state_dict(init)
            archc.parallelize(model, dp_mesh)
            result = _train(name, model, data, rank, 2)
            _mean_losses(result, None, 2)
            out[f"{name}_fsdp"] = result
            if name == "gpt2":  # and with sequence parallelism
                model = _compile(name)
                model.load_state_dict(init)
                archc.parallelize(model, tp_mesh, sp=True)
                shapes: list[Any] = []
                model.transformer.h[0].register_forward_pre_hook(lambda m, a, s=shapes: s.append(tuple(a[0].shape)))
                out[f"{name}_tp_sp"] = _train(name, model, data, 0, 1)
                out["sp_block_input"] = shapes[0]
            if name in ("gpt2", "vit"):  # the logits split on the vocabulary (classes): loss_parallel
                model = _compile(name)
                model.load_state_dict(init)
                archc.parallelize(model, tp_mesh, loss_parallel=True)
                logits = model(data["x"][0])
                out[f"{name}_lp_local"] = (tuple(logits.shape), tuple(logits.to_local().shape))
                out[f"{name}_tp_lp"] = _train(name, model, data, 0, 1, split_logits=True)

        # made on the meta device, sharded (FSDP x nothing), then initialized: every rank allocates its shards
        with torch.device("meta"):
            model = _compile("gpt2")
        archc.parallelize(model, dp_mesh)
        archc.init_weights(model)
        out["meta"] = {k: full(p) for k, p in model.named_parameters()}
        out["meta_local"] = {k: p.to_local().shape for k, p in model.named_parameters()}

        # hyper-connections made on the meta device: the 0-d scales FSDP keeps whole still average
        # their gradients after init_weights and a full state dict loaded into the shards
        with torch.device("meta"):
            model = _compile("gpt2_hyper")
        archc.parallelize(model, dp_mesh)
        archc.init_weights(model)
        init, data = (torch.load(Path(folder) / f"gpt2_hyper_{k}.pt", weights_only=True) for k in ("init", "data"))
        set_model_state_dict(model, init, options=StateDictOptions(full_state_dict=True))
        result = _train("gpt2_hyper", model, data, rank, 2)
        _mean_losses(result, None, 2)
        out["gpt2_hyper_meta_fsdp"] = result

        # bf16 compute, fp32 norms (their own units, handing bf16 on)
        init, data = (torch.load(Path(folder) / f"gpt2_{k}.pt", weights_only=True) for k in ("init", "data"))
        model = _compile("gpt2")
        model.load_state_dict(init)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        archc.parallelize(model, dp_mesh, mp_policy=policy)
        seen: dict[str, Any] = {}
        norm = model.transformer.h[0].ln_1
        norm.register_forward_hook(lambda m, i, o: seen.update(w=m.weight.dtype, x=i[0].dtype, y=o.dtype))
        linear = model.transformer.h[0].attn.c_attn
        linear.register_forward_hook(lambda m, i, o: seen.update(linear=m.weight.dtype))
        logits = model(data["x"][0].chunk(2)[rank])
        out["bf16"] = {"logits": logits.detach().float(), "dtypes": {k: str(v) for k, v in seen.items()}}
        if rank == 0:
            torch.save(out, Path(folder) / "result2.pt")
    finally:
        dist.destroy_process_group()


def _worker4(rank: int, folder: str) -> None:
    """Four ranks, a 2 x 2 ("dp", "tp") mesh: FSDP x TP for each model; GPT-2's sharded checkpoint."""
    import torch.distributed.checkpoint as dcp
    from archc.backends.torch.parallel import (
        checkpoint_state_dict,
        load_checkpoint_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh

    _join(rank, folder, 4)
    try:
        out: dict[str, Any] = {}
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        dp_rank = mesh["dp"].get_local_rank()
        for name in MODELS:
            init, data = (torch.load(Path(folder) / f"{name}_{k}.pt", weights_only=True) for k in ("init", "data"))
            model = _compile(name)
            model.load_state_dict(init)
            archc.parallelize(model, mesh)
            result = _train(name, model, data, dp_rank, 2)
            _mean_losses(result, mesh["dp"].get_group(), 2)
            out[f"{name}_fsdp_tp"] = result
            if name == "gpt2":
                model = _compile(name)
                model.load_state_dict(init)
                archc.parallelize(model, mesh, sp=True)
                result = _train(name, model, data, dp_rank, 2)
                _mean_losses(result, mesh["dp"].get_group(), 2)
                out["gpt2_fsdp_tp_sp"] = result
                # the file `archc build --parallel` writes: its own model class and parallelize()
                built = load_file(Path(folder) / "gpt2_parallel.py")
                model = built.GPT2()
                model.load_state_dict(init)
                built.parallelize(model, mesh)
                result = _train(name, model, data, dp_rank, 2)
                _mean_losses(result, mesh["dp"].get_group(), 2)
                out["gpt2_file_fsdp_tp"] = result
                dcp.save(checkpoint_state_dict(model), checkpoint_id=Path(folder) / "ckpt")
                model = _compile(name)  # a fresh split model loads the checkpoint back
                archc.parallelize(model, mesh)
                state = checkpoint_state_dict(model)
                dcp.load(state, checkpoint_id=Path(folder) / "ckpt")
                load_checkpoint_state_dict(model, state)
                out["reloaded"] = {k: full(p) for k, p in model.named_parameters()}
        if rank == 0:
            torch.save(out, Path(folder) / "result4.pt")
    finally:
        dist.destroy_process_group()


def _spawn(worker: Any, world: int, folder: Path) -> None:
    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    mp.start_processes(worker, args=(str(folder),), nprocs=world, join=True, start_method="forkserver")


# --- in the parent ---------------------------------------------------------------------------

def _build_parallel(path: Path) -> None:
    """`archc build gpt2.arch --target torch --parallel --tp 2 -o path` for the tiny GPT-2."""
    from archc.cli import main

    sets = [a for k, v in GPT2_TINY.items() for a in ("--set", f"{k}={v}")]
    assert main(["build", str(GPT2), *sets, "--target", "torch", "--parallel", "--tp", "2", "-o", str(path)]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The initial weights, the data, the one-process references and both distributed runs."""
    folder = tmp_path_factory.mktemp("parallelize")
    refs: dict[str, Any] = {}
    for seed, name in enumerate(MODELS):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = _compile(name)
        init = copy.deepcopy(model.state_dict())
        data = _data(name, 10 + seed)
        torch.save(init, folder / f"{name}_init.pt")
        torch.save(data, folder / f"{name}_data.pt")
        refs[name] = _train(name, model, data, 0, 1)
    _build_parallel(folder / "gpt2_parallel.py")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        _spawn(_worker2, 2, folder)
        _spawn(_worker4, 4, folder)
    got = {**torch.load(folder / "result2.pt", weights_only=False),
           **torch.load(folder / "result4.pt", weights_only=False)}
    return {"folder": folder, "refs": refs, "got": got}


def _same(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    assert_close(got["losses"], want["losses"], rtol=TOL, atol=TOL, msg=lambda m: f"{what} losses: {m}")
    for key in ("grads", "weights"):
        assert got[key].keys() == want[key].keys(), what
        for k, v in want[key].items():
            assert_close(got[key][k], v, rtol=TOL, atol=TOL, msg=lambda m, k=k, key=key: f"{what} {key} {k}: {m}")


@pytest.mark.parametrize(("name", "scheme"), [(name, scheme) for name in MODELS for scheme in ("tp", "fsdp", "fsdp_tp")
                                               if (name, scheme) != ("llama", "fsdp")])
def test_trains_like_one_process(runs: dict[str, Any], name: str, scheme: str) -> None:
    _same(runs["got"][f"{name}_{scheme}"], runs["refs"][name], f"{name} under {scheme}")


@pytest.mark.parametrize("name", ["gpt2", "vit"])
def test_loss_parallel_trains_like_one_process(runs: dict[str, Any], name: str) -> None:
    whole, local = runs["got"][f"{name}_lp_local"]  # each rank holds half of the logits (a DTensor)
    assert local[:-1] == whole[:-1] and local[-1] * 2 == whole[-1]
    _same(runs["got"][f"{name}_tp_lp"], runs["refs"][name], f"{name} under tp with loss_parallel")


@pytest.mark.parametrize("scheme", ["tp_sp", "fsdp_tp_sp"])
def test_sequence_parallel_gpt2_trains_like_one_process(runs: dict[str, Any], scheme: str) -> None:
    assert runs["got"]["sp_block_input"] == (4, 4, 32)  # each rank's blocks see half of the 8 positions
    _same(runs["got"][f"gpt2_{scheme}"], runs["refs"]["gpt2"], f"gpt2 under {scheme}")


def test_the_written_parallelize_function_trains_like_one_process(runs: dict[str, Any]) -> None:
    """The .py file of `archc build --parallel` (model and plan, nothing from archc) under FSDP x TP."""
    _same(runs["got"]["gpt2_file_fsdp_tp"], runs["refs"]["gpt2"], "gpt2 from its built file")
    text = (runs["folder"] / "gpt2_parallel.py").read_text()
    assert "import archc" not in text and "from archc" not in text
    assert "'attn.c_attn': FusedColwiseParallel(3)" in text and "'mlp.c_fc': ColwiseParallel()" in text


def test_meta_init_after_sharding(runs: dict[str, Any]) -> None:
    """Each rank allocated only its half of every tensor, and the values are drawn as a model made
    directly draws them: constants (LayerNorm's ones and zeros) equal, random tensors with the same
    spread (GPT-2's N(0, 0.02) linears, wpe's N(0, 1))."""
    meta, local = runs["got"]["meta"], runs["got"]["meta_local"]
    assert local["transformer.wte.weight"] == torch.Size([32, 32])  # 64 rows over two ranks
    fresh = dict(_compile("gpt2").named_parameters())
    assert meta.keys() == fresh.keys()
    for k, want in fresh.items():
        got = meta[k]
        assert got.shape == want.shape and torch.isfinite(got).all(), k
        if want.numel() == 1 or want.std() == 0:
            assert_close(got, want.detach(), rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert 0.8 < (got.std() / want.std()).item() < 1.25, k
            assert abs(got.mean().item()) < 3 * want.std().item() / want.numel() ** 0.5 + 1e-3, k


def test_meta_init_then_loaded_weights_train_like_one_process(runs: dict[str, Any]) -> None:
    _same(runs["got"]["gpt2_hyper_meta_fsdp"], runs["refs"]["gpt2_hyper"], "gpt2_hyper from meta under fsdp")


def test_bf16_keeps_norms_in_fp32(runs: dict[str, Any]) -> None:
    got = runs["got"]["bf16"]
    assert got["dtypes"] == {"w": "torch.float32", "x": "torch.float32", "y": "torch.bfloat16",
                             "linear": "torch.bfloat16"}
    model = _compile("gpt2")
    model.load_state_dict(torch.load(runs["folder"] / "gpt2_init.pt", weights_only=True))
    x = torch.load(runs["folder"] / "gpt2_data.pt", weights_only=True)["x"][0].chunk(2)[0]
    # bf16 keeps 8 bits of mantissa: the logits agree with fp32's to a few bf16 steps
    assert_close(got["logits"], model(x).detach(), rtol=5e-2, atol=5e-2)


def test_sharded_checkpoint_loads_into_one_process_model(runs: dict[str, Any]) -> None:
    """Written by the 2 x 2 run (c_attn's strided blocks whole, the rest as split); read back by
    the one-process model and by a fresh 2 x 2 model."""
    import torch.distributed.checkpoint as dcp

    model = _compile("gpt2")
    state = model.state_dict()
    dcp.load(state, checkpoint_id=runs["folder"] / "ckpt")
    model.load_state_dict(state)
    for k, v in runs["refs"]["gpt2"]["weights"].items():
        assert_close(model.get_parameter(k).detach(), v, rtol=TOL, atol=TOL, msg=lambda m, k=k: f"{k}: {m}")
        assert_close(runs["got"]["reloaded"][k], v, rtol=TOL, atol=TOL, msg=lambda m, k=k: f"reloaded {k}: {m}")
