"""Lesson 08 (notebooks/08_full_recipe.ipynb): every step of the notes' recipe, run by calling tlkit, each
measured on a held-out test split.

The steps, in the notes' order: explore the data; precompute activations (augmentation on, but it has no
effect on cached features); find the LR; train the last layer on the precomputed activations; train it with
augmentation using SGDR with `cycle_len=1`; unfreeze with earlier groups 3-10x lower; find the LR again;
train the whole network with `cycle_mult=2`; look at the results; retrain on training + validation data.
`Recipe` runs one step per method call (one notebook section each) and remembers the choices it made,
so `retrain_on_all` can replay them; `fine_tune` runs them all. No new training loop: every fit is a
`tlkit.Learner.fit`.

Three splits: training images train, validation images choose (LRs, each stage's best epoch, whether a
step is kept), test images (`hold_out_test`) only measure. The first bar of the waterfall is a baseline,
a scikit-learn linear probe on the frozen features (`Recipe.probe`); every later step is read against the
model it started from with a paired bootstrap over the test images. `verdict_confusion` (with
`many_class_confusion` when the dataset has two classes) and `verdict_retrain` turn the lesson's
measurements into verdicts on claims 23 and 24.
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
from PIL import Image
from torch import nn

from .. import claims, data, features, fit_cache, models, schedules, tta
from ..augment import augmented_transform
from ..env import seed_everything
from ..lr_finder import LRFinderResult, lr_find
from ..optim import default_group_ratio, differential_lrs, lrs_for_groups
from ..storage import atomic_save
from ..train import Learner
from ..validate import check_positive, check_positive_int
from .. import metrics

__all__ = ["STEP_NAMES", "Recipe", "WorkPlan", "sgdr_epochs", "fine_tune", "pick_lr", "plot_lr_sweep",
           "most_confused", "top_losses", "per_class_accuracy", "show_top_losses", "waterfall_table",
           "plot_waterfall", "image_size_table", "ModelBundle", "save_model", "load_model", "predict_files",
           "hold_out_test", "BestEpoch", "KeepDecision", "keep_decision", "confusion_pairs",
           "verdict_confusion", "many_class_confusion", "verdict_retrain", "StepResult", "MODEL_FORMAT"]

STEP_NAMES = {"probe": "linear probe (baseline)", "head": "pretrained head only", "augment": "+ augmentation (SGDR, cycle_len=1)",
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
    """One recipe step: test accuracy of its own result, read against the model the step started from.

    The step's result is its best validation epoch (never a test-chosen one). `kept` is False unless it
    beat the model it started from on validation by more than one standard error (`keep`, a
    `KeepDecision`): the recipe then goes on from that model, and the step's change is still shown.
    """

    step: str
    acc: float | None          # test accuracy of the step's result (None: no test split)
    seconds: float
    settings: dict = field(default_factory=dict)
    val_acc: float = float("nan")
    val_loss: float = float("nan")
    kept: bool = True
    start_acc: float | None = None       # test accuracy of the model the step started from
    change: tuple | None = None          # (effect, low, high) against it: paired bootstrap over test images
    correct: np.ndarray | None = field(default=None, repr=False)   # per test image: right or wrong
    keep: KeepDecision | None = None     # validation's evidence for keeping it (None: nothing to compare with)

    def describe(self) -> str:
        """One line a learner reads: validation and test accuracy, the change with its interval, kept or not."""
        text = f"{self.step}: validation {self.val_acc:.3f}"
        if "best_epoch" in self.settings:
            text += f" (best epoch {self.settings['best_epoch']} of {self.settings['epochs']})"
        if self.acc is not None:
            text += f", test {self.acc:.3f}"
        if self.change is not None:
            effect, low, high = self.change
            text += (f", change on test {100 * effect:+.1f} points (95 % interval {100 * low:+.1f} to "
                     f"{100 * high:+.1f}) against the model it started from")
        if self.keep is not None:
            text += f"; {self.keep.describe()}"
        if not self.kept:
            text += ", so the recipe goes on from the model it started from"
        return text


@dataclass
class WorkPlan:
    """How many training images each kind of step uses, sized from measured seconds per image to fit a budget.

    Why: a user's folder can hold any number of images, and a quick run must still end in time. Steps on
    precomputed features cost one forward pass per image, so they get every image the budget allows;
    steps that run the body cost several passes per image and epoch, so they get a stratified sample.
    """

    budget_s: float
    seconds_per_image: dict      # measured: "forward" (no gradient), "head only" and "whole network" training steps
    available: int               # training images in the split
    feature_images: int          # training images the probe and the head on features use
    body_images: int             # training images per epoch of the steps that run the body
    augment_epochs: int          # epochs with the body frozen in the loop
    unfreeze_epochs: int         # epochs with the whole network training
    fixed_s: float               # evaluation passes on validation and test images, precomputing their features

    @classmethod
    def size(cls, budget_s: float, seconds_per_image: dict, available: int, n_val: int, n_test: int,
             augment_epochs: int, unfreeze_epochs: int, tta_views: int = 2, min_images: int = 32,
             features_done: int | None = None) -> "WorkPlan":
        """The plan for measured `seconds_per_image` ("forward", "head only", "whole network").

        Evaluation is paid first: validation features, one validation pass per body epoch and `tta_views`
        for TTA; test features, a pass after each of the two body stages and `tta_views` for TTA. Of the
        rest, the feature steps get what is left once every image has had its body epochs, and at least
        half; the body steps get the remainder. Neither goes below `min_images` (nor above `available`).
        `features_done`: training features already computed (they cost nothing more).
        """
        t = seconds_per_image
        fixed = t["forward"] * (n_val * (1 + augment_epochs + unfreeze_epochs + tta_views)
                                + n_test * (1 + 2 + tta_views))
        rest = max(budget_s - fixed, 0.0)
        per_body_image = max(augment_epochs * t["head only"] + unfreeze_epochs * t["whole network"], 1e-12)
        if features_done is not None:
            n_feat, feature_cost = features_done, 0.0
        else:
            n_feat = min(available, int(max(rest - available * per_body_image, rest / 2) / t["forward"]))
            feature_cost = n_feat * t["forward"]
        n_body = min(available, int(max(rest - feature_cost, 0.0) / per_body_image))
        floor = min(available, min_images)
        return cls(float(budget_s), dict(t), available, max(n_feat, floor) if features_done is None else n_feat,
                   max(n_body, floor), augment_epochs, unfreeze_epochs, fixed)

    @property
    def estimate_s(self) -> float:
        """Seconds the plan should take: evaluation, feature precomputing and body epochs (LR sweeps excluded)."""
        t = self.seconds_per_image
        return (self.fixed_s + self.feature_images * t["forward"] + self.body_images
                * (self.augment_epochs * t["head only"] + self.unfreeze_epochs * t["whole network"]))

    def describe(self) -> str:
        """What the budget bought, in a sentence a learner reads."""
        t = self.seconds_per_image
        rates = ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in t.items())
        uses = (f"every one of the {self.available:,} training images for every step"
                if self.feature_images == self.body_images == self.available else
                f"{self.feature_images:,} of {self.available:,} training images for the steps on precomputed "
                f"features and a stratified {self.body_images:,} per epoch for the "
                f"{self.augment_epochs + self.unfreeze_epochs} epochs that run the body")
        return (f"time budget {self.budget_s:.0f} s (measured per image: {rates}): the recipe uses {uses}; "
                f"estimated {self.estimate_s:.0f} s, of which evaluation and precomputing {self.fixed_s:.0f} s")


def _cap(images, count: int | None, seed: int):
    """A stratified subset of at most `count` items of an ImageList or FeatureSet (all when `count` is None or larger).

    Both choose rows with `data.stratified_indices`, so images and their features stay aligned.
    """
    return images if count is None or count >= len(images) else images.subset(int(count), seed)


def _concat(a: data.ImageList, b: data.ImageList) -> data.ImageList:
    """Two image lists with the same classes as one."""
    return data.ImageList(a.items + b.items, a.targets + b.targets, a.classes, a.transform, a.decode_size)


def hold_out_test(splits: data.Splits, fraction: float = 0.5, seed: int = 0) -> tuple[data.Splits, data.ImageList]:
    """A seeded, stratified test split that nothing tunes on, and the splits without it.

    A dataset with its own `val/` folder gives `fraction` of those images; a folder tlkit split itself
    (no `train/` and `val/`) gives as many training images as it has validation images (60/20/20).
    Why: the validation images choose learning rates, epochs and which step to keep, so their accuracy
    flatters the model; only images nothing was chosen on say how well it does.
    """
    root = Path(splits.root) if splits.root else None
    own_val = root is not None and (root / "train").is_dir() and (root / "val").is_dir()
    if own_val or len(splits.val) >= len(splits.train):
        rest, test = data.stratified_split(splits.val.targets, fraction, seed)
        return replace(splits, val=splits.val.take(rest)), splits.val.take(test)
    # (n_val - 0.5) / n_train: the split rounds the count up, so this gives exactly n_val test images
    rest, test = data.stratified_split(splits.train.targets, (len(splits.val) - 0.5) / len(splits.train), seed)
    return replace(splits, train=splits.train.take(rest)), splits.train.take(test)


@dataclass(frozen=True)
class KeepDecision:
    """Validation's call on a step, image by image against the model it started from (McNemar's z).

    Why not "any higher accuracy": on a few dozen validation images one image decides that, and a step's
    cost buys nothing then. Under "no difference", the net gain `fixed - broke` has a standard error of
    sqrt(fixed + broke) (only the images the two models disagree on count; Dietterich 1998 recommends this
    test for comparing two classifiers). A step is kept when its net gain is more than one standard error,
    z > 1: 2 fixed and none broken is kept, 1 fixed and none broken is not, nor is 3 fixed and 1 broken.
    """

    fixed: int     # validation images the step gets right that its start got wrong
    broke: int     # and the other way round
    n: int

    @property
    def z(self) -> float:
        """Net gain in standard errors (0 when the two models agree on every image)."""
        return 0.0 if self.fixed + self.broke == 0 else (self.fixed - self.broke) / math.sqrt(self.fixed + self.broke)

    @property
    def kept(self) -> bool:
        # exact in integers: (fixed - broke) / sqrt(fixed + broke) > 1
        return self.fixed > self.broke and (self.fixed - self.broke) ** 2 > self.fixed + self.broke

    def describe(self) -> str:
        """The validation evidence in words: images fixed and broken, the net gain and its standard error."""
        gain, se = self.fixed - self.broke, math.sqrt(self.fixed + self.broke)
        text = f"on validation it fixed {self.fixed} and broke {self.broke} of {self.n} images"
        if self.fixed + self.broke == 0:
            return text + " (the same predictions)"
        if gain <= 0:
            return text + f": no net gain ({gain:+d})"
        word = "more" if self.kept else "not more"
        return text + f": a net gain of {gain:+d}, {word} than one standard error ({se:.1f})"


def keep_decision(new_correct, start_correct) -> KeepDecision:
    """Compare per-image validation correctness of a step's result with the model it started from."""
    new, old = np.asarray(new_correct, bool), np.asarray(start_correct, bool)
    if new.shape != old.shape:
        raise ValueError(f"the two models were scored on different validation images: {new.shape} vs {old.shape}")
    return KeepDecision(int((new & ~old).sum()), int((old & ~new).sum()), int(new.size))


