"""DistributedDataParallel over two CPU processes (gloo): gradients are averaged across ranks,
buffers (BatchNorm running statistics) are broadcast, and the replicas stay identical."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SPEC = """axis B
model Net (x: [B, 3, 8, 8]) -> [B, 5] {
    y = x >> conv2d(8, 3, padding=1) >> batchnorm >> relu >> global_avgpool
    return y >> layernorm >> linear(16) >> gelu >> linear(5)
}"""
WORLD = 2


def _worker(rank: int, folder: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    import archc

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        model = archc.compile(Path(folder) / "net.arch")
        ddp = DDP(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank sees its own data
        for _ in range(2):
            x, y = torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 5, (4,), generator=gen)
            loss = torch.nn.functional.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ddp.eval()(x)  # DDP broadcasts rank 0's buffers before each forward; eval leaves them be
        flat = torch.cat([t.detach().reshape(-1).double() for t in model.state_dict().values()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        assert torch.equal(gathered[0], gathered[1]), "replicas diverged"
        if rank == 0:
            torch.save(model.state_dict(), f"{folder}/rank0.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    (tmp_path / "net.arch").write_text(SPEC)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    state = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert set(state) >= {"batchnorm.running_mean", "batchnorm.num_batches_tracked", "linear_1.weight"}
    assert not torch.equal(state["batchnorm.running_mean"], torch.zeros(8))  # the statistics moved
