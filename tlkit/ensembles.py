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
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from .models import eval_mode
from .tta import merge, model_device
from . import metrics

__all__ = ["Ensemble", "member_logits", "ensemble_predict", "accuracy_of", "average_state_dicts",
           "average_weights", "interpolate_weights", "load_snapshots"]


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

def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]],
                        weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts with the same keys (floating tensors; others are taken from the first).

    A running mean (`avg += w_k / W_k * (x_k - avg)`, as SWA does) keeps the average of identical
    networks bit-for-bit identical to each of them. BatchNorm running statistics are averaged too.
    """
    states = list(states)
    if not states:
        raise ValueError("nothing to average")
    weights = [1.0] * len(states) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError("need one non-negative weight per state dict, not all zero")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys:
            raise ValueError("state dicts differ in their keys: only networks of one architecture can be averaged")
    out = {}
    for key in keys:
        first = states[0][key]
        if not first.is_floating_point():
            out[key] = first.detach().clone()
            continue
        avg = first.detach().to(torch.float64 if first.dtype == torch.float64 else torch.float32).clone()
        total = weights[0]
        for s, w in zip(states[1:], weights[1:]):
            if w == 0:
                continue
            total += w
            avg += (s[key].detach().to(avg.device, avg.dtype) - avg) * (w / total)
        out[key] = avg.to(first.dtype)
    return out


def average_weights(models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    """A new network (a copy of the first) whose weights are the average of the models' weights."""
    models = list(models)
    soup = copy.deepcopy(models[0])
    soup.load_state_dict(average_state_dicts([m.state_dict() for m in models], weights))
    return soup


def interpolate_weights(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """The network with weights `(1 - alpha) * a + alpha * b` (alpha = 0 gives a, 1 gives b)."""
    if alpha == 0 or alpha == 1:
        return copy.deepcopy(model_b if alpha else model_a)
    return average_weights([model_a, model_b], [1 - alpha, alpha])


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


