"""Lesson 06 (notebooks/06_tta_ensembles.ipynb): what test-time augmentation and ensembles buy, and at what cost.

The techniques are the core's (`tlkit.tta`, `tlkit.ensembles`); here are the lesson's tables, plots, member
training and the verdicts on claims 20-22.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import claims, fit_cache
from .. import metrics
from ..env import seed_everything
from ..ensembles import average_weights, interpolate_weights, member_logits
from ..errors import ParameterError
from ..validate import check_positive_int, check_unit_interval
from ..tta import MERGES, TEN_CROP_SUBSETS, blend, merge, model_device, tta_logits

__all__ = ["accuracy_vs_members", "cost_sentence", "cost_vs_members", "cross_fitted_logits", "every_image",
           "fit_seeds", "fixed_and_broken", "fold_heads", "interpolation_curve", "outputs_vs_weights", "own_head_gap",
           "part_sentence", "plot_accuracy_vs_cost", "plot_accuracy_vs_members", "plot_interpolation", "tensor_loaders",
           "train_heads", "tta_table", "verdict_ensemble_gain", "verdict_outputs_vs_weights", "verdict_tta"]


def tta_table(ten_logits: torch.Tensor, targets: torch.Tensor, aug_logits: torch.Tensor | None = None,
              beta: float = 0.25, hows: Sequence[str] = MERGES) -> pd.DataFrame:
    """Accuracy and log-loss of every crop TTA (a subset of the ten-crop views) and merge rule.

    `aug_logits` (`[N, 1 + n, K]`, plain view first) adds the fastai-style augmentation TTA rows.
    """
    check_unit_interval("beta", beta, 0.25)
    unknown = [how for how in hows if how not in MERGES]
    if unknown:
        raise ParameterError(f"hows={hows!r}: {unknown} not in {MERGES}, e.g. hows={MERGES!r}.")
    rows = []

    def add(name, views, probs):
        nll = metrics.nll(probs, targets)
        rows.append({"tta": name, "views": views, "merge": how, "acc": metrics.accuracy(probs, targets), "loss": nll})

    for how in hows:
        for name, idx in TEN_CROP_SUBSETS.items():
            add(name, len(idx), merge(ten_logits[:, idx], how))
        if aug_logits is not None:
            n = aug_logits.shape[1] - 1
            add(f"aug x{n} (beta={beta:g})", n + 1,
                blend(aug_logits[:, 0].softmax(-1), merge(aug_logits[:, 1:], how), beta))
    return pd.DataFrame(rows)


def fixed_and_broken(plain_probs: torch.Tensor, tta_probs: torch.Tensor,
                     targets: torch.Tensor) -> tuple[list[int], list[int]]:
    """Indices TTA fixes (plain wrong, TTA right) and breaks (plain right, TTA wrong)."""
    plain_ok = plain_probs.argmax(-1) == targets
    tta_ok = tta_probs.argmax(-1) == targets
    return (torch.nonzero(~plain_ok & tta_ok).flatten().tolist(),
            torch.nonzero(plain_ok & ~tta_ok).flatten().tolist())


def cost_sentence(name: str, cost: dict, notes_say: str) -> str:
    """Markdown: a measured cost ratio with its interval next to what the notes say."""
    return (f"*Cost:* {name} took **{cost['ratio']:.1f}x** the time of one plain prediction (95 % interval "
            f"{cost['low']:.1f} to {cost['high']:.1f}, {cost.get('n') or len(cost['slow_s'])} timings of each). "
            f"The notes say: {notes_say}")


def verdict_tta(claim_id: int, plain_probs: torch.Tensor, tta_probs: torch.Tensor, targets: torch.Tensor,
                what: str, seed: int = 0):
    """Verdict on 'TTA predicts better than the plain prediction': the log-loss it saves, paired over the images.

    Why the loss: TTA flips a few per cent of the images, so accuracy resolves its "little" help only with
    many more images; the per-image loss shows it on every image. The accuracy difference, with its interval,
    is named in `what`.
    """
    return claims.compare_predictions(claim_id, tta_probs, plain_probs, targets, what, seed=seed)


def plot_accuracy_vs_cost(table: pd.DataFrame, x: str = "ms_per_image", y: str = "acc", label: str = "method",
                          ax=None):
    """Accuracy against measured inference cost (log scale), one marker per method, named in the legend."""
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 4))
    markers = "osD^v<>pPX*h"
    for i, (_, row) in enumerate(table.iterrows()):
        ax.scatter(row[x], row[y], s=60, marker=markers[i % len(markers)], label=str(row[label]))
    ax.set_xscale("log")
    ax.set(xlabel="inference time per image (ms, log scale)", ylabel="validation accuracy",
           title="what the extra accuracy costs")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.figure.tight_layout()
    return ax


def accuracy_vs_members(logits: torch.Tensor, targets: torch.Tensor, how: str = "prob") -> pd.DataFrame:
    """Accuracy and log-loss of the ensemble of the first m members, m = 1..M, next to the members' means."""
    singles = [l.softmax(-1) for l in logits]
    rows = []
    for m in range(1, len(logits) + 1):
        probs = merge(logits[:m], how, dim=0)
        rows.append({"members": m, "acc": metrics.accuracy(probs, targets), "loss": metrics.nll(probs, targets),
                     "single_acc_mean": sum(metrics.accuracy(p, targets) for p in singles[:m]) / m,
                     "single_loss_mean": sum(metrics.nll(p, targets) for p in singles[:m]) / m})
    return pd.DataFrame(rows)


