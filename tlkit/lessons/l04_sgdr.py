"""Lesson 04 (notebooks/04_sgdr.ipynb): schedules compared, snapshots, and how wide the valleys are.

The schedules themselves are the core's (`tlkit.schedules`, `tlkit.snapshots`); here are the lesson's runs,
plots and verdicts on claims 14-17, and the loss along random filter-normalised weight directions with
a one-number sharpness (Li et al., 2018).

Why filter-normalised: a ReLU net scaled filter-wise computes the same function, so a raw random step means
different things for nets with different weight scales. Rescaling every filter of the direction to the norm of
the matching weight filter makes "radius 0.5" mean "half of each filter's size" for any net, so curves of two
solutions can be compared.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from .. import metrics
from ..models import eval_mode
from ..schedules import SGDR, fit_epochs, lr_values, mark_restarts, torch_sgdr_lrs
from ..snapshots import ensemble_probs, snapshot_predictions

__all__ = ["trainable_params", "filter_normalized_direction", "evaluate_loss", "loss_along_direction",
           "loss_curves", "sharpness", "plot_loss_curves", "compare", "filter_norms", "plot_runs",
           "snapshot_table", "verdict_cycle_knobs", "verdict_reload", "verdict_sgdr_beats_step",
           "verdict_wider_valleys"]


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters training moved (frozen layers are the same for every solution)."""
    return [p for p in model.parameters() if p.requires_grad]


def filter_norms(t: torch.Tensor) -> torch.Tensor:
    """Norm of every filter (slice along dim 0), shaped to broadcast against `t`."""
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


def filter_normalized_direction(params: Sequence[torch.Tensor], generator: torch.Generator | None = None,
                                ignore_1d: bool = True) -> list[torch.Tensor]:
    """A Gaussian direction with each filter (slice along dim 0) rescaled to that filter's weight norm.

    1-D parameters (biases, BatchNorm) get a zero direction when `ignore_1d`, as in Li et al.
    """
    direction = []
    for p in params:
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        if p.dim() <= 1:
            d = torch.zeros_like(p) if ignore_1d else d * (p.detach().norm() / (d.norm() + 1e-10))
        else:
            d = d * (filter_norms(p.detach()) / (filter_norms(d) + 1e-10))
        direction.append(d)
    return direction


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader, loss_fn: Callable = F.cross_entropy) -> float:
    """Mean loss over every item of `loader`, the model in eval mode (BatchNorm uses its running statistics)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            total += loss_fn(out.float() if out.dtype in (torch.float16, torch.bfloat16) else out, y).item() * len(y)
            count += len(y)
    return total / count


@torch.no_grad()
def loss_along_direction(model: nn.Module, direction: Sequence[torch.Tensor], alphas: Sequence[float], loader,
                         loss_fn: Callable = F.cross_entropy, params: Sequence[torch.Tensor] | None = None) -> np.ndarray:
    """Loss at `theta + alpha * direction` for each alpha; the weights are restored exactly afterwards."""
    params = trainable_params(model) if params is None else list(params)
    originals = [p.detach().clone() for p in params]
    losses = []
    try:
        for alpha in alphas:
            for p, p0, d in zip(params, originals, direction):
                p.copy_(p0 + alpha * d)
            losses.append(evaluate_loss(model, loader, loss_fn))
    finally:
        for p, p0 in zip(params, originals):
            p.copy_(p0)
    return np.array(losses)


def loss_curves(model: nn.Module, loader, alphas: Sequence[float], n_directions: int = 3, seed: int = 0,
                loss_fn: Callable = F.cross_entropy, ignore_1d: bool = True) -> np.ndarray:
    """Loss along `n_directions` random filter-normalised directions: an array [n_directions, len(alphas)].

    The same `seed` draws the same raw Gaussian directions for two nets of the same shape: a fair comparison.
    """
    params = trainable_params(model)
    generator = torch.Generator().manual_seed(seed)
    return np.stack([loss_along_direction(model, filter_normalized_direction(params, generator, ignore_1d),
                                          alphas, loader, loss_fn, params) for _ in range(n_directions)])


def sharpness(model: nn.Module, loader, radius: float = 0.5, n_directions: int = 3, seed: int = 0,
              loss_fn: Callable = F.cross_entropy, ignore_1d: bool = True) -> float:
    """Mean loss increase at filter-normalised distance `radius` (both signs, `n_directions` directions).

    One number per solution: low = the loss stays low around the weights (a wide valley).
    """
    curves = loss_curves(model, loader, [-radius, 0.0, radius], n_directions, seed, loss_fn, ignore_1d)
    return float(curves[:, [0, 2]].mean() - curves[:, 1].mean())


def plot_loss_curves(alphas: Sequence[float], curves: dict, ax=None, radius: float | None = None,
                     relative: bool = False, colors: dict | None = None):
    """Loss against step size for each solution: one thin line per direction, the mean thick.

    `relative=True` plots the increase over the loss at alpha = 0, so solutions with different losses compare;
    `colors` maps names to colours (to keep one colour per solution across panels).
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.5))[1]
    centre = int(np.argmin(np.abs(np.asarray(alphas))))
    for name, losses in curves.items():
        losses = np.asarray(losses)
        losses = losses - losses[:, [centre]] if relative else losses
        line, = ax.plot(alphas, np.mean(losses, 0), lw=2.5, label=name, color=(colors or {}).get(name))
        for row in losses:
            ax.plot(alphas, row, lw=0.8, alpha=0.4, color=line.get_color())
    if radius is not None:
        for r in (-radius, radius):
            ax.axvline(r, color="0.6", ls=":", lw=1)
    ax.set(xlabel="step along a random filter-normalised direction (alpha)",
           ylabel="validation loss increase" if relative else "validation loss")
    ax.legend(fontsize="small")
    return ax


