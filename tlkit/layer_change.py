"""How far fine-tuning moved each layer group: the relative weight change ||W_after - W_before|| / ||W_before||.

Why a relative measure: early layers hold small weights in many tensors and the head holds a few
large ones, so absolute changes are not comparable across groups; the ratio says "by what fraction
did this group's weights move", which is what discriminative learning rates are meant to control.

Also lesson 05's experiment: fine-tune one network from the same start, with the same seed and
budget, once per ratio between the groups' LRs (`compare_ratios`), after the recipe's head
training and LR finder (`run_recipe`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from .optim import differential_lrs, lrs_for_groups


def group_param_names(net: nn.Module) -> list[list[str]]:
    """Names (as in `net.state_dict()`) of each layer group's parameters, early -> head.

    A parameter in no group joins group 0 and one listed by two groups counts once (first group),
    the same rules `tlkit.optim.param_groups` uses.
    """
    name_of = {id(p): name for name, p in net.named_parameters()}
    seen: set[int] = set()
    names: list[list[str]] = []
    for group in net.groups:
        ids = [id(p) for p in group.parameters() if id(p) not in seen and id(p) in name_of]
        seen.update(ids)
        names.append([name_of[i] for i in ids])
    names[0] = [name_of[i] for i in name_of if i not in seen] + names[0]
    return names


def group_labels(n_groups: int) -> list[str]:
    """Readable names for `n_groups` layer groups: early, middle..., late, head."""
    if n_groups == 4:
        return ["0 early", "1 middle", "2 late", "3 head"]
    return [f"{i} head" if i == n_groups - 1 else f"{i}" for i in range(n_groups)]


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter (no buffers; half precision widened to float32)."""
    def copy_of(p: torch.Tensor) -> torch.Tensor:
        t = p.detach().to("cpu", copy=True)
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    return {name: copy_of(p) for name, p in net.named_parameters()}


def relative_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                    names: list[str] | None = None) -> float:
    """||after - before|| / ||before||, with the listed tensors taken together as one vector."""
    names = list(before) if names is None else names
    if not names:
        return float("nan")
    diff = sum(float((after[k].cpu().double() - before[k].cpu().double()).pow(2).sum()) for k in names)
    base = sum(float(before[k].cpu().double().pow(2).sum()) for k in names)
    return float(np.sqrt(diff) / np.sqrt(base)) if base > 0 else float("inf")


def relative_change_by_group(net: nn.Module, before: dict[str, torch.Tensor],
                             after: dict[str, torch.Tensor] | None = None) -> list[float]:
    """One relative weight change per layer group, early -> head (`after`: the net's current weights)."""
    after = snapshot(net) if after is None else after
    return [relative_change(before, after, names) for names in group_param_names(net)]


def relative_change_by_tensor(net: nn.Module, before: dict[str, torch.Tensor],
                              after: dict[str, torch.Tensor] | None = None) -> pd.DataFrame:
    """Relative change of every weight tensor in network order: columns depth, name, group, rel_change.

    Biases and normalisation parameters are left out (one-dimensional tensors): they are tiny and
    their relative change is noisy, while conv/linear weights show the depth trend cleanly.
    """
    after = snapshot(net) if after is None else after
    group_of = {name: g for g, names in enumerate(group_param_names(net)) for name in names}
    rows = [{"name": name, "group": group_of[name], "rel_change": relative_change(before, after, [name])}
            for name, p in net.named_parameters() if p.dim() > 1]
    table = pd.DataFrame(rows, columns=["name", "group", "rel_change"])
    table.insert(0, "depth", range(len(table)))
    return table


@contextlib.contextmanager
def frozen_bn_stats(net: nn.Module):
    """Inside the block, BatchNorm layers normalise with their stored statistics, even in training mode.

    Why: a few small batches of a new dataset would replace the ImageNet running statistics that the
    head was trained against; with them frozen, only the weights (and so the learning rates) change
    what the network computes. The BatchNorm scale and shift are still trained.
    """
    def use_running_stats(module, _inputs):
        module.train(False)

    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    flags = [m.training for m in layers]
    handles = [m.register_forward_pre_hook(use_running_stats) for m in layers]
    try:
        yield net
    finally:
        for h in handles:
            h.remove()
        for m, training in zip(layers, flags):  # the hook switched them to eval: leave them as they came
            m.training = training


@dataclass
class FineTuneRun:
    """What one fine-tuning run from a shared starting point produced."""

    label: str
    lrs: list[float]
    acc: float
    history: pd.DataFrame
    rel_change: list[float]
    by_tensor: pd.DataFrame = field(repr=False, default=None)


