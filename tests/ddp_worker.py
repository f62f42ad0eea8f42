"""Train a tiny model with tlkit's Learner; run under torchrun (DDP) or as one process.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT BATCH_PER_PROCESS
"""
import os
import sys
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N_SAMPLES, EPOCHS, LR = 64, 2, 0.05


def synthetic_data() -> TensorDataset:
    """A fixed, learnable 3-class problem on 2x6x6 'images'."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N_SAMPLES, 2, 6, 6, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0.2).long()
    return TensorDataset(x, y)


def tiny_net() -> nn.Module:
    """Conv + linear, no BatchNorm (its batch statistics would differ per process by design)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def train(batch_size: int) -> dict:
    """Fit the tiny net with the Learner; returns final weights and the steps this process took."""
    from tlkit.train import Learner
    data = synthetic_data()
    dls = SimpleNamespace(train=DataLoader(data, batch_size=batch_size, shuffle=False),
                          val=DataLoader(data, batch_size=N_SAMPLES))
    learn = Learner(tiny_net(), dls, opt="sgd", wd=1e-4, device="cpu", progress=False)
    steps = []
    learn.fit(EPOCHS, LR, callbacks=[lambda event, lrn: steps.append(lrn.step) if event == "after_batch" else None])
    return {"state": {k: v.detach().clone() for k, v in learn.net.state_dict().items()},
            "steps": len(steps), "history": learn.history.to_dict(orient="list")}


def main(out: str, batch_per_process: int) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    result = train(batch_per_process)
    result["world_size"] = torch.distributed.get_world_size()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