class BestEpoch:
    """A `Learner.fit` callback that keeps the weights of the best validation epoch, for `restore` after the fit.

    Best: the highest validation accuracy, then the lowest validation loss (accuracy ties often on a
    few hundred images). Only copies that tie the best accuracy so far are kept in memory; `best_correct`
    holds which validation images the restored epoch got right (for `keep_decision`).
    """

    def __init__(self, module: nn.Module):
        self.module, self.best_acc, self.states = module, -1.0, {}
        self.correct: dict[int, np.ndarray] = {}   # per validation image, of each epoch kept in memory
        self.best_correct: np.ndarray | None = None

    def __call__(self, event: str, learn: Learner) -> None:
        if event != "after_epoch" or learn.last_correct is None:
            return
        acc = learn.last_correct.float().mean().item()
        if acc >= self.best_acc:
            if acc > self.best_acc:
                self.states.clear()
                self.correct.clear()
            self.best_acc = acc
            self.states[learn.epoch + 1] = models.copy_state(self.module)
            self.correct[learn.epoch + 1] = learn.last_correct.cpu().numpy().astype(bool)

    # the fit cache (`tlkit.fit_cache`) may read a fit back instead of running it: these keep and restore what
    # the keeper saw
    def fit_cache_id(self, learn: Learner) -> str | None:
        """Which module it keeps and whether it starts fresh; None (not cacheable) for a module outside the net."""
        name = next((n for n, m in learn.net.named_modules() if m is self.module), None)
        return None if name is None else f"{name}|{self.best_acc}|{sorted(self.states)}"

    def fit_cache_state(self) -> dict:
        return {"best_acc": self.best_acc, "states": self.states,
                "correct": {k: torch.from_numpy(v) for k, v in self.correct.items()}}

    def load_fit_cache_state(self, state: dict) -> None:
        self.best_acc, self.states = state["best_acc"], dict(state["states"])
        self.correct = {k: v.numpy().astype(bool) for k, v in state["correct"].items()}

    def restore(self, history: pd.DataFrame) -> int:
        """Load the best epoch's weights; returns its number (1-based, within this fit)."""
        rows = history[history["epoch"].isin(list(self.states))]
        best = int(rows.sort_values(["val_acc", "val_loss", "epoch"], ascending=[False, True, True]).iloc[0]["epoch"])
        self.module.load_state_dict(self.states[best])
        self.best_correct = self.correct[best]
        return best