def finetune_from(learn, start_state: dict, lr, epochs: int, schedule=None, seed: int = 0,
                  label: str = "", bn_stats: bool = True) -> FineTuneRun:
    """Reset `learn.net` to `start_state`, reseed, fit, and measure accuracy and per-group weight change.

    `bn_stats=False` keeps BatchNorm's running statistics frozen during the fit (see `frozen_bn_stats`).

    Why reset and reseed: two runs compared this way see the same starting weights, the same
    batches in the same order and the same augmentations, so only the learning rates differ.
    """
    from . import env

    learn.net.load_state_dict(start_state)
    before = snapshot(learn.net)
    env.seed_everything(seed)
    shuffle = getattr(learn.dls.train, "generator", None)
    if shuffle is not None:  # a loader with its own generator: restart its batch order too
        shuffle.manual_seed(seed)
    with contextlib.nullcontext() if bn_stats else frozen_bn_stats(learn.net):
        history = learn.fit(epochs, lr, schedule=schedule)
    return FineTuneRun(label=label, lrs=lrs_for_groups(lr, len(learn.net.groups)),
                       acc=float(history["val_acc"].iloc[-1]), history=history,
                       rel_change=relative_change_by_group(learn.net, before),
                       by_tensor=relative_change_by_tensor(learn.net, before))


def copy_state(net: nn.Module) -> dict:
    """A deep copy of the full state dict (parameters and BatchNorm buffers) to restart runs from."""
    return copy.deepcopy(net.state_dict())


def ratio_label(ratio: float) -> str:
    """'uniform' for a ratio of 1, else e.g. '10x'."""
    return "uniform" if ratio == 1 else f"{ratio:g}x"


def compare_ratios(learn, start_state: dict, lr: float, ratios=(1, 10, 3), epochs: int = 1, seed: int = 0,
                   bn_stats: bool = True) -> dict[str, FineTuneRun]:
    """Fine-tune once per ratio (in increasing order) from `start_state`, same budget and seed; keys 'uniform', '3x'...

    Every run gives the head the same `lr` and uses SGDR with one-epoch cycles (`sgdr(epochs, 1)`), so
    the only difference between runs is how much the earlier groups may move.
    """
    from .schedules import sgdr
    n = len(learn.net.groups)
    return {ratio_label(r): finetune_from(learn, start_state, differential_lrs(lr, r, n), epochs, sgdr(epochs, 1),
                                          seed, ratio_label(r), bn_stats)
            for r in sorted(set(ratios))}


@dataclass
class Comparison:
    """The lesson's recipe on one dataset: head accuracy, the LR finder, and one fine-tuning run per ratio."""

    dataset: str
    ratio: float            # the rule's step between groups (10 similar, 3 dissimilar)
    acc_head: float
    lr: float               # the head's LR in every run
    finder: object
    runs: dict[str, FineTuneRun]

    @property
    def uniform(self) -> FineTuneRun:
        return self.runs["uniform"]

    @property
    def differential(self) -> FineTuneRun:
        """The run with the rule's ratio."""
        return self.runs[ratio_label(self.ratio)]

    def table(self) -> pd.DataFrame:
        """Accuracy of the head alone and of every run, with the LRs of the earliest group and the head."""
        rows = [{"dataset": self.dataset, "run": "head only", "acc": self.acc_head, "lr_early": 0.0,
                 "lr_head": float("nan")}]
        rows += [{"dataset": self.dataset, "run": r.label, "acc": r.acc, "lr_early": r.lrs[0], "lr_head": r.lrs[-1]}
                 for r in self.runs.values()]
        return pd.DataFrame(rows)


def train_head(task, net, epochs: int, lr: float, opt: str = "adamw", progress: bool | None = None) -> float:
    """Train `net`'s new head on precomputed body features (cheap: the body runs once); returns val accuracy."""
    from . import features, models
    models.freeze(net)
    train_fs, val_fs = task.features(net, progress)
    learn = features.head_learner(net, train_fs, val_fs, task.batch_size, seed=task.seed, opt=opt,
                                  progress=progress)
    return float(learn.fit(epochs, lr)["val_acc"].iloc[-1])


def make_task(dataset: str, image_size: int, fraction: float = 1.0, backbone: str = "efficientnet_lite0",
              batch_size: int = 32, seed: int = 0, device="cpu", max_val: int | None = None):
    """Lesson 01's in-memory `Task` with a seeded, stratified `fraction` of the training images.

    `max_val` caps the validation images (a stratified subset) to bound evaluation time.
    """
    from .strategies import make_task as load_task
    task = load_task(dataset, image_size, backbone, batch_size, seed, device)
    if fraction < 1:
        task = dataclasses.replace(task, train=task.train.subset(float(fraction), seed))
    if max_val is not None and max_val < len(task.val):
        task = dataclasses.replace(task, val=task.val.subset(int(max_val), seed))
    return task


def find_lr(learn, ratio: float, num_it: int = 100, bn_stats: bool = True, start_lr: float = 1e-5,
            end_lr: float = 1.0):
    """LR finder on the unfrozen net with the groups held `ratio` apart; the LRs it reports are the head's."""
    from .lr_finder import lr_find
    with contextlib.nullcontext() if bn_stats else frozen_bn_stats(learn.net):
        return lr_find(learn, group_lrs=differential_lrs(1.0, ratio, len(learn.net.groups)), num_it=num_it,
                       start_lr=start_lr, end_lr=end_lr, skip_end=2, warn=False)


