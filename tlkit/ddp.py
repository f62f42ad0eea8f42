"""Data-parallel training on two CPU processes (torch.distributed, gloo), launched with torchrun.

`run_two_processes` starts `python -m torch.distributed.run --nproc_per_node 2 -m tlkit.ddp OUT ...`;
each process trains the same small network with tlkit's `Learner` (which wraps it in
DistributedDataParallel and shards the data with a DistributedSampler), records the gradients
after each step (DDP's average over the processes) and times an all-reduce of that many floats.
`single_process` trains the same network in one process with the global batch, for comparison.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .env import threads
from .models import copy_state

__all__ = ["allreduce_seconds", "main", "run_two_processes", "single_process", "small_net",
           "synthetic_data", "train", "EPOCHS", "LR", "N_SAMPLES"]

N_SAMPLES, EPOCHS, LR = 256, 1, 0.05


def synthetic_data() -> TensorDataset:
    """A fixed, learnable 3-class problem on 3x12x12 'images'."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N_SAMPLES, 3, 12, 12, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0.05).long()
    return TensorDataset(x, y)


def small_net() -> nn.Module:
    """Two convolutions and a linear layer, no BatchNorm (its batch statistics differ per process by design)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 8 * 8, 3))


def train(batch_size: int) -> dict:
    """Fit `small_net` with the Learner; per step, the gradients it applied and the seconds the step took."""
    from .train import Learner
    data = synthetic_data()
    dls = SimpleNamespace(train=DataLoader(data, batch_size=batch_size, shuffle=False),
                          val=DataLoader(data, batch_size=N_SAMPLES))
    learn = Learner(small_net(), dls, opt="sgd", wd=0.0, device="cpu", progress=False)
    grads, seconds, last = [], [], [time.perf_counter()]

    def on_batch(event, lrn):
        if event == "before_epoch":
            last[0] = time.perf_counter()
        if event == "after_batch":
            now = time.perf_counter()
            seconds.append(now - last[0])
            grads.append(torch.cat([p.grad.detach().flatten().clone() for p in lrn.net.parameters()]))
            last[0] = time.perf_counter()

    learn.fit(EPOCHS, LR, callbacks=[on_batch])
    return {"grads": torch.stack(grads), "step_s": seconds,
            "state": copy_state(learn.net)}


def allreduce_seconds(numel: int, repeats: int = 30) -> list[float]:
    """Seconds of one all-reduce (sum) of `numel` floats across the process group, repeated."""
    import torch.distributed as dist
    buf = torch.randn(numel)
    dist.barrier()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        dist.all_reduce(buf)
        out.append(time.perf_counter() - start)
    return out


def main(out: str, batch_per_process: int) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = train(batch_per_process)
    result["allreduce_s"] = allreduce_seconds(result["grads"].shape[1])
    result["world_size"] = dist.get_world_size()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(out: str | Path, batch_per_process: int = 16, world: int = 2, timeout: float = 180) -> list[dict]:
    """Launch `world` gloo processes with torchrun, each running `main`; returns their results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TLKIT_PROGRESS": "0",
           "TMPDIR": str(out)}   # torchrun's own log folders land in `out`, not one more leftover in /tmp
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(world),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "tlkit.ddp", str(out),
           str(batch_per_process)]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def single_process(batch_size: int) -> dict:
    """`train` in this process, on one thread, with the global batch."""
    with threads(1):
        return train(batch_size)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