class Recipe:
    """The notes' recipe on one dataset, one step per method; `steps` holds the result of each.

    Three splits: training images train; validation images choose (LRs, best epochs, which step to
    keep); test images (`hold_out_test`) only measure. `select_best=False` (the retrained model, which
    trains on the validation images) turns the choosing off: it replays the choices made here.
    """

    def __init__(self, dataset="hymenoptera", backbone: str = "efficientnet_lite0", image_size: int = 128,
                 batch_size: int = 32, seed: int = 0, device: torch.device | str = "cpu",
                 max_train: int | None = None, max_val: int | None = None, val_fraction: float = 0.2,
                 splits: data.Splits | None = None, train_tfm=None, cache_dir: str | os.PathLike | None = None,
                 progress: bool | None = None, test_fraction: float | None = 0.5, max_test: int | None = None,
                 test: data.ImageList | None = None, select_best: bool = True, feature_batch_size: int = 32):
        seed_everything(seed)
        self.dataset, self.seed, self.device = dataset, seed, torch.device(device)
        self.image_size, self.batch_size, self.progress = image_size, batch_size, progress
        self.feature_batch_size = feature_batch_size   # steps on precomputed features: no body, so batches stay cheap
        full = splits or data.get_splits(dataset, seed=seed, val_fraction=val_fraction, image_size=image_size)
        if test is None and test_fraction:
            full, test = hold_out_test(full, test_fraction, seed)
        # every image shown or transformed here decodes at the size its `image_size` views need, not at the file's:
        # a 12-megapixel photo decodes at 1/8 scale (full size cost lesson 08 a gigabyte on a folder of such
        # photos). A view larger than `image_size` made from these lists must pass its own decode size.
        decode = data.decode_size(image_size)
        self.splits = replace(full, train=_cap(full.train, max_train, seed).with_transform(None, decode),
                              val=_cap(full.val, max_val, seed).with_transform(None, decode))
        self.test = _cap(test, max_test, seed).with_transform(None, decode) if test is not None else None
        self.classes = list(self.splits.classes)
        self.net = models.create(backbone, len(self.classes)).to(self.device)
        self.body_id = self.net.weights_id()   # the pretrained body the features come from
        # fastai's 2017 transforms zoomed at most 1.1x: crops much smaller than half the image lose the object
        self.train_tfm = train_tfm or augmented_transform(image_size, self.net.norm, crop_scale=(0.5, 1.0))
        self.dls = data.dataloaders(self.splits, image_size, self.net.norm, batch_size,
                                    train_tfm=self.train_tfm, seed=seed)
        self.learn = Learner(self.net, self.dls, device=self.device, progress=progress)
        self.test_loader = None if self.test is None else data.make_loader(
            self.test.with_transform(data.eval_transform(image_size, self.net.norm), data.decode_size(image_size)),
            2 * batch_size, shuffle=False)
        self.cache_dir, self.select_best = cache_dir, select_best
        self.train_fs = self.val_fs = self.test_fs = None
        self.head_learn: Learner | None = None
        self.ratios: list[float] | None = None
        self.steps: list[StepResult] = []
        self.plan: list[tuple[str, dict]] = []   # the training calls, replayed by `retrain_on_all`
        self.probe_result: dict | None = None
        self.use_tta = False
        self.work_plan: WorkPlan | None = None
        self._kept_val_correct: np.ndarray | None = None       # per validation image, of the model kept so far
        self._kept_correct: np.ndarray | None = None           # its per-image test correctness
        self.net_correct: np.ndarray | None = None              # the network's (no TTA), after the last stage

    # ------------------------------------------------------------ what the steps share

    @property
    def preprocessing(self) -> dict:
        """What a saved model needs to see images as it was trained to: size, crop and normalisation."""
        return {"image_size": self.image_size, "crop_pct": data.CROP_FRACTION,
                "norm": [list(self.net.norm[0]), list(self.net.norm[1])]}

    @property
    def acc_after_step(self) -> list[dict]:
        """One dict per step, in order: test accuracy (`acc`), validation accuracy, kept, and the change
        against the model the step started from with its 95 % interval (paired bootstrap over test images)."""
        return [{"step": s.step, "acc": s.acc, "val_acc": round(s.val_acc, 6), "kept": s.kept,
                 "start_acc": s.start_acc, "change": None if s.change is None else s.change[0],
                 "change_ci": None if s.change is None else [s.change[1], s.change[2]]} for s in self.steps]

    def _keep(self, val_correct: np.ndarray) -> KeepDecision | None:
        """Validation's evidence for a step whose result got `val_correct` (None for the first model)."""
        return None if self._kept_val_correct is None else keep_decision(val_correct, self._kept_val_correct)

    def _record_step(self, key: str, start: float, score: tuple[float, float], correct: np.ndarray | None,
                     val_correct: np.ndarray, keep: KeepDecision | None, kept: bool, **settings) -> StepResult:
        start_correct = self._kept_correct
        change = None
        if correct is not None and start_correct is not None:
            change = metrics.paired_bootstrap(correct, start_correct, seed=self.seed)
        result = StepResult(STEP_NAMES[key], None if correct is None else float(np.mean(correct)),
                            time.perf_counter() - start, settings, float(score[0]), float(score[1]), kept,
                            None if start_correct is None else float(np.mean(start_correct)), change, correct, keep)
        self.steps = [s for s in self.steps if s.step != result.step]  # a rerun step replaces itself
        self.steps.append(result)
        if kept:
            self._kept_val_correct, self._kept_correct = np.asarray(val_correct, bool), correct
        return result

    def step_table(self) -> pd.DataFrame:
        """One row per step: test and validation accuracy, kept, seconds, settings."""
        return pd.DataFrame([{"step": s.step, "test_acc": s.acc, "val_acc": s.val_acc, "kept": s.kept,
                              "seconds": round(s.seconds, 1),
                              **{k: (f"{v:.2g}" if isinstance(v, float) else v) for k, v in s.settings.items()}}
                             for s in self.steps])

    def test_correct(self, net: nn.Module | None = None) -> np.ndarray | None:
        """Per test image: is `net`'s (default: this recipe's network) most probable class the right one?"""
        if self.test_loader is None:
            return None
        probs, y = self.test_probs(net)
        return (probs.argmax(1) == y).numpy()

    def test_probs(self, net: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities `[N, K]` and targets `[N]` of `net` (default: this recipe's network, no TTA) on the test images."""
        if self.test_loader is None:
            raise ValueError("this recipe has no test split (test_fraction=None)")
        logits, y = self.learn.get_logits(self.test_loader, model=net)
        return logits.softmax(1), y

    def probs(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities `[N, K]` and targets `[N]` of the network (no TTA) on "val" or "test"."""
        return self.learn.get_preds() if split == "val" else self.test_probs()

    # ------------------------------------------------------------ 0. size the work to a time budget

    def fit_budget(self, budget_s: float, augment_epochs: int, unfreeze_epochs: int, tta_views: int = 2,
                   batches: int = 2) -> WorkPlan:
        """Measure seconds per image, then cap the training images so the recipe's steps fit `budget_s`.

        Evaluation (validation every body epoch, test after every stage, `tta_views` views of both) and the
        validation and test features are paid first; of the rest, the feature steps get up to half (one
        forward pass per image) and the body steps the remainder (`augment_epochs` with the body frozen,
        `unfreeze_epochs` with it trainable). Call it
        before `precompute`; the LR sweeps and the retraining (which trains its body steps on as many
        images) come on top.
        """
        check_positive("budget_s", budget_s, 60)
        check_positive_int("augment_epochs", augment_epochs, 1, allow_zero=True)
        check_positive_int("unfreeze_epochs", unfreeze_epochs, 1, allow_zero=True)
        was = [p.requires_grad for p in self.net.parameters()]
        models.freeze(self.net)
        def speed(what: str, train: bool = True) -> float:   # measured once per machine and settings
            return fit_cache.remembered(self.learn, f"seconds_per_image|{what}|{batches}",
                                        lambda: self.learn.seconds_per_image(batches, train=train))

        t = {"forward": speed("forward", train=False), "head only": speed("head only")}
        models.unfreeze(self.net)
        models.freeze_batchnorm(self.net)
        t["whole network"] = speed("whole network")
        for p, flag in zip(self.net.parameters(), was):
            p.requires_grad_(flag)
        plan = WorkPlan.size(budget_s, t, len(self.splits.train), len(self.splits.val),
                             0 if self.test is None else len(self.test), augment_epochs, unfreeze_epochs,
                             tta_views, min_images=max(2 * self.batch_size, 4 * len(self.classes)),
                             features_done=None if self.train_fs is None else len(self.train_fs))
        available, n_feat, n_body = plan.available, plan.feature_images, plan.body_images
        if self.train_fs is None and n_feat < available:
            self.splits = replace(self.splits, train=_cap(self.splits.train, n_feat, self.seed))
        self.limit_body_images(n_body if n_body < available else None)
        plan = replace(plan, feature_images=len(self.splits.train), body_images=len(self.dls.train.dataset))
        self.work_plan = plan   # the counts the stratified samples really hold
        return plan

    def limit_body_images(self, count: int | None) -> None:
        """Train the body steps on a stratified `count` of the training images (None: all of them).

        The retrained model replays it with the same count: its body steps then cost what these did.
        """
        self.plan = [p for p in self.plan if p[0] != "limit_body_images"]
        self.plan.insert(0, ("limit_body_images", {"count": count}))
        body = replace(self.splits, train=_cap(self.splits.train, count, self.seed))
        self.dls = data.dataloaders(body, self.image_size, self.net.norm, self.batch_size,
                                    train_tfm=self.train_tfm, seed=self.seed)
        self.learn.dls = self.dls

    # ------------------------------------------------------------ 1. explore

    def explore(self) -> pd.DataFrame:
        """Images per class in training, validation and test, with the share of each class."""
        table = pd.DataFrame({"train": self.splits.train.class_counts(), "val": self.splits.val.class_counts()})
        if self.test is not None:
            table["test"] = pd.Series(self.test.class_counts())
        table["train_share"] = (table["train"] / table["train"].sum()).round(3)
        return table

    # ------------------------------------------------------------ 2. precompute

    def precompute(self, features_pair: tuple | None = None) -> tuple[features.FeatureSet, features.FeatureSet]:
        """Backbone activations of the training and validation images (eval transform), cached on disk;
        of the test images too (kept apart: they only measure).

        Augmentation is switched on in `dls`, but cached features hold one fixed view of each image:
        while we train on them, augmentation does nothing (the notes' "precompute=True").
        """
        decode = data.decode_size(self.image_size)
        tfm = data.eval_transform(self.image_size, self.net.norm)
        kw = dict(cache_dir=self.cache_dir, batch_size=2 * self.batch_size, progress=self.progress)
        if features_pair is not None:
            self.train_fs, self.val_fs = features_pair
        else:
            self.train_fs = features.precompute(self.net, self.splits.train.with_transform(tfm, decode), **kw)
            self.val_fs = features.precompute(self.net, self.splits.val.with_transform(tfm, decode), **kw)
        if self.test is not None and self.test_fs is None:
            self.test_fs = features.precompute(self.net, self.test.with_transform(tfm, decode), **kw)
        return self.train_fs, self.val_fs

    def _head_learner(self) -> Learner:
        if self.train_fs is None:
            self.precompute()
        if self.head_learn is None:
            self.head_learn = features.head_learner(self.net, self.train_fs, self.val_fs, self.feature_batch_size,
                                                    seed=self.seed, progress=self.progress)
        return self.head_learn

    # ------------------------------------------------------------ the baseline: a linear probe

    def probe(self, C: float | None = None, as_head: bool = False, Cs: Sequence[float] = tuple(np.logspace(-3, 1, 9)),
              folds: int = 5) -> StepResult:
        """The baseline: scikit-learn logistic regression on the frozen body's pooled features (seconds).

        `C` (inverse regularisation) is chosen by stratified cross-validation on the training split
        alone (log loss); features are standardised with the training split's mean and spread. Every
        training image is used. `as_head=True` writes it into the network's head (used when validation
        prefers it to the head trained by SGD).
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import log_loss
        from sklearn.model_selection import StratifiedKFold
        from sklearn.preprocessing import StandardScaler
        start = time.perf_counter()
        if self.train_fs is None:
            self.precompute()
        x, y = self.train_fs.x.float().numpy(), self.train_fs.y.numpy()
        k = min(folds, int(np.bincount(y).min()))
        if C is None and k >= 2:   # cross-validated log loss of each C, scaler fitted inside each fold
            cv = list(StratifiedKFold(k, shuffle=True, random_state=self.seed).split(x, y))
            losses = np.zeros(len(Cs))
            for fit_idx, held_idx in cv:   # each fold's fits start from the previous C's solution: half the time
                sc = StandardScaler().fit(x[fit_idx])
                fit_x, held_x = sc.transform(x[fit_idx]), sc.transform(x[held_idx])
                m = LogisticRegression(max_iter=3000, warm_start=True)
                for i, c in enumerate(Cs):
                    m.set_params(C=c).fit(fit_x, y[fit_idx])
                    losses[i] += log_loss(y[held_idx], m.predict_proba(held_x), labels=m.classes_) * len(held_idx)
            C = float(Cs[int(np.argmin(losses))])
        C = 1.0 if C is None else float(C)
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=C, max_iter=3000).fit(scaler.transform(x), y)
        w = clf.coef_ / scaler.scale_
        b = clf.intercept_ - w @ scaler.mean_
        if w.shape[0] == 1:   # binary: scikit-learn keeps one logit, class 1's against class 0's zero
            w, b = np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b])
        weight, bias = torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)

        def predict(fs):
            logits = fs.x.float() @ weight.T + bias
            return logits.argmax(1).numpy(), F.cross_entropy(logits, fs.y.long()).item()

        val_pred, val_loss = predict(self.val_fs)
        correct = None if self.test_fs is None else predict(self.test_fs)[0] == self.test_fs.y.numpy()
        self.probe_result = {"C": C, "weight": weight, "bias": bias, "folds": k}
        if as_head:
            self._load_probe_head()
        self.plan = [p for p in self.plan if p[0] != "probe"]
        if as_head:
            self.plan.insert(0, ("probe", {"C": C, "as_head": True}))
        val_correct = val_pred == self.val_fs.y.numpy()
        return self._record_step("probe", start, (float(np.mean(val_correct)), val_loss), correct, val_correct,
                                 None, True, C=C, cv_folds=k, train_images=len(y))

    def _linear(self) -> nn.Linear | None:
        head = self.net.head
        if isinstance(head, nn.Linear):
            return head
        kinds = [type(m) for m in head] if isinstance(head, nn.Sequential) else []
        return head[1] if kinds == [nn.Dropout, nn.Linear] else None

    def _load_probe_head(self) -> None:
        linear = self._linear()
        with torch.no_grad():
            linear.weight.copy_(self.probe_result["weight"].to(linear.weight.device))
            linear.bias.copy_(self.probe_result["bias"].to(linear.bias.device))

    # ------------------------------------------------------------ one training stage, best epoch kept

    def _stage(self, key: str, learner: Learner, module: nn.Module, epochs: int, rates, schedule=None,
               on_features: bool = False, **settings) -> StepResult:
        """Fit, restore the best validation epoch, measure on test, keep it only if validation says so."""
        start = time.perf_counter()
        keeper = BestEpoch(module) if self.select_best else None
        before = models.copy_state(self.net) if keeper and self._kept_val_correct is not None and key != "head" else None
        hist = learner.fit(epochs, rates, schedule=schedule, callbacks=[keeper] if keeper else ())
        best = keeper.restore(hist) if keeper else len(hist)
        row = hist.iloc[best - 1]
        score = (float(row["val_acc"]), float(row["val_loss"]))
        val_correct = keeper.best_correct if keeper else learner.last_correct.cpu().numpy().astype(bool)
        correct = self._test_correct_features() if on_features else self.test_correct()
        keep = self._keep(val_correct) if keeper else None
        kept = True
        if keep is not None and not keep.kept:
            if key == "head" and self.probe_result is not None and self._linear() is not None:
                self._load_probe_head()
                kept = False
            elif before is not None:
                self.net.load_state_dict(before)
                kept = False
        result = self._record_step(key, start, score, correct, val_correct, keep, kept, epochs=epochs, best_epoch=best,
                                   **settings)
        self.net_correct = self._kept_correct   # the network now holds the kept model (no TTA)
        return result

    def _test_correct_features(self) -> np.ndarray | None:
        if self.test_fs is None:
            return None
        loader = data.make_loader(self.test_fs, 2 * self.feature_batch_size, shuffle=False)
        logits, y = self._head_learner().get_logits(loader)
        return (logits.argmax(1) == y).numpy()

    # ------------------------------------------------------------ 3-4. the last layer

    def find_head_lr(self, num_it: int = 100, start_lr: float = 1e-6, end_lr: float = 10.0,
                     **kwargs) -> LRFinderResult:
        """LR range test of the head on precomputed activations (seconds, however many iterations)."""
        return lr_find(self._head_learner(), num_it=num_it, start_lr=start_lr, end_lr=end_lr, warn=False,
                       **kwargs)

    def train_head(self, epochs: int, lr: float, from_probe: bool = False) -> StepResult:
        """Train the new last layer on the precomputed activations; its best validation epoch is kept."""
        models.freeze(self.net)
        if from_probe:
            self._load_probe_head()
        result = self._stage("head", self._head_learner(), self.net.head, epochs, lr, on_features=True, lr=lr)
        if result.kept:
            self.plan.append(("train_head", {"epochs": result.settings["best_epoch"], "lr": lr}))
        else:
            self.plan.insert(0, ("probe", {"C": self.probe_result["C"], "as_head": True}))
        return result

    def train_head_augmented(self, n_cycles: int, lr: float, cycle_len: float = 1,
                             stop_after: int | None = None) -> StepResult:
        """Train the head with the backbone in the loop, so every epoch sees new augmented views (SGDR).

        `stop_after` ends the fit after that many epochs of the same schedule (the retrained model's replay).
        """
        models.freeze(self.net)
        schedule = schedules.sgdr(n_cycles, cycle_len)
        epochs = stop_after or sgdr_epochs(n_cycles, cycle_len)
        result = self._stage("augment", self.learn, self.net, epochs, lr, schedule=schedule, n_cycles=n_cycles,
                             cycle_len=cycle_len, lr=lr)
        if result.kept:
            self.plan.append(("train_head_augmented", {"n_cycles": n_cycles, "lr": lr, "cycle_len": cycle_len,
                                                       "stop_after": result.settings["best_epoch"]}))
        return result

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

    def train_all(self, n_cycles: int, lr: float, cycle_len: float = 1, cycle_mult: float = 2,
                  stop_after: int | None = None) -> StepResult:
        """Fine-tune every layer with differential LRs (`lr` is the head's) and SGDR with `cycle_mult`."""
        if self.ratios is None:
            self.unfreeze()
        schedule = schedules.sgdr(n_cycles, cycle_len, cycle_mult)
        epochs = stop_after or sgdr_epochs(n_cycles, cycle_len, cycle_mult)
        result = self._stage("unfreeze", self.learn, self.net, epochs, [lr * r for r in self.ratios],
                             schedule=schedule, n_cycles=n_cycles, cycle_len=cycle_len, cycle_mult=cycle_mult, lr=lr)
        if result.kept:
            self.plan.append(("train_all", {"n_cycles": n_cycles, "lr": lr, "cycle_len": cycle_len,
                                            "cycle_mult": cycle_mult, "stop_after": result.settings["best_epoch"]}))
        return result

    # ------------------------------------------------------------ 8. TTA and the results

    def tta_probs(self, mode: str = "flip", n_aug: int = 4, beta: float = 0.25,
                  images: data.ImageList | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged probabilities over test-time views: crop views ("flip", "five", "ten") or "aug"."""
        images = self.splits.val if images is None else images
        norm, decode = self.net.norm, data.decode_size(self.image_size)
        transform = tta.aug_transform(self.image_size, norm, n_aug, augment=self.train_tfm) if mode == "aug" \
            else tta.view_transform(self.image_size, norm, mode)
        logits, y = fit_cache.computed(   # read back on a rerun with the same network, images and views
            "tta_logits", {"model": self.net, "images": images, "transform": transform, "batch": self.batch_size,
                           "decode": decode},
            lambda: tta.tta_logits(self.net, images, transform, batch_size=self.batch_size, decode_size=decode))
        if mode == "aug":
            return tta.blend(logits[:, 0].softmax(-1), tta.merge(logits[:, 1:]), beta), y
        return tta.merge(logits), y

    def tta(self, mode: str = "flip", **kwargs) -> StepResult:
        """Test-time augmentation, measured on test; used (`use_tta`) only if validation prefers it."""
        start = time.perf_counter()
        probs, y = self.tta_probs(mode, images=self.splits.val, **kwargs)
        score = (metrics.accuracy(probs, y), metrics.nll(probs, y))
        correct = None
        if self.test is not None:
            test_probs, test_y = self.tta_probs(mode, images=self.test, **kwargs)
            correct = (test_probs.argmax(1) == test_y).numpy()
        val_correct = (probs.argmax(1) == y).numpy()
        keep = self._keep(val_correct)
        self.use_tta = keep is None or keep.kept
        return self._record_step("tta", start, score, correct, val_correct, keep, self.use_tta, mode=mode)

    def predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation probabilities `[N, K]` and targets `[N]` of the current network (no TTA)."""
        return self.learn.get_preds()

    # ------------------------------------------------------------ 9. final model

    def retrain_on_all(self, eval_images: int | None = 64, progress: bool | None = None) -> "Recipe":
        """A fresh network trained on training + validation images with the choices this recipe made.

        Why: once the settings are fixed, the validation images are more training data. The replay uses
        the LRs, best epochs and kept steps chosen here (there is no unseen validation image left to
        choose on). Its `steps` report accuracy on (at most `eval_images` of) the validation images it
        trained on: fit, not generalisation. Measure it on this recipe's test split (`test_correct(final.net)`).
        """
        train_all = _concat(self.splits.train, self.splits.val)
        merged = data.Splits(train_all, _cap(self.splits.val, eval_images, self.seed), self.classes,
                             self.splits.root, self.splits.name)
        final = Recipe(self.dataset, self.net.name, self.image_size, self.batch_size, self.seed, self.device,
                       feature_batch_size=self.feature_batch_size,
                       splits=merged, train_tfm=self.train_tfm, cache_dir=self.cache_dir,
                       progress=self.progress if progress is None else progress, test_fraction=None,
                       select_best=False)
        if self.train_fs is not None and final.body_id == self.body_id:
            both = features.FeatureSet(torch.cat([self.train_fs.x, self.val_fs.x]),
                                       torch.cat([self.train_fs.y, self.val_fs.y]), "train+val", self.classes)
            final.precompute((both, _cap(self.val_fs, eval_images, self.seed)))  # same rows as final's val
        for method, kwargs in self.plan:
            getattr(final, method)(**kwargs)
        final.use_tta = self.use_tta
        return final


def sgdr_epochs(n_cycles: int, cycle_len: float = 1, cycle_mult: float = 1) -> int:
    """Whole epochs an SGDR schedule of `n_cycles` runs (what `train_head_augmented` / `train_all` fit)."""
    return math.ceil(schedules.sgdr(n_cycles, cycle_len, cycle_mult).total_epochs)


def fine_tune(dataset="hymenoptera", backbone: str = "efficientnet_lite0", image_size: int = 128,
              batch_size: int = 32, head_epochs: int = 2, aug_cycles: int = 1, all_cycles: int = 2,
              cycle_mult: float = 2, group_ratio: float | None = None, bn_freeze: bool = True,
              tta_mode: str = "flip",
              lr_rule: str = "valley", head_lr_iters: int = 100, all_lr_iters: int = 100,
              budget_s: float | None = None, seed: int = 0, device="cpu", **recipe_kwargs) -> Recipe:
    """Run every recipe step with the LRs the finder suggests; returns the `Recipe` (see `.acc_after_step`).

    With `budget_s`, the training images are first capped to fit it (`Recipe.fit_budget`).
    """
    r = Recipe(dataset, backbone, image_size, batch_size, seed, device, **recipe_kwargs)
    if budget_s is not None:
        r.fit_budget(budget_s, sgdr_epochs(aug_cycles, 1, 1), sgdr_epochs(all_cycles, 1, cycle_mult))
    r.precompute()
    r.probe()
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
    cm = metrics.confusion_matrix(targets, preds, k)
    rows = [{"actual": classes[a], "predicted": classes[p], "count": int(cm[a, p])}
            for a in range(k) for p in range(k) if a != p and cm[a, p] >= min_count]
    return pd.DataFrame(rows, columns=["actual", "predicted", "count"]).sort_values(
        "count", ascending=False, kind="stable").reset_index(drop=True)


def top_losses(probs: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], k: int = 8) -> pd.DataFrame:
    """The `k` items with the largest cross-entropy: index, actual, predicted, its probability, p(actual), loss."""
    probs, targets = torch.as_tensor(probs).float(), torch.as_tensor(targets).long()
    losses = metrics.item_nll(probs, targets)
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
    from ..plots import show_images
    pics = [images.image(int(i)) for i in table["index"]]
    titles = [f"{r.predicted} / {r.actual}\np={r.probability:.2f} loss={r.loss:.2f}" for r in table.itertuples()]
    colors = ["tab:red" if r.predicted != r.actual else "black" for r in table.itertuples()]
    return show_images(pics, titles, ncols=ncols, size=size, title_colors=colors,
                       suptitle="top losses: predicted / actual")


