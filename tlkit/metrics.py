"""Scores of predictions: accuracy, per-item correctness, negative log-likelihood, the confusion matrix.

One home for them, so every lesson scores a model the same way. Intervals on a score are `tlkit.claims`'.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["accuracy", "correct", "nll", "item_nll", "confusion_matrix", "PROB_FLOOR"]

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
