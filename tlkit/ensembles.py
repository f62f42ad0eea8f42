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
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .env import seed_everything
from .models import eval_mode
from .tta import accuracy, merge, model_device

__all__ = ["Ensemble", "member_logits", "ensemble_predict", "accuracy_of", "accuracy_vs_members",
           "plot_accuracy_vs_members", "average_state_dicts", "average_weights", "interpolate_weights",
           "interpolation_curve", "outputs_vs_weights", "plot_interpolation", "load_snapshots", "fit_seeds",
           "train_heads", "tiny_cnn", "tensor_loaders", "correct_matrix", "verdict_ensemble_gain",
           "verdict_outputs_vs_weights", "cost_vs_members", "part_sentence"]


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


def _nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    return F.nll_loss(probs.clamp_min(1e-12).log(), targets).item()


def accuracy_vs_members(logits: torch.Tensor, targets: torch.Tensor, how: str = "prob") -> pd.DataFrame:
    """Accuracy and log-loss of the ensemble of the first m members, m = 1..M, next to the members' means."""
    singles = [l.softmax(-1) for l in logits]
    rows = []
    for m in range(1, len(logits) + 1):
        probs = merge(logits[:m], how, dim=0)
        rows.append({"members": m, "acc": accuracy(probs, targets), "loss": _nll(probs, targets),
                     "single_acc_mean": sum(accuracy(p, targets) for p in singles[:m]) / m,
                     "single_loss_mean": sum(_nll(p, targets) for p in singles[:m]) / m})
    return pd.DataFrame(rows)


def accuracy_of(model: nn.Module, loader, device: torch.device | str | None = None) -> float:
    """Validation accuracy of one network (wherever it lives)."""
    logits, targets = member_logits([model], loader, device)
    return accuracy(logits[0].softmax(-1), targets)


def plot_accuracy_vs_members(tables: Mapping[str, pd.DataFrame], axes=None):
    """Accuracy and log-loss of the ensemble of the first m members against m, one colour per kind of member.

    Why the loss too: on a small validation set accuracy moves in steps of one image, while the
    log-loss shows the averaged probabilities improving steadily.
    """
    import matplotlib.pyplot as plt
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for (metric, label), ax in zip((("acc", "validation accuracy"), ("loss", "validation log-loss")), axes):
        for name, table in tables.items():
            line, = ax.plot(table["members"], table[metric], "o-", label=f"{name}: ensemble")
            ax.plot(table["members"], table[f"single_{metric}_mean"], ":", color=line.get_color(),
                    label=f"{name}: mean single member")
        ax.set(xlabel="members M (probabilities averaged)", ylabel=label, title=f"{label} vs M")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].figure.tight_layout()
    return axes


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


def interpolation_curve(model_a: nn.Module, model_b: nn.Module, evaluate: Callable[[nn.Module], float],
                        alphas: Sequence[float] = (0, 0.25, 0.5, 0.75, 1)) -> pd.DataFrame:
    """`evaluate` (e.g. accuracy) along the straight line between two networks' weights.

    A dip in the middle (a barrier) means the two lie in different basins and must not be averaged.
    """
    return pd.DataFrame([{"alpha": a, "value": evaluate(interpolate_weights(model_a, model_b, a))}
                         for a in alphas])


def outputs_vs_weights(models: Sequence[nn.Module], loader, device: torch.device | str | None = None,
                       logits: torch.Tensor | None = None) -> dict:
    """Accuracy of the members (mean, min, max), of their averaged outputs and of their averaged weights.

    Pass the members' `logits` on this loader (from `member_logits`) to evaluate only the averaged network.
    """
    models = list(models)
    if logits is None:
        logits, targets = member_logits(models + [average_weights(models)], loader, device)
    else:
        avg_logits, targets = member_logits([average_weights(models)], loader, device)
        logits = torch.cat([logits, avg_logits])
    single = [accuracy(l.softmax(-1), targets) for l in logits[:-1]]
    return {"members": len(models), "member_acc_mean": sum(single) / len(single), "member_acc_min": min(single),
            "member_acc_max": max(single), "output_avg_acc": accuracy(merge(logits[:-1], "prob", dim=0), targets),
            "weight_avg_acc": accuracy(logits[-1].softmax(-1), targets)}


