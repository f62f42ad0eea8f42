"""Loss along random filter-normalised weight directions, and a one-number sharpness (Li et al., 2018).

Why filter-normalised: a ReLU net scaled filter-wise computes the same function, so a raw random step means
different things for nets with different weight scales. Rescaling every filter of the direction to the norm of
the matching weight filter makes "radius 0.5" mean "half of each filter's size" for any net, so curves of two
solutions can be compared.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["trainable_params", "filter_normalized_direction", "evaluate_loss", "loss_along_direction",
           "loss_curves", "sharpness", "plot_loss_curves"]


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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        total += loss_fn(out.float() if out.dtype in (torch.float16, torch.bfloat16) else out, y).item() * len(y)
        count += len(y)
    model.train(was_training)
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
