"""Sequence parallelism (`archc.parallelize(model, mesh, sp=True)`, docs/parallel.md) for stacks
whose layers take more than the residual stream, over two gloo CPU processes on a 1-D "tp" mesh,
against the one-process model with the same weights:

- a tiny Llama (specs/models/llama.arch, Hugging Face's LlamaForCausalLM layout): its layers also
  take the rotary tables, which pass whole to every rank; the stream is split along the sequence
  between the layers' blocks (norms SequenceParallel, attention and MLP inputs gathered, o_proj
  and down_proj reduce-scattered). Also from the file `archc build --parallel --tp 2 --sp` writes.
- a tiny Mixtral (specs/models/mixtral.arch): its layers also take the rotary tables and the
  router's load accumulator; the mixture of experts runs on the gathered sequence (router whole,
  experts' hidden features split) and its output is split again.

The logits (and Mixtral's auxiliary loss), every gradient and the weights after one SGD step
equal the one-process model's (rtol = atol = 1e-5), each rank's norms see half of the positions,
and a length that 2 does not divide is an error naming the stack's place in the spec (GPT-2's
too, whose stack is one module).

Also both under FSDP x TP x SP on a 2 x 2 ("dp", "tp") mesh (4 processes),
Mixtral also with expert parallelism over "dp", each data-parallel rank half the batch: the mean
of the halves' one-process gradients.
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

TOL = 1e-5
AUX = 0.02  # router_aux_loss_coef: Mixtral's loss is cross-entropy + AUX * aux
LLAMA_TINY: dict[str, Any] = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 16}
MODELS: dict[str, tuple[Path, dict[str, Any]]] = {
    "llama": (specs_root() / "models" / "llama.arch", LLAMA_TINY),
    "mixtral": (specs_root() / "models" / "mixtral.arch",
                {**LLAMA_TINY, "num_local_experts": 4, "num_experts_per_tok": 2}),
}
PRELOAD = ["torch", "torch._dynamo", "torch.distributed.tensor.parallel", "archc.elaborate", "archc.backends.torch",
           "archc.backends.torch.parallel"]


def _compile(name: str) -> Any:
    spec, params = MODELS[name]
    return archc.compile(spec, **params)


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Forward and backward: the logits, Mixtral's aux loss, every gradient (whole); then one SGD
    step (gradients a split model leaves partial are summed when the optimizer reads them): the
    new weights (whole)."""
    out = model(x)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) + (AUX * aux if aux is not None else 0.0)
    loss.backward()
    grads = {k: full(p.grad) for k, p in model.named_parameters() if p.grad is not None}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    weights = {k: full(p) for k, p in model.named_parameters()}
    return {"logits": logits.detach().clone(), "aux": None if aux is None else aux.detach().clone(), "grads": grads,
            "weights": weights}


