"""Ensembles: average the *outputs* of several networks; and when averaging their *weights* works too.

Averaging outputs always works: every member votes with its probabilities. Averaging weights only works
when the networks lie in one basin of the loss, e.g. fine-tuned from the same pretrained start (a "model
soup", Wortsman et al. 2022) or snapshots along one run. Networks trained from different random
initialisations compute the same function with their hidden units permuted, so their average is
no network at all.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .models import eval_mode
from .tta import merge, model_device
from . import metrics

__all__ = ["Ensemble", "member_logits", "ensemble_predict", "accuracy_of", "average_weights",
           "interpolate_weights", "load_snapshots"]


class Ensemble(nn.Module):
    """Members run on the same input; the output is the log of their mean probability.

    Why the log: softmax, argmax and cross-entropy of the output are then exactly the ensemble's,
    so the ensemble plugs into any code that expects logits (`Learner.evaluate`, TTA, timing).
    """

    def __init__(self, members: Iterable[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(-1) for m in self.members]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


@contextlib.contextmanager
def _on_device(models: Sequence[nn.Module], device: torch.device | None):
    """Run each model on `device` (None: where it already lives), in eval mode; put everything back after."""
    homes = [model_device(m) for m in models]
    with eval_mode(*models):
        try:
            for m in models:
                if device is not None:
                    m.to(device)
            yield [device or h for h in homes]
        finally:
            for m, home in zip(models, homes):
                m.to(home)


@torch.no_grad()
def member_logits(models: Sequence[nn.Module], loader, device: torch.device | str | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's logits `[M, N, K]` and the targets `[N]`, on the CPU; the loader is read once.

    Models may live on different devices: each batch is sent to where each model is (or to `device`,
    where every model is moved for the call and moved back afterwards).
    """
    models = list(models)
    if not models:
        raise ValueError("an ensemble needs at least one model")
    device = torch.device(device) if device is not None else None
    outs: list[list[torch.Tensor]] = [[] for _ in models]
    ys = []
    with _on_device(models, device) as devices:
        for x, y in loader:
            for out, m, dev in zip(outs, models, devices):
                out.append(m(x.to(dev)).float().cpu())
            ys.append(torch.as_tensor(y))
    return torch.stack([torch.cat(o) for o in outs]), torch.cat(ys)


def ensemble_predict(models: Sequence[nn.Module], loader, device: torch.device | str | None = None,
                     how: str = "prob") -> tuple[torch.Tensor, torch.Tensor]:
    """The ensemble's probabilities `[N, K]` (members merged with `tta.merge`, default: mean probability)."""
    logits, targets = member_logits(models, loader, device)
    return merge(logits, how, dim=0), targets


def accuracy_of(model: nn.Module, loader, device: torch.device | str | None = None) -> float:
    """Validation accuracy of one network (wherever it lives)."""
    logits, targets = member_logits([model], loader, device)
    return metrics.accuracy(logits[0], targets)


# ---------------------------------------------------------------- weight averaging

def _same_architecture(models: Sequence[nn.Module]) -> None:
    keys = [list(m.state_dict()) for m in models]
    if not keys or any(k != keys[0] for k in keys[1:]):
        raise ValueError("need networks of one architecture (the same state-dict keys) to average their weights")


def average_weights(models: Sequence[nn.Module]) -> nn.Module:
    """A new network whose parameters and BatchNorm statistics are the mean of the models'.

    torch's `AveragedModel(use_buffers=True)` fed each network once: SWA's running mean, which keeps the
    average of identical networks bit-for-bit identical to each of them (integer buffers are the first's).
    """
    models = list(models)
    _same_architecture(models)
    swa = AveragedModel(models[0], use_buffers=True)
    for model in models:
        swa.update_parameters(model)
    return swa.module


def interpolate_weights(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """A new network at `(1 - alpha) * a + alpha * b` in weight space (alpha 0 is a, 1 is b, exactly)."""
    _same_architecture([model_a, model_b])
    b = model_b.state_dict()
    mixed = copy.deepcopy(model_a)
    mixed.load_state_dict({k: torch.lerp(v, b[k].to(v.device, v.dtype), float(alpha)) if v.is_floating_point() else v
                           for k, v in model_a.state_dict().items()})
    return mixed


def load_snapshots(template: nn.Module, paths: Sequence) -> list[nn.Module]:
    """One copy of `template` per snapshot file written by `snapshots.SnapshotSaver`."""
    from .snapshots import load_snapshot
    nets = []
    for path in paths:
        net = copy.deepcopy(template)
        load_snapshot(net, path)
        nets.append(net)
    return nets


# ---------------------------------------------------------------- training several members


# ---------------------------------------------------------------- a network that trains from scratch in seconds


# ---------------------------------------------------------------- verdicts on claim 20 and the cost of M members