def waterfall_table(acc_after_step: Sequence[dict], baseline: float | None = None,
                    n: int | None = None) -> pd.DataFrame:
    """Accuracy after each step and the change the step made, read against the model it started from.

    Steps from `Recipe.acc_after_step` carry `start_acc` (the model the step started from: the previous
    kept one) and `change_ci` (the change's 95 % interval, paired bootstrap over the same images); plain
    `{"step", "acc"}` dicts are read against the previous step. The first step's change is from
    `baseline` (e.g. chance). With `n` (images the accuracies were measured on), `acc_lo`/`acc_hi` are
    each accuracy's Clopper-Pearson interval.
    """
    acc = np.array([float(s["acc"]) for s in acc_after_step])
    first = baseline if baseline is not None else float("nan")
    if acc_after_step and all("start_acc" in s for s in acc_after_step):
        start = np.array([first if s["start_acc"] is None else float(s["start_acc"]) for s in acc_after_step])
    else:
        start = np.array([first, *acc[:-1]])
    table = pd.DataFrame({"step": [s["step"] for s in acc_after_step], "acc": acc, "start": start,
                          "change": acc - start})
    if any(s.get("change_ci") for s in acc_after_step):
        table["change_lo"] = [s["change_ci"][0] if s.get("change_ci") else np.nan for s in acc_after_step]
        table["change_hi"] = [s["change_ci"][1] if s.get("change_ci") else np.nan for s in acc_after_step]
    if any("kept" in s for s in acc_after_step):
        table["kept"] = [bool(s.get("kept", True)) for s in acc_after_step]
    if n:
        bounds = [metrics.proportion_interval(int(round(a * n)), n)[1:] for a in acc]
        table["acc_lo"], table["acc_hi"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return table


def plot_waterfall(table: pd.DataFrame, baseline: float = 0.0, ax=None, title: str = "what each step added",
                   ylabel: str = "test accuracy"):
    """Each step as a floating bar from the accuracy it started from to its own (green up, red down,
    hatched when validation did not keep it). Whiskers: the change's 95 % interval placed on the bar's
    top (or the accuracy's own interval where the change has none)."""
    import matplotlib.pyplot as plt
    ax = ax or plt.subplots(figsize=(max(6, 1.7 * len(table)), 3.8))[1]
    has_start = "start" in table
    prev = baseline
    for i, row in enumerate(table.itertuples()):
        acc = row.acc
        start = row.start if has_start and not np.isnan(row.start) else (baseline if i == 0 else prev)
        first = i == 0
        bottom, height = (baseline, acc - baseline) if first else (start, acc - start)
        color = "tab:blue" if first else ("tab:green" if acc >= start else "tab:red")
        kept = getattr(row, "kept", True)
        ax.bar(i, height if abs(height) > 1e-4 else 1e-3, bottom=bottom, color=color, width=0.6,
               hatch=None if kept else "//", alpha=1.0 if kept else 0.55)
        lo_hi = None
        if "change_lo" in table and not np.isnan(row.change_lo):
            lo_hi = (start + row.change_lo, start + row.change_hi)
        elif "acc_lo" in table:
            lo_hi = (row.acc_lo, row.acc_hi)
        if lo_hi:
            ax.errorbar(i, acc, yerr=[[max(acc - lo_hi[0], 0)], [max(lo_hi[1] - acc, 0)]], color="0.2", capsize=4, lw=1)
        label = f"{acc:.3f}" if first else f"{acc:.3f}\n({acc - start:+.3f})" + ("" if kept else "\nnot kept")
        top = max(acc, start, lo_hi[1] if lo_hi else acc)
        ax.text(i + 0.32, top, label, ha="left", va="bottom", fontsize=8)
        if not first:
            ax.plot([i - 1 - 0.3, i + 0.3], [start, start], color="0.5", lw=0.8, ls=":")
        prev = acc if kept else start
    lows = [baseline, *table["acc"]] + (list(table["acc_lo"]) if "acc_lo" in table else [])
    lo = max(0.0, min(lows) - 0.05)
    ax.set(xticks=range(len(table)), xlim=(-0.6, len(table) - 0.1), ylim=(lo, 1.04), ylabel=ylabel, title=title)
    ax.set_xticklabels([textwrap.fill(s, 18) for s in table["step"]], fontsize=8)
    return ax


# ---------------------------------------------------------------- the lesson's verdicts

def confusion_pairs(targets, probs, k: int) -> list[tuple[int, int]]:
    """Ordered (actual, predicted) class pairs, most confused first: by count of errors, then by the
    probability the model gave the wrong class (so a ranking exists even without errors)."""
    targets, probs = np.asarray(targets), np.asarray(probs, dtype=float)
    preds = probs.argmax(1)
    hard = metrics.confusion_matrix(targets, preds, k)
    soft = np.zeros((k, k))
    np.add.at(soft, targets, probs)
    pairs = [(a, p) for a in range(k) for p in range(k) if a != p]
    return sorted(pairs, key=lambda ap: (-hard[ap], -soft[ap], ap))


def verdict_confusion(a_targets, a_probs, b_targets, b_probs, classes: Sequence[str], top: int = 10,
                      names: tuple[str, str] = ("validation", "test")) -> dict:
    """Claim 23 measured: do the pairs one split's confusion matrix names as most confused take more than
    their even share of the errors on another split?

    Each split names its `m` most confused ordered pairs (actual -> predicted): the `top` pairs the
    lesson's `most_confused` table lists, at most half of the K(K-1) pairs (one with two classes). We count
    how many of the *other* split's errors fall in them, both ways round. If the matrix showed nothing,
    errors would be spread over the K(K-1) ordered pairs and the named ones would get m/(K(K-1)) of them.
    The effect: the share of errors in the named pairs minus that even share, with a Clopper-Pearson
    interval. Returns {"verdict": Verdict or None (fewer than two errors), "pairs" (each split's named pairs,
    most confused first), "hits", "errors", "bar"}.
    """
    k = len(classes)
    m = max(1, min(int(top), k * (k - 1) // 2))
    splits = [(np.asarray(a_targets), np.asarray(a_probs, dtype=float)),
              (np.asarray(b_targets), np.asarray(b_probs, dtype=float))]
    named = [confusion_pairs(t, p, k)[:m] for t, p in splits]
    hits, errors = 0, 0
    for pairs, (targets, probs) in zip(named, reversed(splits)):   # each split's pairs, the other split's errors
        preds = probs.argmax(1)
        wrong = preds != targets
        errors += int(wrong.sum())
        hits += sum(int((wrong & (targets == a) & (preds == p)).sum()) for a, p in pairs)
    shown = {f"named by {name}": [f"{classes[a]} -> {classes[p]}" for a, p in pairs]
             for name, pairs in zip(names, named)}
    bar = m / (k * (k - 1))
    verdict = None
    if errors >= 2:   # one error cannot show a pattern
        which = "pair" if m == 1 else f"{m} ordered pairs"
        verdict = claims.share_above(
            23, hits, errors, bar,
            f"share of the errors that fall in the {which} (actual -> predicted) the *other* split's confusion "
            f"matrix names as most confused ({names[0]} names them for the {names[1]} errors and the other way "
            f"round), against {m}/(K(K-1)) = {bar:.1%}, the share if errors were spread evenly over the "
            f"{k * (k - 1)} ordered pairs of {k} classes")
    return {"verdict": verdict, "pairs": shown, "hits": hits, "errors": errors, "bar": bar}


def many_class_confusion(dataset: str | os.PathLike = "dtd10", backbone: str = "efficientnet_lite0",
                         image_size: int = 128, seed: int = 0, device="cpu", folds: int = 5, C: float = 0.1,
                         batch_size: int = 8) -> dict:
    """Claim 23 where the lesson's dataset has too few classes for a matrix to single out a pair.

    Every image of a many-class dataset gets an out-of-fold prediction from a linear probe on the frozen
    body's features (scikit-learn, `folds`-fold stratified cross-validation, so no image is predicted by a
    model that saw it); the images are then split into two seeded, stratified halves and `verdict_confusion`
    compares the halves. Features come from the shared cache (lesson 4 computes dtd10's at 128 px). `C` is
    fixed, not tuned: the claim is about what the matrix shows, and a fixed probe costs 5 fits, not 45.
    Small feature batches: on a CPU, 32 images at a time are no faster than 8 but peak ~180 MB higher,
    on top of everything the lesson already holds.
    Returns `verdict_confusion`'s dict plus "dataset", "classes", "targets", "probs" (out-of-fold) and "accuracy".
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    splits = data.get_splits(dataset, seed=seed, image_size=image_size)
    if len(splits.classes) < 3:
        raise ValueError(f"many_class_confusion needs a dataset with at least 3 classes; {splits.name!r} has "
                         f"{len(splits.classes)}")
    net = models.create(backbone, num_classes=len(splits.classes))
    train_fs, val_fs = features.precompute_splits(net, splits, image_size, batch_size=batch_size, device=device)
    x = torch.cat([train_fs.x, val_fs.x]).float().numpy()
    y = torch.cat([train_fs.y, val_fs.y]).numpy()
    k = min(folds, int(np.bincount(y).min()))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    probs = cross_val_predict(probe, x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                              method="predict_proba")
    a, b = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=seed)
    out = verdict_confusion(y[a], probs[a], y[b], probs[b], splits.classes, names=("half A", "half B"))
    return {**out, "dataset": splits.name, "classes": list(splits.classes), "targets": y, "probs": probs,
            "accuracy": float((probs.argmax(1) == y).mean())}


def verdict_retrain(retrained_probs, train_only_probs, targets, n_train: int, n_all: int,
                    seed: int = 0) -> claims.Verdict:
    """Claim 24 measured: the retrained model (training + validation images, the choices made on
    validation replayed) against the same recipe's model trained on the training images only, by the
    log-loss it saves on the test images neither saw (paired bootstrap over them; accuracy beside it).

    Why the loss: a few dozen test images move accuracy in steps of one or two points, while more data
    mostly shows as better-placed probabilities on every image.
    """
    return claims.compare_predictions(
        24, retrained_probs, train_only_probs, targets,
        f"test log-loss of the recipe's model trained on the training images only ({n_train:,}) minus the recipe "
        f"retrained on training + validation images ({n_all:,}, the LRs, epochs and kept steps chosen on "
        f"validation replayed), paired over the test images neither saw", seed=seed)


def image_size_table(images: data.ImageList, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Width, height and mode of up to `n` images (read from the file headers, no decoding)."""
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
             "model": models.copy_state(net, to_cpu=True)}
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
        raise ValueError(f"{path} is not a model saved by tlkit.lessons.l08_recipe.save_model (format {state.get('format')})")
    net = models.create(state["backbone"], len(state["classes"]), pretrained=False, **state["head"])
    net.load_state_dict(state["model"])
    return ModelBundle(net.to(device).eval(), state["classes"], state["preprocessing"])


@torch.no_grad()
def predict_files(bundle: ModelBundle, paths: Sequence, batch_size: int = 8) -> pd.DataFrame:
    """Predicted class and its probability for image files on disk (one row per file, in order).

    Items may also be images held in memory (numpy arrays, as the embedded digits are); their `file` is
    "array <i>" and their `path` empty.
    """
    tfm, net = bundle.transform, bundle.net.eval()
    device = tta.model_device(net)
    items = [p if isinstance(p, np.ndarray) else str(p) for p in paths]

    shorter = data.decode_size(bundle.preprocessing["image_size"], bundle.preprocessing["crop_pct"])

    def load(item):   # a JPEG decodes at the reduced scale the recipe's own evaluation uses
        return Image.fromarray(item).convert("RGB") if isinstance(item, np.ndarray) else data.load_rgb(item, shorter)

    probs = []
    for i in range(0, len(items), batch_size):
        x = torch.stack([tfm(load(item)) for item in items[i:i + batch_size]]).to(device)
        probs.append(net(x).float().softmax(1).cpu())
    probs = torch.cat(probs) if probs else torch.empty(0, len(bundle.classes))
    p, idx = probs.max(1) if len(probs) else (torch.empty(0), torch.empty(0, dtype=torch.long))
    return pd.DataFrame({"file": [f"array {i}" if isinstance(q, np.ndarray) else Path(q).name for i, q in enumerate(items)],
                         "path": ["" if isinstance(q, np.ndarray) else q for q in items],
                         "predicted": [bundle.classes[int(i)] for i in idx], "class_index": idx.tolist(),
                         "probability": p.tolist()})
