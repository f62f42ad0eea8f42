"""The full recipe (lesson 08): every step of the notes, run by calling tlkit, with the accuracy after each step.

The steps, in the notes' order: explore the data; precompute activations (augmentation on, but it has no
effect on cached features); find the LR; train the last layer on the precomputed activations; train it with
augmentation using SGDR with `cycle_len=1`; unfreeze with earlier groups 3-10x lower; find the LR again;
train the whole network with `cycle_mult=2`; look at the results; retrain on training + validation data.
`Recipe` runs one step per method call (one notebook section each) and remembers the settings it chose,
so `retrain_on_all` can replay them; `fine_tune` runs them all. No new training loop: every fit is a
`tlkit.Learner.fit`.
"""
from __future__ import annotations


import math
import os
import textwrap
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import data, features, models, schedules, tta
from .augment import augmented_transform
from .env import seed_everything
from .lr_finder import LRFinderResult, lr_find
from .optim import default_group_ratio, differential_lrs, lrs_for_groups
from .storage import atomic_save
from .train import Learner

__all__ = ["STEP_NAMES", "Recipe", "fine_tune", "pick_lr", "plot_lr_sweep", "most_confused", "top_losses",
           "per_class_accuracy", "show_top_losses", "waterfall_table", "plot_waterfall", "image_size_table", "ModelBundle", "save_model", "load_model",
           "predict_files"]

STEP_NAMES = {"head": "pretrained head only", "augment": "+ augmentation (SGDR, cycle_len=1)",
              "unfreeze": "+ unfreeze, differential LRs (cycle_mult=2)", "tta": "+ TTA"}
MODEL_FORMAT = 1


# ---------------------------------------------------------------- choosing learning rates

def pick_lr(result: LRFinderResult, rule: str = "valley", fallback: float = 1e-3,
            floor: float | None = None, ceiling: float | None = None) -> float:
    """The LR a rule suggests (else min10's, else `fallback`), kept within [`floor`, `ceiling`].

    Why the bounds: the second sweep runs on a trained network whose loss is already low and noisy,
    so its suggestion can land anywhere on the flat part of the curve; fine-tuning wants a rate a
    few times below the head's, and never above it.
    """
    lr = result.lr(rule) or result.lr("min10") or fallback
    lr = max(lr, floor) if floor else lr
    return float(min(lr, ceiling) if ceiling else lr)


def plot_lr_sweep(result: LRFinderResult, title: str | None = None, ax=None):
    """`result.plot()` with the y axis spanning the whole smoothed curve.

    Why: `plot_lr_find` caps the axis at 1.5x the first loss, which hides the curve of a trained
    network (it starts low, so the cap sits below most of it).
    """
    ax = result.plot(ax=ax, title=title)
    stop = len(result.smoothed) - result.skip_end if result.skip_end else len(result.smoothed)
    curve = result.smoothed[result.skip_start:stop]
    curve = curve[np.isfinite(curve)]
    if len(curve):
        pad = 0.05 * (curve.max() - curve.min()) or 0.05 * abs(curve.max()) or 0.01
        ax.set_ylim(curve.min() - pad, curve.max() + pad)
    return ax


# ---------------------------------------------------------------- the recipe

@dataclass
class StepResult:
    """Validation accuracy after one recipe step, what it cost and the settings it used."""

    step: str
    acc: float
    seconds: float
    settings: dict = field(default_factory=dict)


def _cap(images, count: int | None, seed: int):
    """A stratified subset of at most `count` items of an ImageList or FeatureSet (all when `count` is None or larger).

    Both choose rows with `data.stratified_indices`, so images and their features stay aligned.
    """
    return images if count is None or count >= len(images) else images.subset(int(count), seed)


def _concat(a: data.ImageList, b: data.ImageList) -> data.ImageList:
    """Two image lists with the same classes as one."""
    return data.ImageList(a.items + b.items, a.targets + b.targets, a.classes, a.transform, a.decode_size)


