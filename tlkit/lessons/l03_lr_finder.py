"""Lesson 03 (notebooks/03_lr_finder.ipynb): does the finder's suggestion work, and which rule to trust.

The sweep itself is the core's `tlkit.lr_finder`; here are the lesson's experiments: a grid of short runs
over LRs, the loss each rule's LR reaches over seeds, how far the suggestion moves after a change, and
the verdicts on claims 12 and 13.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..lr_finder import Suggestion, lr_find
import math
import torch.nn.functional as F
from .. import claims
from ..errors import ParameterError
from ..validate import check_positive, check_positive_int
from .. import metrics

__all__ = ["best_lr", "item_losses", "lr_grid", "plot_lr_grid", "rule_losses", "suggestion_shifts",
           "verdict_min10_vs_steep", "verdict_rerun_after_change"]


# ----------------------------------------------------------------------------- does the suggestion work?
def lr_grid(make_learner, lrs, epochs: int, **fit_kwargs):
    """Train a fresh learner per LR for the same budget; one row per LR with its final validation numbers.

    `make_learner()` must return a learner starting from the same weights every time (the
    comparison is only fair if nothing but the LR changes). A run whose loss goes NaN is a row
    with `diverged=True` instead of an error: diverging is a result here.
    """
    import pandas as pd

    from ..train import NonFiniteLossError

    check_positive_int("epochs", epochs, 2)
    lrs = [check_positive(f"lrs[{i}]", lr, 1e-3) for i, lr in enumerate(lrs)]
    if not lrs:
        raise ParameterError("lrs=[] holds no learning rate to try, e.g. lrs=[1e-4, 1e-3, 1e-2].")
    rows = []
    for lr in lrs:
        learn = make_learner()
        try:
            hist = learn.fit(epochs, float(lr), **fit_kwargs)
            last = hist.iloc[-1]
            rows.append({"lr": float(lr), "train_loss": last.train_loss, "val_loss": last.val_loss,
                         "val_acc": last.val_acc, "diverged": False})
        except NonFiniteLossError:
            rows.append({"lr": float(lr), "train_loss": np.nan, "val_loss": np.nan, "val_acc": np.nan,
                         "diverged": True})
    return pd.DataFrame(rows)


def best_lr(grid) -> float:
    """The grid's LR with the lowest final validation loss (diverged runs never win)."""
    ok = grid[~grid.diverged]
    if ok.empty:
        raise ValueError("every LR in the grid diverged: move the grid to lower LRs")
    return float(ok.loc[ok.val_loss.idxmin(), "lr"])


def plot_lr_grid(grid, suggestions: dict[str, Suggestion] | None = None, axes=None):
    """Final validation loss and accuracy against LR, with the finder's suggestions as vertical lines."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, col in zip(axes, ("val_loss", "val_acc")):
        ax.plot(grid.lr, grid[col], "o-", color="0.3", label="grid run")
        if col == "val_loss":
            ax.set_yscale("log")  # a too-large LR can cost orders of magnitude in loss
        for x in grid.lr[grid.diverged]:
            ax.axvline(x, color="red", alpha=0.3, lw=6, label="diverged")
        for color, s in zip(("C1", "C2", "C3"), (suggestions or {}).values()):
            if s.lr is not None:
                ax.axvline(s.lr, color=color, ls="--", label=f"{s.name} {s.lr:.2g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel=col.replace("_", " "))
    axes[0].legend(fontsize=8)
    return axes


# ----------------------------------------------------------------------------- verdicts on the notes' claims
def item_losses(learn, loader) -> np.ndarray:
    """Cross-entropy of every item of `loader` under `learn`'s model (for image-by-image comparisons)."""
    logits, y = learn.get_logits(loader)
    return F.cross_entropy(logits, y, reduction="none").numpy()