def divergence_lr(result, rise: float = 2.0) -> float | None:
    """The first LR of a sweep where the smoothed loss reached `rise` times its lowest value so far."""
    smoothed = np.asarray(result.smoothed, float)
    if not len(smoothed):
        return None
    best = np.minimum.accumulate(np.where(np.isfinite(smoothed), smoothed, np.inf))
    broke = np.flatnonzero(~np.isfinite(smoothed) | ((smoothed >= rise * best) & (best > 0)))
    if len(broke):
        return float(result.lrs[broke[0]])
    return float(result.lrs[-1]) if result.stopped_early else None


def lr_from_finder(result, below_divergence: float = 10.0, rise: float = 2.0, fallback: float = 1e-3) -> float:
    """A head LR from a sweep after unfreezing: `below_divergence` times below where the loss doubled.

    Why not the usual suggestions: once the head is trained, the training loss is already low and the
    curve is flat until training breaks, so 'valley' and 'steep' read noise; the one solid fact is
    where the loss takes off, and one order of magnitude below it is the notes' rule. A sweep whose
    loss never took off falls back to its 'valley' suggestion, then to `fallback`.
    """
    broke = divergence_lr(result, rise)
    if broke is not None:
        return broke / below_divergence
    return float(result.lr("valley") or fallback)


def run_recipe(task, ratio: float, epochs: int, head_epochs: int, head_lr: float, other_ratios=(1,),
               lr: float | None = None, lr_find_iters: int = 100, opt: str = "adamw", bn_stats: bool = True,
               progress: bool | None = None) -> Comparison:
    """Train the head, unfreeze, run the LR finder with the groups `ratio` apart, then fine-tune per ratio.

    Runs `ratio` and every one of `other_ratios` (1 = uniform) from the same start with the same seed.
    `lr=None` takes the head's LR from the finder (`lr_from_finder`).
    """
    from . import models
    from .train import Learner
    net = task.net()
    acc_head = train_head(task, net, head_epochs, head_lr, opt, progress)
    models.unfreeze(net)
    learn = Learner(net, task.loaders(), opt=opt, device=task.device, progress=progress)
    finder = None
    if lr is None:
        finder = find_lr(learn, ratio, lr_find_iters, bn_stats)
        lr = lr_from_finder(finder)
    runs = compare_ratios(learn, copy_state(net), lr, (1, ratio, *other_ratios), epochs, task.seed, bn_stats)
    return Comparison(task.name, ratio, acc_head, lr, finder, runs)


def change_table(runs: list[FineTuneRun], labels: list[str] | None = None) -> pd.DataFrame:
    """Long table run, group, lr, rel_change: one row per run and layer group."""
    rows = []
    for run in runs:
        names = labels or group_labels(len(run.rel_change))
        rows += [{"run": run.label, "group": names[g], "lr": run.lrs[g], "rel_change": c}
                 for g, c in enumerate(run.rel_change)]
    return pd.DataFrame(rows)


def plot_change_by_group(runs: list[FineTuneRun], ax=None, title: str | None = None):
    """Bar chart of relative weight change per layer group, one bar colour per run (log scale)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    table = change_table(runs)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    sns.barplot(data=table, x="group", y="rel_change", hue="run", ax=ax)
    ax.set_yscale("log")
    ax.set_ylim(top=table["rel_change"].max() * 30)  # headroom on the log axis: the legend covers no bar
    ax.legend(loc="upper center", ncol=len(runs), fontsize=8)
    ax.set(xlabel="layer group", ylabel="||ΔW|| / ||W||", title=title or "how far each layer group moved")
    ax.grid(alpha=0.3, axis="y")
    return ax


def plot_finder(result, chosen_lr: float | None = None, ax=None, title: str | None = None):
    """The whole sweep (raw and smoothed loss) with where it diverged and the LR chosen from it."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="raw loss")
    ax.plot(result.lrs, result.smoothed, color="C0", label="smoothed loss")
    broke = divergence_lr(result)
    if broke is not None:
        ax.axvline(broke, color="C3", ls="--", label=f"loss doubled at {broke:.2g}")
    if chosen_lr is not None:
        ax.axvline(chosen_lr, color="k", ls=":", label=f"chosen head LR {chosen_lr:.2g}")
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if len(finite):
        ax.set_ylim(0, 1.1 * finite.max())
    ax.set(xscale="log", xlabel="head learning rate (other groups in ratio)", ylabel="training loss",
           title=title or "LR finder")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_change_by_depth(runs: list[FineTuneRun], ax=None, title: str | None = None):
    """Relative change of every weight tensor against its depth in the network, one line per run."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    for run in runs:
        ax.plot(run.by_tensor["depth"], run.by_tensor["rel_change"], ".-", label=run.label, alpha=0.8)
    ax.set_yscale("log")
    ax.set(xlabel="weight tensor (input -> output)", ylabel="||ΔW|| / ||W||",
           title=title or "relative change along the network")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax
