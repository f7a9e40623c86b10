"""FSDP2 and tensor parallelism over two CPU processes (gloo) on the module tree that the torch
backend emits (#12): every block instance is an `nn.Module` with its own forward, leaves are
torch's own modules, stacks are `nn.ModuleList`. Both schemes hook into exactly that structure:

- `fully_shard` on each block (`transformer.h[i]` of GPT-2, each BasicBlock of ResNet-18), then
  on the root: 3 training steps on a global batch split across the ranks give the losses and the
  final weights of the same training in one process. GPT-2's head is tied to `transformer.wte`
  and runs in the root's forward, so the embedding lives in the root's unit. With a bf16
  `MixedPrecisionPolicy` (fp32 reduction) the logits and gradients are those of the bf16 model.
- `parallelize_module` on each GPT-2 MLP (`c_fc` column-wise, `c_proj` row-wise): the logits and
  every gradient are those of the unsplit model.

The parent process makes the initial weights and the data, the workers train, and the parent
compares with its own one-process run, so each assertion reads as a plain pytest failure.

Not covered: `SyncBatchNorm`, which needs a GPU: on CPU each rank's BatchNorm normalizes with
the statistics of its own half batch, so the ResNet reference runs each rank's half on its own
(see there). Tensor parallelism of the attention: its `c_attn` cannot simply be split by
columns, see `test_tp_plain_column_split_of_the_fused_qkv_is_wrong`; the plans archc derives
(`archc.parallelize`) are tested in test_parallelize.py.
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
from dist_helpers import full

WORLD = 2
STEPS = 3
TOL = 1e-5  # rtol and atol of every comparison

GPT2 = specs_root() / "models" / "gpt2.arch"
VOCAB, DIM, DEPTH, HEADS = 64, 32, 2, 2
# tiny and deterministic (no dropout); `lm_head` is tied to `transformer.wte`
GPT2_TINY: dict[str, Any] = {"vocab": VOCAB, "dim": DIM, "depth": DEPTH, "heads": HEADS,
                             "max_len": 16, "pdrop": 0.0}
SEEN = 32  # inputs use tokens < SEEN: rows SEEN.. of wte learn only through the tied head
RESNET18 = specs_root() / "models" / "resnet18.arch"
# the zoo's widths (64..512), 32x32 images (layer4 runs at 1x1); layer1 stacks two blocks
RESNET18_TINY: dict[str, Any] = {"img_size": 32, "num_classes": 10, "depths": [2, 1, 1, 1]}


# what the workers use, imported once by the fork server (fully_shard imports torch._dynamo)
PRELOAD = ["torch", "torch._dynamo", "torch.distributed.fsdp", "torch.distributed.tensor.parallel",
           "torch.func", "archc.elaborate", "archc.backends.torch"]


# --- in the parent ---------------------------------------------------------------------------

def _fresh(spec: Path, params: dict[str, Any], seed: int = 0) -> Any:
    """The compiled model, initialized from `seed` without touching the caller's RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return archc.compile(spec, **params)