class Recipe:
    """The notes' recipe on one dataset, one step per method; `steps` holds the accuracy after each."""

    def __init__(self, dataset="hymenoptera", backbone: str = "efficientnet_lite0", image_size: int = 128,
                 batch_size: int = 32, seed: int = 0, device: torch.device | str = "cpu",
                 max_train: int | None = None, max_val: int | None = None, val_fraction: float = 0.2,
                 splits: data.Splits | None = None, train_tfm=None, cache_dir: str | os.PathLike | None = None,
                 progress: bool | None = None):
        seed_everything(seed)
        self.dataset, self.seed, self.device = dataset, seed, torch.device(device)
        self.image_size, self.batch_size, self.progress = image_size, batch_size, progress
        full = splits or data.get_splits(dataset, seed=seed, val_fraction=val_fraction, image_size=image_size)
        self.splits = replace(full, train=_cap(full.train, max_train, seed),
                                          val=_cap(full.val, max_val, seed))
        self.classes = list(self.splits.classes)
        self.net = models.create(backbone, len(self.classes)).to(self.device)
        self.body_id = self.net.weights_id()   # the pretrained body the features come from
        # fastai's 2017 transforms zoomed at most 1.1x: crops much smaller than half the image lose the object
        self.train_tfm = train_tfm or augmented_transform(image_size, self.net.norm, crop_scale=(0.5, 1.0))
        self.dls = data.dataloaders(self.splits, image_size, self.net.norm, batch_size,
                                    train_tfm=self.train_tfm, seed=seed)
        self.learn = Learner(self.net, self.dls, device=self.device, progress=progress)
        self.cache_dir = cache_dir
        self.train_fs = self.val_fs = None
        self.head_learn: Learner | None = None
        self.ratios: list[float] | None = None
        self.steps: list[StepResult] = []
        self.plan: list[tuple[str, dict]] = []   # the training calls, replayed by `retrain_on_all`

    # ------------------------------------------------------------ what the steps share

    @property
    def preprocessing(self) -> dict:
        """What a saved model needs to see images as it was trained to: size, crop and normalisation."""
        return {"image_size": self.image_size, "crop_pct": data.CROP_FRACTION,
                "norm": [list(self.net.norm[0]), list(self.net.norm[1])]}

    @property
    def acc_after_step(self) -> list[dict]:
        """[{"step": name, "acc": validation accuracy}, ...] in the order the steps ran."""
        return [{"step": s.step, "acc": s.acc} for s in self.steps]

    def _record_step(self, key: str, acc: float, start: float, **settings) -> float:
        self.steps = [s for s in self.steps if s.step != STEP_NAMES[key]]  # a rerun step replaces itself
        self.steps.append(StepResult(STEP_NAMES[key], float(acc), time.perf_counter() - start, settings))
        return float(acc)

    def step_table(self) -> pd.DataFrame:
        """One row per step: accuracy, seconds, settings."""
        return pd.DataFrame([{"step": s.step, "acc": s.acc, "seconds": round(s.seconds, 1),
                              **{k: (f"{v:.2g}" if isinstance(v, float) else v) for k, v in s.settings.items()}}
                             for s in self.steps])

    # ------------------------------------------------------------ 1. explore

    def explore(self) -> pd.DataFrame:
        """Images per class in training and validation, with the share of each class."""
        table = pd.DataFrame({"train": self.splits.train.class_counts(), "val": self.splits.val.class_counts()})
        table["train_share"] = (table["train"] / table["train"].sum()).round(3)
        return table

    # ------------------------------------------------------------ 2. precompute

    def precompute(self, features_pair: tuple | None = None) -> tuple[features.FeatureSet, features.FeatureSet]:
        """Backbone activations of the training and validation images (eval transform), cached on disk.

        Augmentation is switched on in `dls`, but cached features hold one fixed view of each image:
        while we train on them, augmentation does nothing (the notes' "precompute=True").
        """
        if features_pair is not None:
            self.train_fs, self.val_fs = features_pair
            return features_pair
        decode = data.decode_size(self.image_size)
        tfm = data.eval_transform(self.image_size, self.net.norm)
        kw = dict(cache_dir=self.cache_dir, batch_size=2 * self.batch_size, progress=self.progress)
        self.train_fs = features.precompute(self.net, self.splits.train.with_transform(tfm, decode), **kw)
        self.val_fs = features.precompute(self.net, self.splits.val.with_transform(tfm, decode), **kw)
        return self.train_fs, self.val_fs

    def _head_learner(self) -> Learner:
        if self.train_fs is None:
            self.precompute()
        if self.head_learn is None:
            self.head_learn = features.head_learner(self.net, self.train_fs, self.val_fs, self.batch_size,
                                                    seed=self.seed, progress=self.progress)
        return self.head_learn

    # ------------------------------------------------------------ 3-4. the last layer

    def find_head_lr(self, num_it: int = 100, start_lr: float = 1e-6, end_lr: float = 10.0,
                     **kwargs) -> LRFinderResult:
        """LR range test of the head on precomputed activations (seconds, however many iterations)."""
        return lr_find(self._head_learner(), num_it=num_it, start_lr=start_lr, end_lr=end_lr, warn=False,
                       **kwargs)

    def train_head(self, epochs: int, lr: float) -> float:
        """Train the new last layer on the precomputed activations; returns validation accuracy."""
        start = time.perf_counter()
        models.freeze(self.net)
        hist = self._head_learner().fit(epochs, lr)
        self.plan.append(("train_head", {"epochs": epochs, "lr": lr}))
        return self._record_step("head", hist["val_acc"].iloc[-1], start, epochs=epochs, lr=lr)

    def train_head_augmented(self, n_cycles: int, lr: float, cycle_len: float = 1) -> float:
        """Train the head with the backbone in the loop, so every epoch sees new augmented views (SGDR)."""
        start = time.perf_counter()
        models.freeze(self.net)
        schedule = schedules.sgdr(n_cycles, cycle_len)
        hist = self.learn.fit(math.ceil(schedule.total_epochs), lr, schedule=schedule)
        self.plan.append(("train_head_augmented", {"n_cycles": n_cycles, "lr": lr, "cycle_len": cycle_len}))
        return self._record_step("augment", hist["val_acc"].iloc[-1], start, n_cycles=n_cycles,
                                 cycle_len=cycle_len, lr=lr)

    # ------------------------------------------------------------ 5-7. the whole network

    def unfreeze(self, ratio: float | None = None, bn_freeze: bool = True) -> list[float]:
        """Make every layer trainable (BatchNorm statistics stay fixed with `bn_freeze`); returns each group's
        LR relative to the head's (earliest first)."""
        ratio = default_group_ratio(self.dataset) if ratio is None else ratio
        models.unfreeze(self.net)
        if bn_freeze:
            models.freeze_batchnorm(self.net)
        n = len(self.net.groups)
        self.ratios = lrs_for_groups(differential_lrs(1.0, ratio, n), n)
        self.plan.append(("unfreeze", {"ratio": ratio, "bn_freeze": bn_freeze}))
        return self.ratios

    def find_lr(self, num_it: int = 100, start_lr: float = 1e-7, end_lr: float = 1.0, diverge: float = 10.0,
                **kwargs) -> LRFinderResult:
        """LR range test of the unfrozen network, the groups' LRs kept in the chosen ratios.

        `diverge=10` (not 4): the trained network starts from a low, noisy loss, where 4x the best
        smoothed loss is reached by noise alone.
        """
        if self.ratios is None:
            self.unfreeze()
        return lr_find(self.learn, num_it=num_it, start_lr=start_lr, end_lr=end_lr, group_lrs=self.ratios,
                       diverge=diverge, warn=False, **kwargs)

    def train_all(self, n_cycles: int, lr: float, cycle_len: float = 1, cycle_mult: float = 2) -> float:
        """Fine-tune every layer with differential LRs (`lr` is the head's) and SGDR with `cycle_mult`."""
        start = time.perf_counter()
        if self.ratios is None:
            self.unfreeze()
        schedule = schedules.sgdr(n_cycles, cycle_len, cycle_mult)
        lrs = [lr * r for r in self.ratios]
        hist = self.learn.fit(math.ceil(schedule.total_epochs), lrs, schedule=schedule)
        self.plan.append(("train_all", {"n_cycles": n_cycles, "lr": lr, "cycle_len": cycle_len,
                                        "cycle_mult": cycle_mult}))
        return self._record_step("unfreeze", hist["val_acc"].iloc[-1], start, n_cycles=n_cycles,
                                 cycle_len=cycle_len, cycle_mult=cycle_mult, lr=lr)

    # ------------------------------------------------------------ 8. TTA and the results

    def tta_probs(self, mode: str = "flip", n_aug: int = 4, beta: float = 0.25,
                  images: data.ImageList | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged probabilities over test-time views: crop views ("flip", "five", "ten") or "aug"."""
        images = self.splits.val if images is None else images
        norm = self.net.norm
        if mode == "aug":
            logits, y = tta.tta_logits(self.net, images, tta.aug_transform(self.image_size, norm, n_aug,
                                                                           augment=self.train_tfm),
                                       batch_size=self.batch_size)
            return tta.blend(logits[:, 0].softmax(-1), tta.merge(logits[:, 1:]), beta), y
        logits, y = tta.tta_logits(self.net, images, tta.view_transform(self.image_size, norm, mode),
                                   batch_size=self.batch_size)
        return tta.merge(logits), y

    def tta(self, mode: str = "flip", **kwargs) -> float:
        """Validation accuracy with test-time augmentation (recorded as the last step)."""
        start = time.perf_counter()
        probs, y = self.tta_probs(mode, **kwargs)
        return self._record_step("tta", tta.accuracy(probs, y), start, mode=mode)

    def predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation probabilities `[N, K]` and targets `[N]` of the current network (no TTA)."""
        return self.learn.get_preds()

    # ------------------------------------------------------------ 9. final model

    def retrain_on_all(self, eval_images: int | None = 64, progress: bool | None = None) -> "Recipe":
        """A fresh network trained on training + validation images with the settings this recipe chose.

        Why: once the settings are fixed, the validation images are more training data. The new recipe
        still reports accuracy on (at most `eval_images` of) the validation images, but it has trained on
        them, so those numbers measure fit, not generalisation: a sanity check, kept small to save time.
        """
        train_all = _concat(self.splits.train, self.splits.val)
        merged = data.Splits(train_all, _cap(self.splits.val, eval_images, self.seed), self.classes,
                             self.splits.root, self.splits.name)
        final = Recipe(self.dataset, self.net.name, self.image_size, self.batch_size, self.seed, self.device,
                       splits=merged, train_tfm=self.train_tfm, cache_dir=self.cache_dir,
                       progress=self.progress if progress is None else progress)
        if self.train_fs is not None and final.body_id == self.body_id:
            both = features.FeatureSet(torch.cat([self.train_fs.x, self.val_fs.x]),
                                       torch.cat([self.train_fs.y, self.val_fs.y]), "train+val", self.classes)
            final.precompute((both, _cap(self.val_fs, eval_images, self.seed)))  # same rows as final's val
        for method, kwargs in self.plan:
            getattr(final, method)(**kwargs)
        return final


def fine_tune(dataset="hymenoptera", backbone: str = "efficientnet_lite0", image_size: int = 128,
              batch_size: int = 32, head_epochs: int = 2, aug_cycles: int = 1, all_cycles: int = 2,
              cycle_mult: float = 2, group_ratio: float | None = None, bn_freeze: bool = True,
              tta_mode: str = "flip",
              lr_rule: str = "valley", head_lr_iters: int = 100, all_lr_iters: int = 100,
              seed: int = 0, device="cpu", **recipe_kwargs) -> Recipe:
    """Run every recipe step with the LRs the finder suggests; returns the `Recipe` (see `.acc_after_step`)."""
    r = Recipe(dataset, backbone, image_size, batch_size, seed, device, **recipe_kwargs)
    r.precompute()
    head_lr = pick_lr(r.find_head_lr(num_it=head_lr_iters), lr_rule)
    r.train_head(head_epochs, head_lr)
    r.train_head_augmented(aug_cycles, head_lr)
    r.unfreeze(group_ratio, bn_freeze)
    short = all_lr_iters < 50   # a short sweep needs lighter smoothing and less trimming
    found = r.find_lr(num_it=all_lr_iters, smooth=0.7 if short else 0.98, skip_end=2 if short else 5)
    all_lr = pick_lr(found, lr_rule, fallback=head_lr / 10, floor=head_lr / 30, ceiling=head_lr / 3)
    r.train_all(all_cycles, all_lr, cycle_mult=cycle_mult)
    r.tta(tta_mode)
    return r


# ---------------------------------------------------------------- looking at the results

def most_confused(targets, preds, classes: Sequence[str], min_count: int = 1) -> pd.DataFrame:
    """(actual, predicted, count) for every off-diagonal pair seen at least `min_count` times, commonest first."""
    targets, preds = np.asarray(targets), np.asarray(preds)
    k = len(classes)
    cm = np.bincount(targets * k + preds, minlength=k * k).reshape(k, k)
    rows = [{"actual": classes[a], "predicted": classes[p], "count": int(cm[a, p])}
            for a in range(k) for p in range(k) if a != p and cm[a, p] >= min_count]
    return pd.DataFrame(rows, columns=["actual", "predicted", "count"]).sort_values(
        "count", ascending=False, kind="stable").reset_index(drop=True)


def top_losses(probs: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], k: int = 8) -> pd.DataFrame:
    """The `k` items with the largest cross-entropy: index, actual, predicted, its probability, p(actual), loss."""
    probs, targets = torch.as_tensor(probs).float(), torch.as_tensor(targets).long()
    losses = F.nll_loss(probs.clamp_min(1e-12).log(), targets, reduction="none")
    order = losses.argsort(descending=True, stable=True)[:k]
    p_max, pred = probs.max(1)
    return pd.DataFrame([{"index": int(i), "actual": classes[int(targets[i])], "predicted": classes[int(pred[i])],
                          "probability": float(p_max[i]), "p_actual": float(probs[i, targets[i]]),
                          "loss": float(losses[i])} for i in order])