def plot_accuracy_vs_members(tables: Mapping[str, pd.DataFrame], axes=None):
    """Accuracy and log-loss of the ensemble of the first m members against m, one colour per kind of member.

    Why the loss too: on a small validation set accuracy moves in steps of one image, while the
    log-loss shows the averaged probabilities improving steadily.
    """
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
    single = [metrics.accuracy(l.softmax(-1), targets) for l in logits[:-1]]
    return {"members": len(models), "member_acc_mean": sum(single) / len(single), "member_acc_min": min(single),
            "member_acc_max": max(single), "output_avg_acc": metrics.accuracy(merge(logits[:-1], "prob", dim=0), targets),
            "weight_avg_acc": metrics.accuracy(logits[-1].softmax(-1), targets)}


def plot_interpolation(curves: Mapping[str, pd.DataFrame], ax=None):
    """Accuracy along the straight line between two networks' weights, one line per pair."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    for name, curve in curves.items():
        ax.plot(curve["alpha"], curve["value"], "o-", label=name)
    ax.set(xlabel="alpha: weights (1 - alpha) * A + alpha * B", ylabel="validation accuracy",
           title="interpolating between two networks' weights", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


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
    from ..features import head_learner
    from ..models import new_head

    num_classes = len(train_fs.classes) or int(max(train_fs.y.max(), val_fs.y.max())) + 1

    def make(seed):
        torch.manual_seed(seed if init_seed is None else init_seed)
        head = new_head(train_fs.feature_dim, num_classes, hidden, dropout)
        torch.manual_seed(seed)
        return head_learner(head, train_fs, val_fs, batch_size, seed, wd=wd, device="cpu", progress=False)

    return fit_seeds(make, seeds, epochs, lr, **fit_kwargs)


def every_image(splits, image_size: int):
    """Every training and validation image of `splits`, training first, decoded once at the evaluation resize.

    The decode is `data.in_memory`'s, the entries `features.precompute_splits` builds at this size, so the
    pixels are those the heads' features came from, read back from the course-wide cache.
    """
    from ..data import Splits, eval_resize, in_memory
    short_side = eval_resize(image_size)
    return Splits(in_memory(splits.train, short_side), in_memory(splits.val, short_side), splits.classes).pooled()


def fold_heads(centre_features, folds: int = 5, seed: int = 0, epochs: int = 10,
               lr: float = 1e-3) -> tuple[list[nn.Module], torch.Tensor]:
    """Heads of a stratified k-fold cross-fit, each trained on the other folds' features, and each image's fold.

    `centre_features` is a `features.FeatureSet` of every image's plain view. Why: TTA's gain per image is
    small against its spread from image to image, so its verdict needs every image the run has, not only a
    validation split, and no image may be judged by a head trained on it. Fewer folds than asked are used
    (and said) when a class has fewer images than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    from ..features import FeatureSet
    x, y = centre_features.tensors
    counts = torch.bincount(y)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        raise ParameterError("cross-fitting needs at least 2 images of every class; a class here has 1: "
                             "add images to it or remove its folder.")
    asked = check_positive_int("folds", folds, 5)
    if asked < 2:
        raise ParameterError(f"folds={asked}: cross-fitting needs at least 2 folds, e.g. folds=5.")
    folds = min(asked, smallest)
    if folds < asked:
        print(f"tlkit: cross-fitting with {folds} folds, not {asked}: the smallest class has {smallest} images")
    classes = centre_features.classes
    heads, fold = [], torch.empty(len(y), dtype=torch.long)
    split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y.numpy())
    for k, (fit_idx, held_idx) in enumerate(split):
        fold[held_idx] = k
        heads += train_heads(FeatureSet(x[fit_idx], y[fit_idx], classes=classes),
                             FeatureSet(x[held_idx], y[held_idx], classes=classes), seeds=[seed], epochs=epochs, lr=lr)
    return [h.eval() for h in heads], fold