def _worker(rank: int, folder: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    try:
        out: dict[str, Any] = {}
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
        for name in MODELS:
            init, data = (torch.load(Path(folder) / f"{name}_{k}.pt", weights_only=True) for k in ("init", "data"))
            model = _compile(name)
            model.load_state_dict(init)
            archc.parallelize(model, mesh, sp=True)
            seen: list[tuple[int, ...]] = []
            model.model.layers[1].input_layernorm.register_forward_pre_hook(  # after SequenceParallel's hook
                lambda m, a, s=seen: s.append(tuple(a[0].to_local().shape)))
            out[name] = _step(model, data["x"], data["y"])
            out[f"{name}_norm_input"] = seen[0]
            try:  # 7 positions over 2 ranks
                model(data["x"][:, :7])
                out[f"{name}_odd"] = ""
            except ValueError as err:
                out[f"{name}_odd"] = str(err)
        # GPT-2's stack is one module (nn.Sequential): split and gathered there, the same check
        model = archc.compile(specs_root() / "models" / "gpt2.arch", vocab=64, dim=32, depth=2, heads=2, max_len=16)
        archc.parallelize(model, mesh, sp=True)
        try:
            model(torch.zeros(2, 7, dtype=torch.long))
            out["gpt2_odd"] = ""
        except ValueError as err:
            out["gpt2_odd"] = str(err)
        # the file `archc build --parallel --tp 2 --sp` writes: its own model class and parallelize()
        import importlib.util

        spec = importlib.util.spec_from_file_location("llama_parallel", Path(folder) / "llama_parallel.py")
        assert spec is not None and spec.loader is not None
        built = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(built)
        model = built.LlamaForCausalLM()
        data = torch.load(Path(folder) / "llama_data.pt", weights_only=True)
        model.load_state_dict(torch.load(Path(folder) / "llama_init.pt", weights_only=True))
        built.parallelize(model, mesh)
        out["llama_file"] = _step(model, data["x"], data["y"])
        torch.save(out, Path(folder) / f"result{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The initial weights, the data, the one-process references and both ranks' results."""
    from archc.cli import main

    folder = tmp_path_factory.mktemp("parallelize_sp")
    refs: dict[str, Any] = {}
    for seed, name in enumerate(MODELS):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = _compile(name)
        gen = torch.Generator().manual_seed(10 + seed)
        data = {"x": torch.randint(0, 64, (4, 8), generator=gen), "y": torch.randint(0, 64, (4, 8), generator=gen)}
        torch.save(copy.deepcopy(model.state_dict()), folder / f"{name}_init.pt")
        torch.save(data, folder / f"{name}_data.pt")
        refs[name] = _step(model, data["x"], data["y"])
    sets = [a for k, v in LLAMA_TINY.items() for a in ("--set", f"{k}={v}")]
    assert main(["build", str(MODELS["llama"][0]), *sets, "--target", "torch", "--parallel", "--tp", "2", "--sp",
                 "-o", str(folder / "llama_parallel.py")]) == 0
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
        mp.start_processes(_worker, args=(str(folder),), nprocs=2, join=True, start_method="forkserver")
    got = [torch.load(folder / f"result{r}.pt", weights_only=False) for r in range(2)]
    return {"refs": refs, "got": got, "folder": folder}


def _same(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    assert_close(got["logits"], want["logits"], rtol=TOL, atol=TOL, msg=lambda m: f"{what} logits: {m}")
    if want["aux"] is not None:
        assert_close(got["aux"], want["aux"], rtol=TOL, atol=TOL, msg=lambda m: f"{what} aux: {m}")
    assert got["grads"].keys() == want["grads"].keys(), what
    for key in ("grads", "weights"):
        assert got[key].keys() == want[key].keys(), what
        for k, v in want[key].items():
            assert_close(got[key][k], v, rtol=TOL, atol=TOL, msg=lambda m, k=k, key=key: f"{what} {key} {k}: {m}")


@pytest.mark.parametrize("name", list(MODELS))
def test_tp_sp_equals_one_process(runs: dict[str, Any], name: str) -> None:
    for rank, got in enumerate(runs["got"]):
        assert got[f"{name}_norm_input"] == (4, 4, 32)  # each rank's norms see half of the 8 positions
        _same(got[name], runs["refs"][name], f"{name} under tp+sp, rank {rank}")


def test_the_built_file_equals_one_process(runs: dict[str, Any]) -> None:
    text = (runs["folder"] / "llama_parallel.py").read_text()
    assert "from archc" not in text and "import archc" not in text
    assert "SequenceSplit(1, inputs=(True, False, False), outputs=()" in text
    for rank, got in enumerate(runs["got"]):
        _same(got["llama_file"], runs["refs"]["llama"], f"llama from its built file, rank {rank}")


def _worker4(rank: int, folder: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store4", rank=rank, world_size=4,
                            timeout=timedelta(seconds=120))
    try:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        part = mesh["dp"].get_local_rank()
        out: dict[str, Any] = {}
        for name, ep in (("llama", False), ("mixtral", False), ("mixtral", True)):
            init, data = (torch.load(Path(folder) / f"{name}_{k}.pt", weights_only=True) for k in ("init", "data"))
            model = _compile(name)
            model.load_state_dict(init)
            archc.parallelize(model, mesh, sp=True, ep=ep)
            out[f"{name}_ep" if ep else name] = _step(model, data["x"].chunk(2)[part], data["y"].chunk(2)[part])
        if rank == 0:
            torch.save(out, Path(folder) / "result4.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp_tp_sp_equals_the_mean_of_the_halves(runs: dict[str, Any]) -> None:
    folder = runs["folder"]
    want = {}
    for seed, name in enumerate(MODELS):
        data = torch.load(folder / f"{name}_data.pt", weights_only=True)
        halves = []
        for part in range(2):
            model = _compile(name)
            model.load_state_dict(torch.load(folder / f"{name}_init.pt", weights_only=True))
            halves.append(_step(model, data["x"].chunk(2)[part], data["y"].chunk(2)[part])["grads"])
        want[name] = {k: (halves[0][k] + halves[1][k]) / 2 for k in halves[0]}
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        mp.start_processes(_worker4, args=(str(folder),), nprocs=4, join=True, start_method="forkserver")
    got = torch.load(folder / "result4.pt", weights_only=False)
    for key, name in (("llama", "llama"), ("mixtral", "mixtral"), ("mixtral_ep", "mixtral")):
        assert got[key]["grads"].keys() == want[name].keys(), key
        for k, v in want[name].items():
            assert_close(got[key]["grads"][k], v, rtol=TOL, atol=TOL, msg=lambda m, k=k, key=key: f"{key} {k}: {m}")


@pytest.mark.parametrize(("name", "line"), [("llama", "llama.arch:78:14"), ("mixtral", "mixtral.arch:54:14"),
                                           ("gpt2", "gpt2.arch:57:9")])
def test_a_length_tp_does_not_divide_is_a_located_error(runs: dict[str, Any], name: str, line: str) -> None:
    for got in runs["got"]:
        assert got[f"{name}_odd"] == (f"{line}: error: sequence parallelism over 2 ranks splits the 7 positions "
                                      "of the stream, which 2 does not divide")