def per_class_accuracy(targets, preds, classes: Sequence[str]) -> pd.DataFrame:
    """Images and accuracy (recall) per class, worst first."""
    targets, preds = np.asarray(targets), np.asarray(preds)
    rows = []
    for c, name in enumerate(classes):
        mask = targets == c
        rows.append({"class": name, "images": int(mask.sum()),
                     "acc": float((preds[mask] == c).mean()) if mask.any() else float("nan")})
    return pd.DataFrame(rows).sort_values("acc", kind="stable").reset_index(drop=True)


def show_top_losses(images: data.ImageList, table: pd.DataFrame, ncols: int = 4, size: float = 2.6):
    """The top-loss images titled predicted / actual / probability (red where the prediction is wrong)."""
    from .plots import show_images
    pics = [images.image(int(i)) for i in table["index"]]
    titles = [f"{r.predicted} / {r.actual}\np={r.probability:.2f} loss={r.loss:.2f}" for r in table.itertuples()]
    colors = ["tab:red" if r.predicted != r.actual else "black" for r in table.itertuples()]
    return show_images(pics, titles, ncols=ncols, size=size, title_colors=colors,
                       suptitle="top losses: predicted / actual")


def waterfall_table(acc_after_step: Sequence[dict], baseline: float | None = None,
                    n_val: int | None = None) -> pd.DataFrame:
    """Accuracy after each step and the change each step made (the first step's change is from `baseline`).

    With `n_val` (validation images), `se` is the binomial standard error sqrt(acc (1 - acc) / n): a change
    smaller than about two of them could be luck of the validation draw.
    """
    acc = np.array([float(s["acc"]) for s in acc_after_step])
    previous = [baseline if baseline is not None else float("nan"), *acc[:-1]]
    table = pd.DataFrame({"step": [s["step"] for s in acc_after_step], "acc": acc,
                          "change": acc - np.array(previous)})
    if n_val:
        table["se"] = np.sqrt(acc * (1 - acc) / n_val)
    return table


