"""Discriminative learning rates: one optimizer parameter group per layer group."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["default_group_ratio", "differential_lrs", "lrs_for_groups", "param_groups"]


def lrs_for_groups(lr: float | slice | Sequence[float], n_groups: int) -> list[float]:
    """Expand `lr` to one rate per layer group, with fastai's `slice` semantics.

    - a float: every group gets it;
    - `slice(hi)`: the head gets `hi`, every other group `hi / 10`;
    - `slice(lo, hi)`: geometric spread from `lo` (first group) to `hi` (head), endpoints exact;
    - a list/tuple: one value per group.
    """
    if isinstance(lr, slice):
        if lr.step is not None:
            raise ValueError("slice(lo, hi) takes no step")
        lo, hi = lr.start, lr.stop
        if hi is None or hi <= 0 or (lo is not None and lo <= 0):
            raise ValueError(f"learning rates must be positive: {lr}")
        if lo is None:
            return [hi / 10] * (n_groups - 1) + [hi]
        if n_groups == 1:
            return [hi]
        rates = np.geomspace(lo, hi, n_groups).tolist()
        rates[0], rates[-1] = lo, hi
        return rates
    if isinstance(lr, (list, tuple, np.ndarray)):
        if len(lr) != n_groups:
            raise ValueError(f"{len(lr)} learning rates given for {n_groups} layer groups")
        return [float(x) for x in lr]
    return [float(lr)] * n_groups


def differential_lrs(lr: float, ratio: float, n_groups: int) -> slice | float:
    """`slice(lr / ratio**(n-1), lr)`: the head at `lr`, every earlier group `ratio` times lower (ratio 1: `lr`)."""
    return float(lr) if ratio == 1 else slice(lr / ratio ** (n_groups - 1), lr)


def default_group_ratio(dataset) -> float:
    """The notes' rule: earlier groups 10x lower for ImageNet-like photos, 3x for dissimilar data (or unknown)."""
    from .data import REGISTRY
    info = REGISTRY.get(str(dataset))
    return 10.0 if info is not None and info.similar_to_imagenet else 3.0


def param_groups(net, lr: float | slice | Sequence[float]) -> list[dict]:
    """Optimizer parameter groups, one per layer group that has trainable parameters.

    Frozen parameters are left out, so the optimizer never holds state for them.
    """
    groups = net.groups
    rates = lrs_for_groups(lr, len(groups))
    out, seen = [], set()
    for i, (group, rate) in enumerate(zip(groups, rates)):
        params = [p for p in group.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            out.append({"params": params, "lr": rate, "initial_lr": rate, "layer_group": i})
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        out.insert(0, {"params": rest, "lr": rates[0], "initial_lr": rates[0], "layer_group": 0})
    if not out:
        raise ValueError("every parameter is frozen: call tlkit.models.unfreeze(net) or freeze_to(net, n)")
    return out