def rule_losses(make_learner, rules, epochs: int, seeds, loader, **find_kwargs) -> tuple[dict, "pd.DataFrame"]:
    """Per-item losses on `loader` after training at each rule's suggestion, one sweep per seed.

    Why one sweep per seed: the claim is about the rule, not about one sweep's curve, so each seed
    sweeps `make_learner(seed)` afresh and then trains a fresh `make_learner(seed)` at every rule's
    LR. Returns `{rule: array [seeds, items]}` and a table of the suggested LRs per seed.
    """
    import pandas as pd

    from ..env import seed_everything
    losses, chosen = {rule: [] for rule in rules}, []
    for seed in seeds:
        seed_everything(seed)
        result = lr_find(make_learner(seed), **find_kwargs)
        row = {"seed": seed}
        for rule in rules:
            row[rule] = lr = result.lr(rule)
            if lr is None:
                raise ValueError(f"seed {seed}: the sweep gave no {rule!r} suggestion ({result.stop_reason})")
            seed_everything(seed)
            learn = make_learner(seed)
            learn.fit(epochs, float(lr))
            losses[rule].append(item_losses(learn, loader))
        chosen.append(row)
    return {rule: np.stack(rows) for rule, rows in losses.items()}, pd.DataFrame(chosen)


def verdict_min10_vs_steep(loss_min10: np.ndarray, loss_steep: np.ndarray):
    """Claim 12: loss after training at the steepest point minus at min/10, `[seeds, images]` (resamples both)."""
    steep, min10 = np.atleast_2d(loss_steep), np.atleast_2d(loss_min10)
    effect, low, high = metrics.paired_bootstrap(steep, min10)
    return claims.judge(12, effect, (low, high), min10.shape[1],
                        f"validation loss after training at the steep suggestion minus at min/10, over "
                        f"{min10.shape[0]} sweeps and fits (the interval resamples seeds and images)",
                        unit="nats", scale=1.0, runs=min10.shape[0])


def suggestion_shifts(make_before, make_after, seeds, rule="valley", **find_kwargs):
    """The `rule` suggestion of a sweep before and after a change (e.g. unfreezing), one pair per seed.

    `rule` names a suggestion rule or is a function of a sweep's result returning an LR (or None),
    e.g. `lr_finder.divergence_lr`.

    `make_before(seed)` and `make_after(seed)` return the learners to sweep (e.g. the head on cached
    features of the frozen body, and the unfrozen network on images); the seed is set before each
    sweep. Returns one row per seed and the sweeps, `{seed: {"before": result, "after": result}}`.
    """
    import pandas as pd
    from ..env import seed_everything
    rows, sweeps = [], {}
    for seed in seeds:
        sweeps[seed] = {}
        for when, make in (("before", make_before), ("after", make_after)):
            seed_everything(seed)
            sweeps[seed][when] = lr_find(make(seed), **find_kwargs)
        before, after = (rule(sweeps[seed][when]) if callable(rule) else sweeps[seed][when].lr(rule)
                         for when in ("before", "after"))
        shift = math.log10(after / before) if before and after else float("nan")
        rows.append({"seed": seed, "lr_before": before, "lr_after": after, "decades": shift})
    return pd.DataFrame(rows), sweeps


def verdict_rerun_after_change(shifts):
    """Claim 13: how far (in decades) the suggestion moved, with a t interval over the seeds' sweeps."""
    decades = shifts["decades"].dropna().to_numpy()
    if len(decades) < 2:
        raise ValueError("need at least two seeds with a suggestion before and after")
    mean, low, high = metrics.mean_interval(decades)
    sign = 1.0 if mean >= 0 else -1.0          # moved either way: the size of the move, interval mirrored
    low, high = sorted((sign * low, sign * high))
    return claims.judge(13, sign * mean, (low, high), len(decades),
                        "how far the point where training breaks (the smoothed loss doubles) moved after unfreezing "
                        "(either direction), over repeated pairs of sweeps", unit="decades", scale=1.0)