def plot_waterfall(table: pd.DataFrame, baseline: float = 0.0, ax=None, title: str = "what each step added"):
    """Each step as a floating bar from the previous accuracy to its own (green up, red down)."""
    import matplotlib.pyplot as plt
    ax = ax or plt.subplots(figsize=(max(6, 1.6 * len(table)), 3.6))[1]
    prev = baseline
    for i, acc in enumerate(table["acc"]):
        first = i == 0
        bottom, height = (baseline, acc - baseline) if first else (prev, acc - prev)
        color = "tab:blue" if first else ("tab:green" if acc >= prev else "tab:red")
        ax.bar(i, height if abs(height) > 1e-4 else 1e-3, bottom=bottom, color=color, width=0.6)
        if "se" in table:
            ax.errorbar(i, acc, yerr=table["se"].iloc[i], color="0.2", capsize=4, lw=1)
        label = f"{acc:.3f}" if first else f"{acc:.3f}\n({acc - prev:+.3f})"
        top = max(acc, prev if not first else acc) + (table["se"].iloc[i] if "se" in table else 0)
        ax.text(i + 0.32, top, label, ha="left", va="bottom", fontsize=8)
        if not first:
            ax.plot([i - 1 - 0.3, i + 0.3], [prev, prev], color="0.5", lw=0.8, ls=":")
        prev = acc
    lo = max(0.0, min(baseline, *table["acc"]) - 0.05)
    ax.set(xticks=range(len(table)), xlim=(-0.6, len(table) - 0.1), ylim=(lo, 1.02),
           ylabel="validation accuracy", title=title)
    ax.set_xticklabels([textwrap.fill(s, 18) for s in table["step"]], fontsize=8)
    return ax


