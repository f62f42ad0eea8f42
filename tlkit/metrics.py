"""Scores of predictions and their uncertainty: accuracy, per-item correctness, negative log-likelihood,
the confusion matrix, and the intervals on them (paired bootstrap, exact binomial, Student t, ratio).

One home for them, so every lesson scores a model the same way; `tlkit.claims` turns an interval into
a verdict.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["accuracy", "correct", "nll", "item_nll", "confusion_matrix", "PROB_FLOOR", "bootstrap_sum",
           "mean_interval", "paired_bootstrap", "proportion_interval", "ratio_interval", "LEVEL"]

LEVEL = 0.95          # every interval is a 95 % interval
PROB_FLOOR = 1e-12   # log(0) guard: a probability of exactly 0 would make one item's loss infinite


def correct(probs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Per-item correctness (1.0 / 0.0) of scores `[..., N, K]` (probabilities or logits) against `targets` `[N]`."""
    return (torch.as_tensor(probs).argmax(-1) == torch.as_tensor(targets)).float().numpy()


def accuracy(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of items whose highest-scoring class is the target."""
    return float((torch.as_tensor(probs).argmax(-1) == torch.as_tensor(targets)).float().mean())


def item_nll(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-item negative log-likelihood `-log p(target)` of probabilities `[N, K]`."""
    probs, targets = torch.as_tensor(probs).float(), torch.as_tensor(targets).long()
    return F.nll_loss(probs.clamp_min(PROB_FLOOR).log(), targets, reduction="none")


def nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood (cross-entropy) of probabilities `[N, K]`: what `sklearn.metrics.log_loss` reports."""
    return float(item_nll(probs, targets).mean())


def confusion_matrix(targets, preds, n_classes: int) -> np.ndarray:
    """Counts `[actual, predicted]` over `n_classes` classes (scikit-learn's, with every class listed)."""
    from sklearn.metrics import confusion_matrix as sk_confusion
    return sk_confusion(np.asarray(targets), np.asarray(preds), labels=list(range(n_classes)))


def bootstrap_sum(parts: Sequence[tuple[float, Sequence]], n_boot: int = 4000, seed: int = 0,
                  level: float = LEVEL) -> tuple[float, float, float]:
    """sum_k w_k * mean(x_k) with a percentile bootstrap interval, each x_k resampled on its own.

    Each x_k holds one number per image (e.g. correct_a - correct_b on the same images, which keeps
    the pairing); independent sets of images (training and validation) are resampled independently.
    A part may also be `[runs, images]`, one row per training seed. Then every draw resamples the
    runs as well as the images, with one draw of the runs shared by all parts that have as many rows
    (they are the same runs). Why: an interval over images alone says nothing about what another
    training run would give, and a verdict that a second seed overturns was never settled.
    """
    rng = np.random.default_rng(seed)
    effect, draws, run_draws = 0.0, np.zeros(n_boot), {}
    for weight, values in parts:
        x = np.asarray(values, dtype=float)
        if x.ndim not in (1, 2) or x.shape[-1] < 2 or x.size == 0:
            raise ValueError(f"need per-image values [images] or [runs, images] with at least two images, "
                             f"got shape {x.shape}")
        effect += weight * x.mean()
        if x.ndim == 1:
            draws += weight * x[rng.integers(0, len(x), (n_boot, len(x)))].mean(axis=1)
            continue
        runs, n = x.shape
        if runs not in run_draws:
            run_draws[runs] = rng.multinomial(runs, np.full(runs, 1 / runs), size=n_boot) / runs
        image_w = rng.multinomial(n, np.full(n, 1 / n), size=n_boot) / n
        draws += weight * np.einsum("br,rn,bn->b", run_draws[runs], x, image_w)
    tail = (1 - level) / 2
    return float(effect), float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))


def paired_bootstrap(correct_a: Sequence, correct_b: Sequence, n_boot: int = 4000, seed: int = 0,
                     level: float = LEVEL) -> tuple[float, float, float]:
    """Accuracy of A minus accuracy of B on the same images, with a percentile bootstrap interval over images.

    Why paired: both models saw the same images, so resampling images keeps the images' shared
    difficulty and gives a much narrower (and honest) interval than two separate ones. With
    `[runs, images]` (row i of A and of B from the same seed) the runs are resampled too.
    """
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim not in (1, 2):
        raise ValueError(f"need two equal-shape arrays of per-image correctness ([images] or [runs, images]), "
                         f"got {a.shape} and {b.shape}")
    return bootstrap_sum([(1.0, a - b)], n_boot, seed, level)


def proportion_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float, float]:
    """A share with its Clopper-Pearson (exact binomial) interval."""
    from scipy import stats
    if not 0 <= successes <= n or n < 1:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    tail = (1 - level) / 2
    low = stats.beta.ppf(tail, successes, n - successes + 1) if successes else 0.0
    high = stats.beta.ppf(1 - tail, successes + 1, n - successes) if successes < n else 1.0
    return successes / n, float(low), float(high)


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of repeated measurements (e.g. one per seed) with a Student-t interval."""
    from scipy import stats
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"need at least two repeats, got {len(v)}")
    half = stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def ratio_interval(slow: Sequence[float], fast: Sequence[float], n_boot: int = 4000, seed: int = 0,
                   level: float = LEVEL) -> tuple[float, float, float]:
    """mean(slow) / mean(fast) with a bootstrap interval over the repeated timings of each."""
    s, f = np.asarray(slow, dtype=float), np.asarray(fast, dtype=float)
    if len(s) < 2 or len(f) < 2:
        raise ValueError("need at least two timings of each")
    rng = np.random.default_rng(seed)
    ratios = (s[rng.integers(0, len(s), (n_boot, len(s)))].mean(1)
              / f[rng.integers(0, len(f), (n_boot, len(f)))].mean(1))
    tail = (1 - level) / 2
    return float(s.mean() / f.mean()), float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))