def compare(make_learner, schedules: dict, lr, callbacks: dict | None = None, seed: int = 0):
    """Train a fresh learner per schedule with the same seed, each for its `total_epochs`.

    Returns (a results table indexed by schedule name, {name: learner}); `callbacks` maps names to lists.
    Why reseed before building each learner: same initial weights and batch order, so only the schedule differs.
    """
    import pandas as pd

    from ..env import seed_everything

    rows, learners = [], {}
    for name, schedule in schedules.items():
        seed_everything(seed)
        learn = make_learner()
        hist = learn.fit(fit_epochs(schedule), lr, schedule=schedule, callbacks=(callbacks or {}).get(name, []))
        rows.append({"schedule": name, "epochs": len(hist), "train_loss": hist.train_loss.iloc[-1],
                     "val_loss": hist.val_loss.iloc[-1], "val_acc": hist.val_acc.iloc[-1],
                     "best_val_acc": hist.val_acc.max(), "seconds": float(hist.seconds.sum())})
        learners[name] = learn
    return pd.DataFrame(rows).set_index("schedule"), learners


def plot_runs(histories: dict, schedules: dict | None = None, metrics=("train_loss", "val_loss", "val_acc"),
              x: str = "epoch", axes=None):
    """Curves of several runs side by side (one panel per metric), each run's restarts marked in its colour.

    `histories` maps a run name to a DataFrame with an `x` column (epoch or fractional epoch) and the metrics.
    """
    import matplotlib.pyplot as plt

    schedules = schedules or {}
    if axes is None:
        axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)[1][0]
    for name, hist in histories.items():
        for ax, metric in zip(axes, metrics):
            line, = ax.plot(hist[x], hist[metric], marker="." if len(hist) < 40 else None, label=name)
            mark_restarts(ax, getattr(schedules.get(name), "restarts", []), color=line.get_color(), label=None)
    for ax, metric in zip(axes, metrics):
        ax.set(xlabel="epochs", title=metric)
    axes[0].legend(fontsize="small")
    return axes


def verdict_sgdr_beats_step(loss_sgdr, loss_step, correct_sgdr, correct_step):
    """Claim 14: validation log-loss saved by SGDR over step decay, `[seeds, images]` per-image losses (paired;
    resamples seeds and images), with the accuracy difference beside it.

    Why the loss: a few points of accuracy on 240 images move in steps of a fraction of a point and see only
    the images whose answer flips; every image's loss shows which schedule fits it better.
    """
    from .. import claims
    sgdr, step = np.atleast_2d(np.asarray(loss_sgdr, float)), np.atleast_2d(np.asarray(loss_step, float))
    aside = claims.accuracy_aside(np.atleast_2d(np.asarray(correct_sgdr, float)),
                                  np.atleast_2d(np.asarray(correct_step, float)))
    return claims.compare_loss(14, sgdr, step, f"validation log-loss of step decay minus SGDR's, same budget and LR, "
                                               f"{len(sgdr)} seeds (the interval resamples seeds and images)",
                               aside=aside)


def verdict_wider_valleys(sharp_single_cycle, sharp_restarts):
    """Claim 15: how many times flatter (log10) the SGDR solution is than one cosine cycle, t interval over seeds."""
    from .. import claims
    ratios = np.log10(np.asarray(sharp_single_cycle) / np.asarray(sharp_restarts))
    return claims.compare_seeds(15, ratios, "log10 of the sharpness of one cosine cycle over that of SGDR with "
                                            "restarts (same budget; positive: SGDR's valley is wider)",
                                unit="decades", scale=1.0)


def verdict_cycle_knobs(schedule: SGDR, steps_per_epoch: int, trained_epochs: int):
    """Claim 16: the steps at which our SGDR sets the LR torch's scheduler sets, and the epochs actually trained."""
    from .. import claims
    ours = lr_values(schedule, steps_per_epoch=steps_per_epoch)
    ref = torch_sgdr_lrs(schedule, steps_per_epoch)
    agree = int(np.sum(np.abs(ours - ref) < 1e-9)) if len(ours) == len(ref) else 0
    agree *= int(trained_epochs == round(schedule.total_epochs))
    return claims.share_above(16, agree, len(ours), 0.95,
                              f"steps where SGDR(n_cycles={schedule.n_cycles}, cycle_len={schedule.cycle_len:g}, "
                              f"cycle_mult={schedule.cycle_mult:g}) sets torch's LR, over {trained_epochs} epochs "
                              f"trained = the formula's {schedule.total_epochs:g}")


def snapshot_table(probs: torch.Tensor, targets: torch.Tensor, epochs=None) -> pd.DataFrame:
    """Accuracy and log-loss of each snapshot and of the ensembles of the last k snapshots."""
    def row(name, p):
        nll = metrics.nll(p, targets)
        return {"model": name, "acc": metrics.accuracy(p, targets), "loss": nll}

    epochs = epochs or range(1, len(probs) + 1)
    rows = [row(f"snapshot {i} (epoch {e:g})", p) for i, (e, p) in enumerate(zip(epochs, probs))]
    rows += [row(f"ensemble of last {k}", ensemble_probs(probs[-k:])) for k in range(2, len(probs) + 1)]
    return pd.DataFrame(rows)


def verdict_reload(learn, path, loader=None):
    """Claim 17: the predictions of weights saved to `path` and loaded back, against the learner's own."""
    from .. import claims
    before = learn.get_preds(loader)[0].argmax(1)
    reloaded = snapshot_predictions(learn, [path], loader)[0][0].argmax(1)
    return claims.share_above(17, int((before == reloaded).sum()), len(before), 0.95,
                              "validation images whose prediction from the saved-and-reloaded weights equals "
                              "the prediction of the weights in memory")