def _spawn(worker: Any, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs `worker(rank, folder)` in WORLD processes. They fork from a server that has imported
    torch once (a spawned child would import it again, seconds on a busy machine)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children inherit it
    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    mp.start_processes(worker, args=(str(folder),), nprocs=WORLD, join=True, start_method="forkserver")


def _load(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert_close(actual, expected, rtol=TOL, atol=TOL, msg=lambda message: f"{what}: {message}")


# --- in the workers ----------------------------------------------------------------------------

def _join(rank: int, folder: str) -> Any:
    """Joins the gloo group; returns the 1-D CPU device mesh over both ranks."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=120))
    return init_device_mesh("cpu", (WORLD,))


def _mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / WORLD


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None
    return p.grad


def _assert_sharded(module: torch.nn.Module) -> None:
    """Every parameter is a DTensor split by rows; this rank holds its half (all sizes are even)."""
    from torch.distributed.tensor import DTensor, Shard

    for name, p in module.named_parameters():
        assert isinstance(p, DTensor) and p.placements == (Shard(0),), name
        assert p.to_local().shape[0] * WORLD == p.shape[0], name


def _count_calls(modules: Any) -> list[int]:
    """A list that counts the forward calls of each module."""
    calls = [0] * len(modules)
    for i, module in enumerate(modules):
        module.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


# --- FSDP2 on GPT-2 ----------------------------------------------------------------------------

def _gpt_loss(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())


def _gpt_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # not Adam: c_attn's key bias has a zero gradient (softmax ignores a constant per row), and
    # Adam would scale its rounding noise, which differs between the two runs, to full steps
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)


def _fsdp_gpt_worker(rank: int, folder: str) -> None:
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = _join(rank, folder)
    try:
        model = archc.compile(GPT2, **GPT2_TINY)
        model.load_state_dict(_load(Path(folder) / "init.pt"))
        blocks = model.transformer.h
        calls = _count_calls(blocks)
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)  # the root's unit: wte (and so the tied head), wpe, ln_f
        assert all(isinstance(m, FSDPModule) for m in [model, *blocks])
        _assert_sharded(model)
        data = _load(Path(folder) / "data.pt")
        opt = _gpt_optimizer(model)
        losses = []
        for step in range(STEPS):
            tokens, targets = (data[k][step].chunk(WORLD)[rank] for k in ("tokens", "targets"))
            loss = _gpt_loss(model, tokens, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(_mean_over_ranks(loss))
        weights = {name: full(p) for name, p in model.named_parameters()}
        if rank == 0:
            torch.save({"losses": torch.stack(losses), "weights": weights, "calls": calls,
                        "keys": list(model.state_dict())}, Path(folder) / "result.pt")

        # mixed precision: bf16 parameters and compute, gradients reduced and kept in fp32
        model = archc.compile(GPT2, **GPT2_TINY)
        model.load_state_dict(_load(Path(folder) / "init.pt"))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        tokens, targets = (data[k][0].chunk(WORLD)[rank] for k in ("tokens", "targets"))
        logits = model(tokens)
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        grads = {name: full(_grad(p)) for name, p in model.named_parameters()}
        torch.save({"logits": logits.detach(), "grads": grads}, Path(folder) / f"bf16_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp2_per_block_gpt2_trains_like_one_process(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fresh(GPT2, GPT2_TINY)
    init = copy.deepcopy(model.state_dict())
    # the tie: one tensor, under the embedding's name only
    assert "transformer.wte.weight" in init and not any(k.startswith("lm_head") for k in init)
    gen = torch.Generator().manual_seed(1)
    batch = (STEPS, 4, 8)  # 4 sequences of 8 tokens per step, 2 per rank
    data = {"tokens": torch.randint(0, SEEN, batch, generator=gen),
            "targets": torch.randint(0, VOCAB, batch, generator=gen)}
    torch.save(init, tmp_path / "init.pt")
    torch.save(data, tmp_path / "data.pt")

    _spawn(_fsdp_gpt_worker, tmp_path, monkeypatch)

    opt = _gpt_optimizer(model)
    losses = []
    for step in range(STEPS):
        loss = _gpt_loss(model, data["tokens"][step], data["targets"][step])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    got = _load(tmp_path / "result.pt")
    assert got["calls"] == [STEPS] * DEPTH  # each block ran as its own unit
    assert got["keys"] == list(init)  # no second copy of the tied weight appeared
    _close(got["losses"], torch.stack(losses), "losses")
    assert got["weights"].keys() == dict(model.named_parameters()).keys()
    for name, p in model.named_parameters():
        _close(got["weights"][name], p.detach(), name)
    # the rows of tokens that never were inputs moved through the tied head alone, in both runs
    unseen = init["transformer.wte.weight"][SEEN:]
    assert not torch.allclose(model.transformer.wte.weight.detach()[SEEN:], unseen)

    # bf16 (MixedPrecisionPolicy): each rank's logits are those of the bf16 model on its half
    # batch, and the fp32 gradients are the mean of that model's bf16 gradients on the halves
    model = _fresh(GPT2, GPT2_TINY)
    model.load_state_dict(init)
    model.to(torch.bfloat16)
    grads = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in model.named_parameters()}
    for r in range(WORLD):
        tokens, targets = (data[k][0].chunk(WORLD)[r] for k in ("tokens", "targets"))
        logits = model(tokens)
        got_logits = _load(tmp_path / f"bf16_{r}.pt")["logits"]
        assert got_logits.dtype == torch.bfloat16
        _close(got_logits, logits.detach(), f"bf16 logits of rank {r}")
        model.zero_grad()
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        for name, p in model.named_parameters():
            grads[name] += _grad(p).float() / WORLD
    got_grads = _load(tmp_path / "bf16_0.pt")["grads"]
    for name, grad in grads.items():
        assert got_grads[name].dtype == torch.float32
        _close(got_grads[name], grad, f"bf16 gradient of {name}")


# --- FSDP2 on ResNet-18 ------------------------------------------------------------------------
#
# BatchNorm trains with batch statistics, and without SyncBatchNorm (GPU only) each rank's are
# those of its own half batch, as with DDP. The one-process reference therefore runs each
# rank's half through the same weights with that rank's own copy of the running statistics
# (`functional_call`) and averages the two losses, which is what FSDP's gradient reduction
# computes; the running statistics each rank ends with are checked against those copies.

def _resnet_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [block for stage in ("layer1", "layer2", "layer3", "layer4") for block in getattr(model, stage)]


def _resnet_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)


def _fsdp_resnet_worker(rank: int, folder: str) -> None:
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = _join(rank, folder)
    try:
        model = archc.compile(RESNET18, **RESNET18_TINY)
        model.load_state_dict(_load(Path(folder) / "init.pt"))
        blocks = _resnet_blocks(model)
        calls = _count_calls(blocks)
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)  # the stem (conv1, bn1) and fc
        assert all(isinstance(m, FSDPModule) for m in [model, *blocks])
        _assert_sharded(model)
        data = _load(Path(folder) / "data.pt")
        opt = _resnet_optimizer(model)
        losses = []
        for step in range(STEPS):
            images, labels = (data[k][step].chunk(WORLD)[rank] for k in ("images", "labels"))
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(_mean_over_ranks(loss))
        weights = {name: full(p) for name, p in model.named_parameters()}
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        torch.save(buffers, Path(folder) / f"buffers{rank}.pt")
        if rank == 0:
            torch.save({"losses": torch.stack(losses), "weights": weights, "calls": calls},
                       Path(folder) / "result.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp2_per_block_resnet18_trains_like_one_process(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.func import functional_call

    model = _fresh(RESNET18, RESNET18_TINY)
    init = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(2)
    data = {"images": torch.randn(STEPS, 8, 3, 32, 32, generator=gen),
            "labels": torch.randint(0, 10, (STEPS, 8), generator=gen)}
    torch.save(init, tmp_path / "init.pt")
    torch.save(data, tmp_path / "data.pt")

    _spawn(_fsdp_resnet_worker, tmp_path, monkeypatch)

    params = dict(model.named_parameters())
    buffers = [{k: b.clone() for k, b in model.named_buffers()} for _ in range(WORLD)]
    opt = _resnet_optimizer(model)
    losses = []
    for step in range(STEPS):
        halves = zip(data["images"][step].chunk(WORLD), data["labels"][step].chunk(WORLD))
        loss = torch.stack([F.cross_entropy(functional_call(model, {**params, **buffers[r]}, (x,)), y)
                            for r, (x, y) in enumerate(halves)]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    got = _load(tmp_path / "result.pt")
    assert got["calls"] == [STEPS] * len(_resnet_blocks(model))
    _close(got["losses"], torch.stack(losses), "losses")
    assert got["weights"].keys() == params.keys()
    for name, p in params.items():
        _close(got["weights"][name], p.detach(), name)
    for r in range(WORLD):
        got_buffers = _load(tmp_path / f"buffers{r}.pt")
        assert got_buffers.keys() == buffers[r].keys()
        for name, b in buffers[r].items():
            _close(got_buffers[name], b, f"rank {r}: {name}")
    # the statistics moved, and differently on the two ranks (so the check above can tell them apart)
    assert not torch.equal(buffers[0]["bn1.running_mean"], init["bn1.running_mean"])
    assert not torch.allclose(buffers[0]["bn1.running_mean"], buffers[1]["bn1.running_mean"])


# --- tensor parallelism on GPT-2's MLPs ---------------------------------------------------------

def _tp_worker(rank: int, folder: str) -> None:
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = _join(rank, folder)
    try:
        init, data = _load(Path(folder) / "init.pt"), _load(Path(folder) / "data.pt")
        model = archc.compile(GPT2, **GPT2_TINY)
        model.load_state_dict(init)
        hidden_widths = []
        for block in model.transformer.h:
            parallelize_module(block.mlp, mesh, {"c_fc": ColwiseParallel(), "c_proj": RowwiseParallel()})
            block.mlp.c_fc.register_forward_hook(lambda _m, _i, out: hidden_widths.append(out.shape[-1]))
            assert isinstance(block.mlp.c_fc.weight, DTensor)
            assert block.mlp.c_fc.weight.placements == (Shard(0),)
            assert block.mlp.c_proj.weight.placements == (Shard(1),)
            assert block.mlp.c_proj.bias.placements == (Replicate(),)
        logits = model(data["tokens"])
        F.cross_entropy(logits.flatten(0, 1), data["targets"].flatten()).backward()
        grads = {name: full(_grad(p)) for name, p in model.named_parameters()}
        torch.save({"logits": logits.detach(), "grads": grads, "hidden_widths": hidden_widths},
                   Path(folder) / f"result{rank}.pt")

        # the attention: c_attn by plain columns, c_proj by rows
        model = archc.compile(GPT2, **GPT2_TINY)
        model.load_state_dict(init)
        for block in model.transformer.h:
            parallelize_module(block.attn, mesh, {"c_attn": ColwiseParallel(), "c_proj": RowwiseParallel()})
        torch.save({"logits": model(data["tokens"]).detach()}, Path(folder) / f"attn{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One two-process run for the tensor-parallel tests; the folder of its inputs and results."""
    folder = tmp_path_factory.mktemp("tp")
    model = _fresh(GPT2, GPT2_TINY, seed=3)
    gen = torch.Generator().manual_seed(4)
    data = {"tokens": torch.randint(0, VOCAB, (2, 8), generator=gen),
            "targets": torch.randint(0, VOCAB, (2, 8), generator=gen)}
    torch.save(model.state_dict(), folder / "init.pt")
    torch.save(data, folder / "data.pt")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _spawn(_tp_worker, folder, monkeypatch)
    return folder


def test_tp_mlp_column_then_row_matches_one_process(tp_run: Path) -> None:
    folder = tp_run
    model = _fresh(GPT2, GPT2_TINY, seed=5)
    model.load_state_dict(_load(folder / "init.pt"))
    data = _load(folder / "data.pt")
    logits = model(data["tokens"])
    F.cross_entropy(logits.flatten(0, 1), data["targets"].flatten()).backward()
    hidden = 4 * DIM
    for rank in range(WORLD):
        got = _load(folder / f"result{rank}.pt")
        # each rank computed its half of every MLP's hidden layer, once per block
        assert got["hidden_widths"] == [hidden // WORLD] * DEPTH
        _close(got["logits"], logits.detach(), f"logits of rank {rank}")
        assert got["grads"].keys() == dict(model.named_parameters()).keys()
        for name, p in model.named_parameters():
            _close(got["grads"][name], _grad(p), f"rank {rank}: gradient of {name}")


def test_tp_plain_column_split_of_the_fused_qkv_is_wrong(tp_run: Path) -> None:
    """The generated attention reads its head count from the tensor (`c_attn.shape[2] // 48`), so
    a rank's half of `c_attn`'s columns runs, as one head (#13). A plain column split is wrong,
    though: the columns run (three h d), so rank 0 holds all of q and half of k. The logits differ
    from the model's; `archc.parallelize` splits c_attn in strided blocks (whole heads of q, k and v
    per rank) and matches it (tests/distributed/test_parallelize.py)."""
    model = _fresh(GPT2, GPT2_TINY, seed=5)
    model.load_state_dict(_load(tp_run / "init.pt"))
    logits = model(_load(tp_run / "data.pt")["tokens"]).detach()
    for rank in range(WORLD):
        got = _load(tp_run / f"attn{rank}.pt")["logits"]
        assert got.shape == logits.shape
        assert not torch.allclose(got, logits, rtol=1e-3, atol=1e-3)
