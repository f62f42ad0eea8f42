"""Lesson 02 (notebooks/02_augmentation_gallery.ipynb): does augmentation fight overfitting, and what it costs.

The transforms are the core's (`tlkit.augment`); here are the lesson's from-scratch CNN runs with and without
augmentation, the step timeline, the figures (RGB cloud, eigenvalues, accuracy curves) and the verdicts on
claims 7-10.
"""
from __future__ import annotations

import math
import time
from types import SimpleNamespace
from typing import Any, Iterable, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torchvision.transforms import v2

from ..augment import ColorPCA, ColorShift, PCAColor
from ..models import small_cnn
from ..train import CancelFit, on
from .. import fit_cache, metrics

__all__ = ["CleanTrainAccuracy", "compare_augmentations", "fit_with_clean_train_acc", "generalisation_gap", "lighting_change",
           "lighting_views", "mean_history", "plot_accuracy_curves", "plot_eigvals", "plot_rgb_cloud",
           "plot_step_timeline", "time_steps", "verdict_colour_robustness", "verdict_fights_overfitting",
           "verdict_geometry_helps", "verdict_workers"]


def plot_rgb_cloud(pixels: torch.Tensor, pca: ColorPCA, n_points: int = 3000, seed: int = 0, ax=None):
    """The training pixels as points in RGB space (drawn in their own colour) with the 3 principal axes.

    Each axis is drawn from the mean pixel, +-2 standard deviations (2 * sqrt(eigval)) long.
    """
    if ax is None:
        ax = plt.figure(figsize=(5.5, 5)).add_subplot(projection="3d")
    gen = torch.Generator().manual_seed(seed)
    pts = pixels[torch.randperm(len(pixels), generator=gen)[:n_points]].numpy()
    ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=pts.clip(0, 1), s=3, alpha=0.35, depthshade=False)
    mean = pixels.mean(0).numpy()
    for k, style in enumerate(["k-", "m-", "c-"]):
        half = 2 * float(pca.eigvals[k].sqrt()) * pca.eigvecs[:, k].numpy()
        seg = np.stack([mean - half, mean + half])
        ax.plot(seg[:, 0], seg[:, 1], seg[:, 2], style, lw=3, label=f"axis {k + 1} (eigval {pca.eigvals[k]:.4f})")
    ax.set(xlabel="R", ylabel="G", zlabel="B", xlim=(0, 1), ylim=(0, 1), zlim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_eigvals(pca: ColorPCA, ax=None):
    """Bar chart of the eigenvalues with the share of colour variance each axis explains."""
    ax = ax or plt.subplots(figsize=(4, 3))[1]
    vals = pca.eigvals.numpy()
    bars = ax.bar([f"axis {k + 1}" for k in range(3)], vals, color=["0.2", "m", "c"])
    for bar, share in zip(bars, vals / vals.sum()):
        ax.annotate(f"{share:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set(ylabel="eigenvalue (variance)", title="RGB covariance eigenvalues")
    return ax


def plot_accuracy_curves(histories: Mapping[str, pd.DataFrame], train_col: str = "train_acc",
                         val_col: str = "val_acc", ax=None):
    """Train (solid) and validation (dashed) accuracy per epoch for each run; the gap is labelled at the end."""
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for (name, hist), color in zip(histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        hist = hist.dropna(subset=[train_col, val_col])   # epochs whose curves were not measured
        ax.plot(hist["epoch"], hist[train_col], "-o", color=color, label=f"{name}: train")
        ax.plot(hist["epoch"], hist[val_col], "--s", color=color, label=f"{name}: val")
        last = hist.iloc[-1]
        ax.annotate(f"gap {last[train_col] - last[val_col]:+.2f}", (last["epoch"], last[val_col]),
                    textcoords="offset points", xytext=(6, -12), color=color)
    ax.set(xlabel="epoch", ylabel="accuracy", title="train vs validation accuracy")
    ax.legend(fontsize=8)
    return ax


def plot_step_timeline(timings: Mapping[str, Mapping[str, Any]], ax=None):
    """What the main process did per step: waiting for a batch (orange) vs training on it (blue).

    With worker processes the distortions happen elsewhere while the model trains, so the orange shrinks.
    """
    ax = ax or plt.subplots(figsize=(9, 0.9 + 0.6 * len(timings)))[1]
    for lane, (name, t) in enumerate(timings.items()):
        events = np.asarray(t["events"])
        bars = dict(edgecolor="white", linewidth=0.8)  # white edges mark the step boundaries
        ax.broken_barh(list(zip(events[:, 0], events[:, 1] - events[:, 0])), (lane - 0.3, 0.6), color="tab:orange",
                       **bars)
        ax.broken_barh(list(zip(events[:, 1], events[:, 2] - events[:, 1])), (lane - 0.3, 0.6), color="tab:blue",
                       **bars)
    ax.set_yticks(range(len(timings)), list(timings))
    ax.set(xlabel="seconds", title="main process per step: orange = waiting for data, blue = forward/backward")
    return ax


def generalisation_gap(train_acc: float, val_acc: float) -> float:
    """Train accuracy minus validation accuracy: how much the model memorised rather than learned."""
    return float(train_acc) - float(val_acc)


class CleanTrainAccuracy:
    """A fit callback: the accuracy on un-augmented training images after every `every`-th epoch and the last."""

    def __init__(self, loader: Iterable, epochs: int, every: int = 1):
        self.loader, self.epochs, self.every, self.acc = loader, epochs, every, {}

    def __call__(self, event: str, learner) -> None:
        from ..train import scores_after
        if event == "after_epoch" and scores_after(learner.epoch + 1, self.epochs, self.every):
            self.acc[learner.epoch + 1] = learner.evaluate(self.loader)["acc"]

    # the fit cache (`tlkit.fit_cache`) may read a fit back instead of running it: these name the callback and
    # keep what it measured
    def fit_cache_id(self, learn) -> str:
        return f"{fit_cache.value_id(self.loader)}|{self.epochs}|{self.every}|{sorted(self.acc.items())}"

    def fit_cache_state(self) -> dict:
        return {"acc": self.acc}

    def load_fit_cache_state(self, state: dict) -> None:
        self.acc = {int(k): float(v) for k, v in state["acc"].items()}


def fit_with_clean_train_acc(learn, epochs: int, lr: float, clean_train_loader: Iterable, curve_every: int = 1,
                             **fit_kwargs):
    """``learn.fit`` plus the accuracy on the training images *without* augmentation, every `curve_every` epochs.

    Why: the running ``train_acc`` is measured on distorted images, which are harder, so it would make
    augmentation look as if it closed the train/val gap for free. Memorisation shows on the clean images.
    The validation and clean-training columns are measured after every `curve_every`-th epoch and the last
    finished one (NaN in between). Why: for a network this small the two passes are a large share of an
    epoch, and a curve needs a few points, not every epoch. Scoring lists of batches draws no random number,
    so the weights are those of a run scored every epoch; a DataLoader takes one number from torch's global
    generator per pass, which moves the random views of later epochs.
    """
    from ..validate import check_positive_int
    check_positive_int("curve_every", curve_every, 1)
    scorer = CleanTrainAccuracy(clean_train_loader, epochs, curve_every)
    hist = learn.fit(epochs, lr, callbacks=[scorer, *fit_kwargs.pop("callbacks", [])], validate=curve_every,
                     **fit_kwargs)
    clean = scorer.acc
    if len(hist) and int(hist["epoch"].iloc[-1]) not in clean:     # stopped early by a callback: score the end
        val = learn.evaluate()
        hist.loc[hist.index[-1], ["val_loss", "val_acc"]] = val["loss"], val["acc"]
        clean[int(hist["epoch"].iloc[-1])] = learn.evaluate(clean_train_loader)["acc"]
    return hist.assign(train_acc_clean=[clean.get(e, float("nan")) for e in hist["epoch"]])


def time_steps(model: torch.nn.Module, loader: Iterable, n_steps: int = 10, warmup: int = 1,
               lr: float = 1e-3, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Time SGD steps fed by `loader`: seconds per step, how much of it was spent waiting for data, and
    the per-step ``events`` (request, batch ready, step done) in seconds from the first timed step.

    With ``num_workers=0`` the main process decodes and augments each batch between steps; with
    workers, processes prepare the next batches while the model trains, so the wait shrinks.
    The first `warmup` steps (worker start-up) are not counted; a short loader is restarted (a new epoch).
    """
    from ..train import Learner
    events: list[tuple[float, float, float]] = []

    def after_batch(learn) -> None:
        events.append((learn.batch_requested_at, learn.batch_ready_at, time.perf_counter()))
        if len(events) == warmup + n_steps:
            raise CancelFit

    steps = warmup + n_steps
    learn = Learner(model, SimpleNamespace(train=loader, val=None), opt=lambda groups, wd: torch.optim.SGD(groups),
                    wd=0.0, device=device, progress=False)
    learn.fit(math.ceil(steps / len(loader)), lr, callbacks=[on("after_batch", after_batch)], validate=False)
    ev = np.array(events[warmup:]) - events[warmup][0]
    total, wait = ev[-1, 2] - ev[0, 0], float((ev[:, 1] - ev[:, 0]).sum())
    return {"step_s": total / n_steps, "data_wait_s": wait / n_steps, "compute_s": (total - wait) / n_steps,
            "events": ev.tolist()}


def lighting_change(size: int, norm, pca: ColorPCA, shift_sigma: float = 0.08, pca_sigma: float = 1.0) -> v2.Compose:
    """The evaluation view under a random change of lighting: a colour shift and a strong PCA colour shift."""
    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size),
                       ColorShift(shift_sigma), PCAColor(pca.eigvals, pca.eigvecs, pca_sigma),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(*norm)])


def compare_augmentations(train_images, val_images, train_tfms: dict, eval_tf, lit_tf, epochs: int, lr: float,
                          batch_size: int, width: int, seeds=(0,), device="cpu",
                          channels_last: bool = True, lighting_draws: int = 8,
                          curve_every: int = 1) -> dict[str, dict]:
    """Train the same small CNN (same images) once per training transform and seed, from scratch.

    Each result holds the histories (one per seed) and per-image correctness and log-loss on the clean
    training images, the validation images, and the validation images under a seeded change of lighting
    (the same changed images for every model): `correct` averaged over the seeds, `correct_by_seed` and
    `loss_by_seed` as `[seeds, images]` for the verdicts. Why seeds: one from-scratch run per setting mixes the
    setting's effect with the luck of one initialisation. Each image's lighting part averages
    `lighting_draws` seeded changes (the expected loss and share correct under a random change). Why: with
    one draw, which change an image happened to get adds noise to every paired difference. The views
    without random transforms, and the seeded lighting draws, are computed once and shared by every model and
    epoch. `curve_every`: see `fit_with_clean_train_acc`. `channels_last`: the
    small CNN's convolutions run about 1.4x faster on CPU with that layout (measured at 64 px, batch 32).
    """
    from ..data import DataLoaders, make_loader
    from ..train import Learner
    from ..validate import check_positive_int
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    check_positive_int("lighting_draws", lighting_draws, 8)
    val = list(make_loader(val_images.with_transform(eval_tf), 128, False))
    clean_train = list(make_loader(train_images.with_transform(eval_tf), 128, False))
    lit_views = lighting_views(val_images, lit_tf, lighting_draws, seeds[0] + 1)
    results = {}
    for name, tf in train_tfms.items():
        histories, correct, losses = [], {"train": [], "val": [], "lit": []}, {"train": [], "val": [], "lit": []}
        for seed in seeds:
            torch.manual_seed(seed)
            net = small_cnn(len(train_images.classes), width)
            train = make_loader(train_images.with_transform(tf), batch_size, True, seed=seed)
            learn = Learner(net, DataLoaders(train, val, list(train_images.classes), None), device=device,
                            channels_last=channels_last)
            histories.append(fit_with_clean_train_acc(learn, epochs, lr, clean_train, curve_every,
                                                      schedule=lambda t: 0.5 * (1 + np.cos(np.pi * t / epochs))))
            for part, loader in (("train", clean_train), ("val", val)):
                learn.evaluate(loader)
                correct[part].append(learn.last_correct.cpu().numpy().astype(float))
                losses[part].append(learn.last_losses.cpu().numpy())
            draws = []
            for k in range(lighting_draws):
                learn.evaluate(lit_views(k))
                draws.append((learn.last_correct.cpu().numpy().astype(float), learn.last_losses.cpu().numpy()))
            correct["lit"].append(np.mean([c for c, _ in draws], axis=0))
            losses["lit"].append(np.mean([l for _, l in draws], axis=0))
        results[name] = {"history": mean_history(histories), "histories": histories, "seeds": seeds,
                         "lighting_draws": lighting_draws,
                         "correct": {part: np.mean(rows, axis=0) for part, rows in correct.items()},
                         "correct_by_seed": {part: np.stack(rows) for part, rows in correct.items()},
                         "loss_by_seed": {part: np.stack(rows) for part, rows in losses.items()}}
    return results


def lighting_views(val_images, lit_tf, draws: int, first_seed: int, max_bytes: int = 256 * 2 ** 20):
    """`views(k)`: the validation images under lighting change `k`, drawn with seed `first_seed + k`.

    The same seeds give every model the same changed images. Why kept: drawing them once instead of once
    per model saves each model the transforms; kept only while all draws fit in `max_bytes` (a large
    validation set draws them again for each model, with the same seeds, so the same images).
    """
    from ..data import make_loader

    def draw(k: int) -> list:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(first_seed + k)
            return list(make_loader(val_images.with_transform(lit_tf), 128, False))

    first = draw(0)
    size = sum(x.element_size() * x.nelement() for x, _ in first)
    if size * draws <= max_bytes:
        kept = [first] + [draw(k) for k in range(1, draws)]
        return kept.__getitem__
    return lambda k: first if k == 0 else draw(k)


def mean_history(histories: list) -> "pd.DataFrame":
    """The epoch-by-epoch mean of several runs' histories (same epochs, numeric columns)."""
    import pandas as pd
    return pd.concat(histories).groupby("epoch", as_index=False).mean(numeric_only=True)


def _by_seed(run: dict, key: str = "correct_by_seed") -> dict:
    """`{part: [seeds, images]}` correctness or, with `key="loss_by_seed"`, log-loss (a run without seeds
    counts as one)."""
    if key in run:
        return run[key]
    if key != "correct_by_seed":
        raise KeyError(f"this run has no {key!r}: pass the results of compare_augmentations")
    return {k: np.asarray(v, dtype=float)[None, :] for k, v in run["correct"].items()}


def _over_seeds(run: dict) -> str:
    n = len(run.get("seeds", [0]))
    return f", {n} seeds per setting (the interval resamples seeds and images)" if n > 1 else ""


def _draws(run: dict) -> str:
    k = run.get("lighting_draws", 1)
    return f" (averaged over {k} random changes of each image)" if k > 1 else ""


def verdict_fights_overfitting(plain: dict, augmented: dict):
    """Claim 10: the generalisation gap in log-loss (validation minus clean training) without augmentation
    minus the gap with it; the same gap in accuracy is named beside it.

    Why log-loss: over-fitting shows first as confident mistakes, which the loss of every image counts
    while accuracy, moving in steps of one image of 153, mostly cannot see them.
    """
    from .. import claims
    p, a = _by_seed(plain, "loss_by_seed"), _by_seed(augmented, "loss_by_seed")
    effect, low, high = metrics.bootstrap_sum([(1.0, p["val"] - a["val"]), (-1.0, p["train"] - a["train"])])
    pc, ac = _by_seed(plain), _by_seed(augmented)
    gap = metrics.bootstrap_sum([(1.0, pc["train"] - ac["train"]), (-1.0, pc["val"] - ac["val"])])
    return claims.judge(10, effect, (low, high), p["val"].shape[-1],
                        "the generalisation gap in log-loss (validation minus clean training images) without "
                        f"augmentation minus the gap with it{_over_seeds(plain)}", unit="nats of log-loss",
                        scale=1.0, runs=len(p["val"]), aside=claims.points_aside("the same gap in accuracy", *gap))


def verdict_geometry_helps(geometric: dict, plain: dict):
    """Claim 7: validation log-loss without any augmentation minus with crops, mirrors and rotations."""
    from .. import claims
    return claims.compare_loss(7, _by_seed(geometric, "loss_by_seed")["val"], _by_seed(plain, "loss_by_seed")["val"],
                               "validation log-loss without augmentation minus with crop + mirror + rotation"
                               f"{_over_seeds(plain)}",
                               aside=claims.accuracy_aside(_by_seed(geometric)["val"], _by_seed(plain)["val"]))


def verdict_colour_robustness(coloured: dict, geometric: dict):
    """Claim 8: how much less log-loss colour augmentation adds when the lighting changes (accuracy beside it)."""
    from .. import claims
    c, g = _by_seed(coloured, "loss_by_seed"), _by_seed(geometric, "loss_by_seed")
    cc, gc = _by_seed(coloured), _by_seed(geometric)
    return claims.compare_loss(8, c["lit"] - c["val"], g["lit"] - g["val"],
                               f"log-loss added by a change of lighting{_draws(coloured)} without colour "
                               f"augmentation minus with it (geometry in both){_over_seeds(coloured)}",
                               aside=claims.accuracy_aside(cc["lit"] - cc["val"], gc["lit"] - gc["val"],
                                                           label="accuracy kept under the change"))


def verdict_workers(timings: dict):
    """Claim 9: time per step spent waiting for data with the training process distorting, minus with 2 workers."""
    from .. import claims
    waits = {k: np.diff(np.asarray(t["events"])[:, :2], axis=1)[:, 0] for k, t in timings.items()}
    alone, workers = waits["0 workers"], waits["2 workers"]
    effect, low, high = metrics.bootstrap_sum([(1.0, alone), (-1.0, workers)])
    return claims.judge(9, effect, (low, high), min(len(alone), len(workers)),
                        "data waiting per training step, distortions in the training process minus in 2 workers",
                        unit="ms per step", scale=1000.0)
