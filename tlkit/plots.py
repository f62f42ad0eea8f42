"""Figures every lesson uses: training curves, labelled image grids, confusion matrices."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from PIL import Image

from .metrics import confusion_matrix

__all__ = ["SHOWN_SIDE", "bar_table", "plot_confusion_matrix", "plot_history", "plot_image_rows", "show_images"]


def plot_history(history: pd.DataFrame, title: str | None = None, axes=None):
    """Loss and accuracy per epoch, training vs validation, side by side."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    ax_loss, ax_acc = axes
    x = np.arange(1, len(history) + 1)
    ax_loss.plot(x, history["train_loss"], "o-", label="train")
    ax_loss.plot(x, history["val_loss"], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(x, history["train_acc"], "o-", label="train")
    ax_acc.plot(x, history["val_acc"], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        ax_loss.figure.suptitle(title)
    ax_loss.figure.tight_layout()
    return axes


SHOWN_SIDE = 512   # longest side of a drawn photo: far more pixels than a grid cell shows


def _as_array(img) -> np.ndarray:
    """An image as an array for `imshow`; PIL photos larger than `SHOWN_SIDE` are shrunk first.

    Why: matplotlib resamples every pixel it is given; eight 12-megapixel photos cost it 860 MB and 10 s.
    """
    if isinstance(img, Image.Image) and max(img.size) > SHOWN_SIDE:
        img = img.copy()
        img.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu().float()
        if t.dim() == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        if t.max() > 1.5:  # uint8-range values
            t = t / 255
        return t.clamp(0, 1).squeeze().numpy()
    return np.asarray(img)


def show_images(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.8,
                title_colors: Sequence[str] | None = None, suptitle: str | None = None):
    """A grid of PIL images / HWC arrays / CHW tensors in [0, 1], with optional titles."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        _draw(ax, images[i])
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8,
                         color=title_colors[i] if title_colors is not None else "black")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _draw(ax, image) -> None:
    arr = _as_array(image)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None)
    ax.set_axis_off()


def plot_image_rows(rows: Mapping[str, Sequence[Any]], size: float = 1.5, col_titles: Sequence[str] | None = None):
    """One labelled row of images per entry (e.g. one row per augmentation)."""
    ncols = max(len(r) for r in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols + 1.2, size * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(images):
                _draw(ax, images[c])
        axes[r, 0].text(-0.08, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center")
    for c, t in enumerate(col_titles or []):
        axes[0, c].set_title(t, fontsize=9)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(targets, preds, classes: Sequence[str], normalize: bool = False, ax=None):
    """Seaborn heatmap of the confusion matrix (rows: actual, columns: predicted)."""
    import seaborn as sns
    cm = confusion_matrix(targets, preds, len(classes))
    shown = cm / cm.sum(1, keepdims=True).clip(min=1) if normalize else cm
    if ax is None:
        side = max(3.5, 0.5 * len(classes) + 1.5)
        _, ax = plt.subplots(figsize=(side, side * 0.85))
    sns.heatmap(shown, annot=True, fmt=".2f" if normalize else "d", cmap="Blues", cbar=False,
                xticklabels=classes, yticklabels=classes, ax=ax)
    ax.set(xlabel="predicted", ylabel="actual", title="confusion matrix")
    return cm


def bar_table(df: pd.DataFrame, x: str, y: str, hue: str | None = None, ax=None, ylim=None, title=None):
    """A seaborn bar chart of one column of a results table, values written on the bars."""
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5, 0.9 * len(df)), 3.4))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    ax.tick_params(axis="x", rotation=20)
    return ax