class _EveryHead(nn.Module):
    """The body once, then every head: `[B, heads, K]`."""

    def __init__(self, body: nn.Module, heads: Sequence[nn.Module]):
        super().__init__()
        self.body, self.heads = body, nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        return torch.stack([h(features) for h in self.heads], 1)


def cross_fitted_logits(body: nn.Module, heads: Sequence[nn.Module], fold: torch.Tensor, images, transform: Callable,
                        device=None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `[N, V, K]` of every view of each image from its own fold's head (which never saw it), and targets.

    Every view goes through the body once, for all heads together, and only logits are kept: memory grows
    with images x views x heads x classes, not with the body's feature size. The body and heads run on
    `device` (default: the body's) and are put back where they were afterwards.
    """
    model = _EveryHead(body, heads)
    homes = [model_device(m) for m in (body, *heads)]
    try:
        model.to(device or homes[0], memory_format=torch.channels_last)   # as `tta_logits` leaves it, read back or not
        stacked, targets = fit_cache.computed(
            "cross_fitted_logits", {"model": model, "images": images, "transform": transform},
            lambda: tta_logits(model, images, transform, progress=progress))
    finally:
        for m, home in zip((body, *heads), homes):
            m.to(home)
    n, views = stacked.shape[:2]
    stacked = stacked.view(n, views, len(heads), -1)
    own = fold.view(n, 1, 1, 1).expand(n, views, 1, stacked.shape[-1])
    return stacked.gather(2, own).squeeze(2), targets


def own_head_gap(heads: Sequence[nn.Module], fold: torch.Tensor, centre_features, centre_logits: torch.Tensor) -> float:
    """Largest |own fold's head on an image's plain-view features - its cross-fitted centre-view logits|.

    About 0 (float rounding) when every image took its own fold's head on the same pixels: the run records it.
    """
    x = centre_features.tensors[0]
    own = torch.empty_like(centre_logits)
    with torch.no_grad():
        for k, head in enumerate(heads):
            held = fold == k
            own[held] = head(x[held].to(model_device(head))).cpu()
    return float((own - centre_logits).abs().max())


def tensor_loaders(splits, transform: Callable, batch_size: int = 64, seed: int | None = None):
    """Loaders over images transformed once and kept in memory (small images only, e.g. `digits`).

    Why: decoding and transforming a few thousand tiny images every epoch costs more than the network.
    """
    from torch.utils.data import TensorDataset

    from ..data import DataLoaders, make_loader

    def stack(images):
        return TensorDataset(torch.stack([transform(images.image(i)) for i in range(len(images))]),
                             torch.tensor(images.targets))

    return DataLoaders(make_loader(stack(splits.train), batch_size, True, seed=seed),
                          make_loader(stack(splits.val), 2 * batch_size, False), list(splits.classes))


def verdict_ensemble_gain(logits: torch.Tensor, targets: torch.Tensor, what: str = ""):
    """Claim 20: the output average of all M members minus a single member, paired over the images.

    Per image: correct(ensemble) minus the share of members that are right, i.e. the gain over a
    member picked at random; the interval is a bootstrap over images.
    """
    ensemble = (merge(logits, "prob", dim=0).argmax(-1) == targets).float().numpy()
    diff = ensemble - metrics.correct(logits, targets).mean(0)
    effect, low, high = metrics.bootstrap_sum([(1.0, diff)])
    return claims.judge(20, effect, (low, high), len(diff),
                        what or f"the average of {len(logits)} members' probabilities minus a single member, "
                                "validation accuracy")


def verdict_outputs_vs_weights(logits: torch.Tensor, weight_avg_logits: torch.Tensor, targets: torch.Tensor,
                               what: str = ""):
    """Claim 20's 'outputs, not weights': the members' output average minus their weight average, per image."""
    outputs = (merge(logits, "prob", dim=0).argmax(-1) == targets).float().numpy()
    weights = (weight_avg_logits.argmax(-1) == targets).float().numpy()
    return claims.compare_accuracy(20, outputs, weights,
                                   what or f"the average of {len(logits)} members' outputs minus the network with "
                                           "their averaged weights, validation accuracy")


def cost_vs_members(models: Sequence[nn.Module], batch: torch.Tensor, repeats: int = 5) -> pd.DataFrame:
    """Measured cost of the output average of the first m members against one member, m = 1..M, with intervals."""
    from ..tta import cost_ratio
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