def image_size_table(images: data.ImageList, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Width, height and mode of up to `n` images (read from the file headers, no decoding)."""
    from PIL import Image
    picked = images.subset(min(n, len(images)), seed) if len(images) else images
    rows = []
    for item, t in zip(picked.items, picked.targets):
        if isinstance(item, np.ndarray):
            h, w = item.shape[:2]
            rows.append({"class": images.classes[t], "width": w, "height": h, "mode": "array"})
            continue
        with Image.open(item) as im:
            rows.append({"class": images.classes[t], "width": im.width, "height": im.height, "mode": im.mode})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- saving, loading, predicting

def _head_spec(head: nn.Module) -> dict:
    """The `models.new_head` arguments that rebuild `head` (plain Linear, Dropout+Linear, or hidden layer)."""
    if isinstance(head, nn.Linear):
        return {"hidden": None, "dropout": 0.0}
    layers = list(head) if isinstance(head, nn.Sequential) else []
    kinds = [type(m) for m in layers]
    if kinds == [nn.Dropout, nn.Linear]:
        return {"hidden": None, "dropout": layers[0].p}
    if kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]:
        return {"hidden": layers[0].out_features, "dropout": layers[2].p}
    raise ValueError(f"save_model cannot describe head {head}: use a head made by tlkit.models.new_head")


def save_model(path: str | os.PathLike, net: models.Net, classes: Sequence[str], preprocessing: dict) -> Path:
    """Save weights with everything needed to use them: backbone, head shape, class names, preprocessing.

    Why: a bare state dict is useless a month later (which classes? which size? which normalisation?).
    Only tensors, strings and numbers are stored, so loading is safe (`weights_only=True`).
    """
    if getattr(net, "name", None) not in models.BACKBONES:
        raise ValueError("save_model expects a tlkit.models.Net")
    prep = {"image_size": int(preprocessing["image_size"]), "crop_pct": float(preprocessing.get("crop_pct", data.CROP_FRACTION)),
            "norm": [[float(v) for v in preprocessing["norm"][0]], [float(v) for v in preprocessing["norm"][1]]]}
    state = {"format": MODEL_FORMAT, "backbone": net.name, "head": _head_spec(net.head),
             "classes": [str(c) for c in classes], "preprocessing": prep,
             "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
    return atomic_save(state, path)


@dataclass
class ModelBundle:
    """A trained network with its class names and the preprocessing its inputs need."""

    net: models.Net
    classes: list[str]
    preprocessing: dict

    @property
    def transform(self):
        """PIL image -> the normalised tensor the network was trained on."""
        p = self.preprocessing
        return data.eval_transform(p["image_size"], tuple(map(tuple, p["norm"])), p["crop_pct"])


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> ModelBundle:
    """Rebuild a network saved by `save_model` (no pretrained weights needed) and return it with its metadata."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a model saved by tlkit.recipe.save_model (format {state.get('format')})")
    net = models.create(state["backbone"], len(state["classes"]), pretrained=False, **state["head"])
    net.load_state_dict(state["model"])
    return ModelBundle(net.to(device).eval(), state["classes"], state["preprocessing"])


@torch.no_grad()
def predict_files(bundle: ModelBundle, paths: Sequence[str | os.PathLike], batch_size: int = 32) -> pd.DataFrame:
    """Predicted class and its probability for image files on disk (one row per file, in order)."""
    tfm, net = bundle.transform, bundle.net.eval()
    device = tta.model_device(net)
    probs = []
    paths = [str(p) for p in paths]
    for i in range(0, len(paths), batch_size):
        x = torch.stack([tfm(data.load_rgb(p)) for p in paths[i:i + batch_size]]).to(device)
        probs.append(net(x).float().softmax(1).cpu())
    probs = torch.cat(probs) if probs else torch.empty(0, len(bundle.classes))
    p, idx = probs.max(1) if len(probs) else (torch.empty(0), torch.empty(0, dtype=torch.long))
    return pd.DataFrame({"file": [Path(q).name for q in paths], "path": paths,
                         "predicted": [bundle.classes[int(i)] for i in idx], "class_index": idx.tolist(),
                         "probability": p.tolist()})
