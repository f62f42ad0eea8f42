"""Figures for the augmentation lesson: image grids, the RGB cloud with its principal axes, curves, timelines."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .augment import ColorPCA

__all__ = ["plot_image_grid", "plot_image_rows", "plot_rgb_cloud", "plot_eigvals",
           "plot_accuracy_curves", "plot_step_timeline"]


def _show(ax, image: Any) -> None:
    """Draw a PIL image or a [3, H, W] tensor without axes."""
    if torch.is_tensor(image):
        image = image.detach().cpu().permute(1, 2, 0).float().numpy()
    ax.imshow(np.asarray(image))
    ax.set_axis_off()


def plot_image_grid(images: Sequence[Any], ncols: int = 8, size: float = 1.6, title: str | None = None):
    """A grid of images (e.g. N random draws of one augmentation)."""
    nrows = max(1, -(-len(images) // ncols))
    ncols = min(ncols, max(1, len(images)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image in zip(axes.flat, images):
        _show(ax, image)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_image_rows(rows: Mapping[str, Sequence[Any]], size: float = 1.5, col_titles: Sequence[str] | None = None):
    """One labelled row of images per entry (e.g. one row per augmentation)."""
    ncols = max(len(r) for r in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols + 1.2, size * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(images):
                _show(ax, images[c])
        axes[r, 0].text(-0.08, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center")
    for c, t in enumerate(col_titles or []):
        axes[0, c].set_title(t, fontsize=9)
    fig.tight_layout()
    return fig


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