def plot_interpolation(curves: Mapping[str, pd.DataFrame], ax=None):
    """Accuracy along the straight line between two networks' weights, one line per pair."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    for name, curve in curves.items():
        ax.plot(curve["alpha"], curve["value"], "o-", label=name)
    ax.set(xlabel="alpha: weights (1 - alpha) * A + alpha * B", ylabel="validation accuracy",
           title="interpolating between two networks' weights", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


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

def fit_seeds(make_learner: Callable[[int], "object"], seeds: Sequence[int], epochs: int, lr,
              **fit_kwargs) -> list[nn.Module]:
    """Train one network per seed: everything random (init, data order, augmentation) follows the seed."""
    nets = []
    for seed in seeds:
        seed_everything(seed)
        learn = make_learner(seed)
        learn.fit(epochs, lr, **fit_kwargs)
        nets.append(learn.net)
    return nets


def train_heads(train_fs, val_fs, seeds: Sequence[int], epochs: int = 10, lr: float = 1e-3,
                hidden: int | None = None, dropout: float = 0.0, init_seed: int | None = None,
                batch_size: int = 32, wd: float = 1e-4, **fit_kwargs) -> list[nn.Module]:
    """One classifier head per seed, trained on the CPU on precomputed features (`features.FeatureSet`).

    The seed sets the initial weights, the data order and dropout. `init_seed` fixes the initial
    weights for every head instead (only data order and dropout then differ), which is what makes
    their weights averageable.
    """
    from .features import feature_loaders
    from .models import new_head
    from .train import Learner

    num_classes = len(train_fs.classes) or int(max(train_fs.y.max(), val_fs.y.max())) + 1

    def make(seed):
        torch.manual_seed(seed if init_seed is None else init_seed)
        head = new_head(train_fs.feature_dim, num_classes, hidden, dropout)
        torch.manual_seed(seed)
        return Learner(head, feature_loaders(train_fs, val_fs, batch_size, seed), wd=wd, device="cpu",
                       progress=False)

    return fit_seeds(make, seeds, epochs, lr, **fit_kwargs)


# ---------------------------------------------------------------- a network that trains from scratch in seconds

def tiny_cnn(num_classes: int, in_channels: int = 3, width: int = 16) -> nn.Module:
    """A small CNN (three conv-BN-ReLU blocks, global pooling, linear) for 32-pixel images.

    Why: training networks *from random initialisations* is the case where weight averaging fails,
    and this one trains from scratch in seconds on a CPU (e.g. on the 8x8 `digits` scaled to 32 px).
    """
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True), nn.MaxPool2d(2))

    return nn.Sequential(block(in_channels, width), block(width, 2 * width), block(2 * width, 4 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


def tensor_loaders(splits, transform: Callable, batch_size: int = 64, seed: int | None = None):
    """Loaders over images transformed once and kept in memory (small images only, e.g. `digits`).

    Why: decoding and transforming a few thousand tiny images every epoch costs more than the network.
    """
    from torch.utils.data import TensorDataset

    from .data import make_loader
    from .features import FeatureLoaders

    def stack(images):
        return TensorDataset(torch.stack([transform(images.image(i)) for i in range(len(images))]),
                             torch.tensor(images.targets))

    return FeatureLoaders(make_loader(stack(splits.train), batch_size, True, seed=seed),
                          make_loader(stack(splits.val), 2 * batch_size, False), list(splits.classes))


# ---------------------------------------------------------------- verdicts on claim 20 and the cost of M members

def correct_matrix(logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Per-member, per-image correctness `[M, N]` (1.0 / 0.0) of members' logits `[M, N, K]`."""
    return (logits.argmax(-1) == targets[None, :]).float().numpy()


def verdict_ensemble_gain(logits: torch.Tensor, targets: torch.Tensor, what: str = ""):
    """Claim 20: the output average of all M members minus a single member, paired over the images.

    Per image: correct(ensemble) minus the share of members that are right, i.e. the gain over a
    member picked at random; the interval is a bootstrap over images.
    """
    from . import claims
    ensemble = (merge(logits, "prob", dim=0).argmax(-1) == targets).float().numpy()
    diff = ensemble - correct_matrix(logits, targets).mean(0)
    effect, low, high = claims.bootstrap_sum([(1.0, diff)])
    return claims.judge(20, effect, (low, high), len(diff),
                        what or f"the average of {len(logits)} members' probabilities minus a single member, "
                                "validation accuracy")


def verdict_outputs_vs_weights(logits: torch.Tensor, weight_avg_logits: torch.Tensor, targets: torch.Tensor,
                               what: str = ""):
    """Claim 20's 'outputs, not weights': the members' output average minus their weight average, per image."""
    from . import claims
    outputs = (merge(logits, "prob", dim=0).argmax(-1) == targets).float().numpy()
    weights = (weight_avg_logits.argmax(-1) == targets).float().numpy()
    return claims.compare_accuracy(20, outputs, weights,
                                   what or f"the average of {len(logits)} members' outputs minus the network with "
                                           "their averaged weights, validation accuracy")


def cost_vs_members(models: Sequence[nn.Module], batch: torch.Tensor, repeats: int = 5) -> pd.DataFrame:
    """Measured cost of the output average of the first m members against one member, m = 1..M, with intervals."""
    from .tta import cost_ratio
    rows = []
    for m in range(1, len(models) + 1):
        c = cost_ratio(list(models[:m]), models[0], batch, 1, repeats)
        rows.append({"members": m, "ms_per_image": 1000 * float(np.median(c["slow_s"])), "cost_ratio": c["ratio"],
                     "cost_low": c["low"], "cost_high": c["high"]})
    return pd.DataFrame(rows)


def part_sentence(verdict, label: str) -> str:
    """Markdown for one more part of a claim, judged like the claim (not recorded as the claim's verdict)."""
    text = verdict.sentence()
    body = text.split("In this run, ", 1)[1]
    return f"*Claim {verdict.id}, {label}:* in this run, {body}"
