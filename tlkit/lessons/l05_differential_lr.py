"""Lesson 05 (notebooks/05_differential_lr.ipynb): differential learning rates, and how far fine-tuning moved
each layer group: the relative weight change ||W_after - W_before|| / ||W_before||.

Why a relative measure: early layers hold small weights in many tensors and the head holds a few
large ones, so absolute changes are not comparable across groups; the ratio says "by what fraction
did this group's weights move", which is what discriminative learning rates are meant to control.

The experiment (`study`): train the head, unfreeze, run one LR finder per setting (uniform, 3x, 10x
between groups, and group 0 frozen), then fine-tune from the same start, once per setting and seed;
verdicts on claims 18 and 19.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import models
from ..lr_finder import divergence_lr, lr_from_finder
from ..metrics import bootstrap_sum
from ..optim import differential_lrs, lrs_for_groups

__all__ = ["FineTuneRun", "Study", "change_table", "comparisons", "find_lr", "find_lrs",
           "finder_smoothing", "finetune_from", "first_conv", "frozen_bn_stats", "group_frozen", "group_labels",
           "group_param_names", "loss_floor", "plot_change_by_depth", "plot_change_by_group",
           "plot_filters", "plot_finder", "ratio_label", "relative_change", "relative_change_by_group",
           "relative_change_by_tensor", "relearn_advantage", "rule_advantage", "run_study",
           "similar_set_note", "weights_of", "study", "study_on", "train_head", "verdict_ratio_rule",
           "verdict_relearn", "FLOOR_OF_CHANCE", "FROZEN0"]


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


def weights_of(net: nn.Module) -> dict[str, torch.Tensor]:
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
    after = weights_of(net) if after is None else after
    return [relative_change(before, after, names) for names in group_param_names(net)]


def relative_change_by_tensor(net: nn.Module, before: dict[str, torch.Tensor],
                              after: dict[str, torch.Tensor] | None = None) -> pd.DataFrame:
    """Relative change of every weight tensor in network order: columns depth, name, group, rel_change.

    Biases and normalisation parameters are left out (one-dimensional tensors): they are tiny and
    their relative change is noisy, while conv/linear weights show the depth trend cleanly.
    """
    after = weights_of(net) if after is None else after
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
    correct: np.ndarray = field(repr=False, default=None)        # per validation image, after the run
    losses: np.ndarray = field(repr=False, default=None)         # per validation image log-loss, after the run
    first_filters: torch.Tensor = field(repr=False, default=None)  # the first convolution's weights, after
    first_filter_change: float = float("nan")                     # their relative change


def finetune_from(learn, start_state: dict, lr, epochs: int, schedule=None, seed: int = 0,
                  label: str = "", bn_stats: bool = True) -> FineTuneRun:
    """Reset `learn.net` to `start_state`, reseed, fit, and measure accuracy and per-group weight change.

    `bn_stats=False` keeps BatchNorm's running statistics frozen during the fit (see `frozen_bn_stats`).

    Why reset and reseed: two runs compared this way see the same starting weights, the same
    batches in the same order and the same augmentations, so only the learning rates differ.
    """
    from .. import env

    learn.net.load_state_dict(start_state)
    before = weights_of(learn.net)
    env.seed_everything(seed)
    _reseed_batches(learn, seed)  # the loader's (or its sampler's) generator: restart the batch order too
    with contextlib.nullcontext() if bn_stats else frozen_bn_stats(learn.net):
        history = learn.fit(epochs, lr, schedule=schedule)
    after = weights_of(learn.net)
    conv = _first_conv_name(learn.net)
    return FineTuneRun(label=label, lrs=lrs_for_groups(lr, len(learn.net.groups)),
                       acc=float(history["val_acc"].iloc[-1]), history=history,
                       rel_change=relative_change_by_group(learn.net, before, after),
                       by_tensor=relative_change_by_tensor(learn.net, before, after),
                       correct=learn.last_correct.cpu().numpy().astype(bool) if learn.last_correct is not None
                       else None,
                       losses=learn.last_losses.cpu().numpy() if learn.last_losses is not None else None,
                       first_filters=after[conv].clone(),
                       first_filter_change=relative_change(before, after, [conv]))


def ratio_label(ratio: float) -> str:
    """'uniform' for a ratio of 1, else e.g. '10x'."""
    return "uniform" if ratio == 1 else f"{ratio:g}x"


def train_head(task, net, epochs: int, lr: float, opt: str = "adamw", progress: bool | None = None) -> float:
    """Train `net`'s new head on precomputed body features (cheap: the body runs once); returns val accuracy."""
    from .. import features
    models.freeze(net)
    train_fs, val_fs = task.features(net, progress)
    learn = features.head_learner(net, train_fs, val_fs, task.batch_size, seed=task.seed, opt=opt,
                                  progress=progress)
    return float(learn.fit(epochs, lr)["val_acc"].iloc[-1])


FLOOR_OF_CHANCE = 0.05      # loss floor of the divergence tests, as a share of the chance-level loss ln K


def finder_smoothing(num_it: int, start_lr: float, end_lr: float) -> float:
    """The EMA factor that averages the loss over about one decade of LR: 1 - 1 / (steps per decade).

    Why not fastai's 0.98: that averages ~50 steps, fine over a 100-step sweep but, over 30 steps, the
    smoothed loss is the mean of the whole sweep and crosses 'doubled' decades after training broke.
    """
    per_decade = num_it / math.log10(end_lr / start_lr)
    return min(0.98, max(0.5, 1.0 - 1.0 / per_decade))


def loss_floor(net: nn.Module) -> float:
    """`FLOOR_OF_CHANCE` x ln K for a net with K outputs: below it, a trained head's loss is noise, not a level
    whose doubling means training broke."""
    return FLOOR_OF_CHANCE * math.log(models.output_classes(net))


def find_lr(learn, ratio: float, num_it: int = 100, bn_stats: bool = True, start_lr: float = 1e-5,
            end_lr: float = 1.0):
    """LR finder on the unfrozen net with the groups held `ratio` apart; the LRs it reports are the head's.

    The sweep smooths over about one decade of LR and ignores rises below `loss_floor`: after the head
    is trained the loss sits near zero, and without both, single hard batches read as divergence and the
    chosen LR moved by a decade between seeds.
    """
    from ..lr_finder import lr_find
    with contextlib.nullcontext() if bn_stats else frozen_bn_stats(learn.net):
        return lr_find(learn, group_lrs=differential_lrs(1.0, ratio, len(learn.net.groups)), num_it=num_it,
                       start_lr=start_lr, end_lr=end_lr, skip_end=2, warn=False,
                       smooth=finder_smoothing(num_it, start_lr, end_lr), loss_floor=loss_floor(learn.net))


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


# ---------------------------------------------------------------- lesson 05's fair comparison, over seeds

FROZEN0 = "uniform, group 0 frozen"


def first_conv(net: nn.Module) -> nn.Conv2d:
    """The network's first convolution: the layer whose filters look at the pixels."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError("the network has no Conv2d layer")


@contextlib.contextmanager
def group_frozen(net: nn.Module, group: int = 0):
    """Inside the block, layer group `group` is not trained (requires_grad False); afterwards as before."""
    params = list(net.groups[group].parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _reseed_batches(learn, seed: int) -> None:
    """Restart the training loader's batch order: its own generator, or its sampler's."""
    for holder in (learn.dls.train, getattr(learn.dls.train, "sampler", None)):
        gen = getattr(holder, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(seed)


def find_lrs(learn, start_state: dict, ratios=(1, 10, 3), num_it: int = 100, bn_stats: bool = True,
             ) -> dict[str, tuple[object, float]]:
    """One LR finder sweep per ratio from `start_state` (each setting gets its own head LR), keys as `ratio_label`.

    Why one sweep each: the LR at which training breaks depends on how fast the early groups move, so
    a uniform rate read off a sweep with the groups 10x apart would be set too high, and the
    comparison tilted against it.
    """
    out = {}
    for r in sorted(set(ratios)):
        learn.net.load_state_dict(start_state)
        finder = find_lr(learn, r, num_it, bn_stats)
        out[ratio_label(r)] = (finder, lr_from_finder(finder))
    learn.net.load_state_dict(start_state)
    return out


@dataclass
class Study:
    """Lesson 05 on one dataset: the head alone, one LR finder per setting, and every setting once per seed."""

    dataset: str
    kind: str                       # "similar" or "dissimilar"
    rule: float                     # the notes' step between groups for this kind (10 or 3)
    acc_head: float
    lrs: dict[str, float]           # setting -> head LR (from that setting's own finder)
    finders: dict[str, object]
    runs: dict[str, list[FineTuneRun]]   # setting -> one run per seed (same seeds, same order)
    seeds: list[int]
    filters_before: torch.Tensor = field(repr=False, default=None)

    @property
    def ratio_settings(self) -> list[str]:
        return [k for k in self.runs if k != FROZEN0]

    def correct(self, label: str) -> np.ndarray:
        """Per-image correctness `[seeds, images]` of one setting."""
        return np.stack([np.asarray(r.correct, dtype=float) for r in self.runs[label]])

    def losses(self, label: str) -> np.ndarray:
        """Per-image validation log-loss `[seeds, images]` of one setting."""
        return np.stack([np.asarray(r.losses, dtype=float) for r in self.runs[label]])

    def score(self, label: str, measure: str) -> np.ndarray:
        """`[seeds, images]` per-image score, higher = better: correctness, or minus the log-loss."""
        return self.correct(label) if measure == "accuracy" else -self.losses(label)

    def mean_rel_change(self, label: str) -> list[float]:
        return np.mean([r.rel_change for r in self.runs[label]], axis=0).tolist()

    def table(self) -> pd.DataFrame:
        """One row per setting: its LRs, accuracy per seed and mean, how far group 0 and the first filters moved."""
        rows = [{"dataset": self.dataset, "setting": "head only", "lr_head": float("nan"), "lr_early": 0.0,
                 "acc_mean": self.acc_head, "acc_per_seed": "", "group0_change": 0.0, "first_filters_change": 0.0}]
        for label, runs in self.runs.items():
            accs = [r.acc for r in runs]
            rows.append({"dataset": self.dataset, "setting": label, "lr_head": runs[0].lrs[-1],
                         "lr_early": runs[0].lrs[0], "acc_mean": float(np.mean(accs)),
                         "acc_per_seed": " ".join(f"{a:.3f}" for a in accs),
                         "group0_change": float(np.mean([r.rel_change[0] for r in runs])),
                         "first_filters_change": float(np.mean([r.first_filter_change for r in runs]))})
        return pd.DataFrame(rows)


def run_study(learn, start_state: dict, lrs: dict[str, float], seeds, epochs: int, bn_stats: bool = True,
              frozen0: bool = True) -> dict[str, list[FineTuneRun]]:
    """Every setting (ratio label -> its head LR) once per seed from `start_state`; plus, with `frozen0`,
    the uniform LR with layer group 0 not trained at all (claim 19's control).

    Runs with one seed share the start, the batches and their order; only the LRs differ. Every run
    is one SGDR cycle per epoch.
    """
    from ..schedules import sgdr
    n = len(learn.net.groups)
    runs: dict[str, list[FineTuneRun]] = {label: [] for label in lrs}
    if frozen0:
        runs[FROZEN0] = []
    for seed in seeds:
        for label, lr in lrs.items():
            ratio = 1.0 if label == "uniform" else float(label.rstrip("x"))
            runs[label].append(finetune_from(learn, start_state, differential_lrs(lr, ratio, n), epochs,
                                             sgdr(epochs, 1), seed, label, bn_stats))
        if frozen0:
            with group_frozen(learn.net, 0):
                run = finetune_from(learn, start_state, lrs["uniform"], epochs, sgdr(epochs, 1), seed, FROZEN0,
                                    bn_stats)
            run.lrs[0] = 0.0
            runs[FROZEN0].append(run)
    return runs


def study_on(learn, start_state: dict, dataset: str, kind: str, rule: float, acc_head: float, found: dict,
             seeds, epochs: int, bn_stats: bool = True, lr: float | None = None) -> Study:
    """Run every setting of `found` (label -> (finder, head LR), from `find_lrs`) once per seed, plus the
    group-0-frozen control; `lr` (if given) replaces every finder's LR."""
    lrs = {label: (chosen if lr is None else float(lr)) for label, (_, chosen) in found.items()}
    runs = run_study(learn, start_state, lrs, seeds, epochs, bn_stats)
    before = start_state[_first_conv_name(learn.net)].detach().cpu().float().clone()
    return Study(dataset, kind, rule, acc_head, lrs, {k: f for k, (f, _) in found.items()}, runs, list(seeds),
                 before)


def study(task, kind: str, rule: float, seeds, epochs: int, head_epochs: int, head_lr: float,
          ratios=(1, 10, 3), lr_find_iters: int = 100, opt: str = "adamw", bn_stats: bool = True,
          lr: float | None = None, progress: bool | None = None) -> Study:
    """Lesson 05's whole experiment on one dataset: head -> unfreeze -> one finder per setting -> runs per seed."""
    net = task.net()
    acc_head = train_head(task, net, head_epochs, head_lr, opt, progress)
    models.unfreeze(net)
    learn = task.learner(net, task.loaders(), opt=opt, progress=progress)
    start = models.copy_state(net)
    found = find_lrs(learn, start, ratios, lr_find_iters, bn_stats)
    return study_on(learn, start, task.name, kind, rule, acc_head, found, seeds, epochs, bn_stats, lr)


def _first_conv_name(net: nn.Module) -> str:
    conv = first_conv(net)
    return next(name for name, p in net.named_parameters() if p is conv.weight)


# ---------------------------------------------------------------- intervals over seeds and images, verdicts

def rule_advantage(st: Study, measure: str = "loss") -> np.ndarray:
    """`[seeds, images]`: the rule's ratio minus the mean of the other ratio settings, in accuracy or in
    log-loss saved (`measure`; positive: the rule did better)."""
    rule = ratio_label(st.rule)
    others = [k for k in st.ratio_settings if k != rule]
    return st.score(rule, measure) - np.mean([st.score(k, measure) for k in others], axis=0)


def relearn_advantage(st: Study, measure: str = "loss") -> np.ndarray:
    """`[seeds, images]`: group 0 trained (uniform LR) minus group 0 frozen (same LR elsewhere), in accuracy or
    in log-loss saved."""
    return st.score("uniform", measure) - st.score(FROZEN0, measure)


def _n(parts) -> int:
    """Validation images behind the parts (each part is `[seeds, images]`)."""
    return int(sum(np.shape(d)[-1] for _, d in parts))


def _accuracy_aside(parts) -> str:
    """The same weighted difference in accuracy, with its interval, for the verdict's `aside`."""
    from ..claims import points_aside
    return points_aside("accuracy", *bootstrap_sum(parts))


def verdict_ratio_rule(similar: Study, dissimilar: Study):
    """Claim 18: on each dataset the rule's ratio minus the mean of the other settings, averaged over both.

    Judged by the validation log-loss saved per image (accuracy beside it). Why: a few hundred images move
    accuracy in steps of a third of a point, while every image's loss shows how well each setting fits.
    """
    from .. import claims
    parts = [(0.5, rule_advantage(similar)), (0.5, rule_advantage(dissimilar))]
    effect, low, high = bootstrap_sum(parts)
    aside = _accuracy_aside([(0.5, rule_advantage(similar, "accuracy")),
                             (0.5, rule_advantage(dissimilar, "accuracy"))])
    return claims.judge(18, effect, (low, high), _n(parts),
                        f"validation log-loss saved by the rule's ratio ({similar.rule:g}x on {similar.dataset}, "
                        f"{dissimilar.rule:g}x on {dissimilar.dataset}) against the mean of the other settings "
                        f"(uniform and the other ratio, each at its own finder's LR), averaged over both datasets, "
                        f"{len(similar.seeds)} seeds (the interval resamples seeds and images)",
                        unit="nats of log-loss", scale=1.0, runs=min(len(similar.seeds), len(dissimilar.seeds)),
                        aside=aside)


def verdict_relearn(dissimilar: Study):
    """Claim 19: on the dissimilar set, layer group 0 trained minus frozen (every other group at the same LR),
    in validation log-loss saved per image (accuracy beside it)."""
    from .. import claims
    d = relearn_advantage(dissimilar)
    effect, low, high = bootstrap_sum([(1.0, d)])
    aside = _accuracy_aside([(1.0, relearn_advantage(dissimilar, "accuracy"))])
    return claims.judge(19, effect, (low, high), d.shape[1],
                        f"on {dissimilar.dataset}, validation log-loss saved by training layer group 0 instead of "
                        f"freezing it (the other groups at the uniform finder LR), {d.shape[0]} seeds (the interval "
                        "resamples seeds and images)", unit="nats of log-loss", scale=1.0, runs=d.shape[0],
                        aside=aside)


def comparisons(st: Study) -> pd.DataFrame:
    """Every pairwise accuracy difference of one study, with its seed-and-image interval (points)."""
    pairs = [(a, b) for i, a in enumerate(st.ratio_settings) for b in st.ratio_settings[i + 1:]]
    if FROZEN0 in st.runs:
        pairs.append(("uniform", FROZEN0))
    from ..claims import verdict_of
    rows = []
    for a, b in pairs:
        effect, low, high = bootstrap_sum([(1.0, st.correct(a) - st.correct(b))])
        rows.append({"dataset": st.dataset, "A": a, "B": b, "A minus B (points)": 100 * effect,
                     "low": 100 * low, "high": 100 * high, "reads": verdict_of(low, high).replace(
                         "supported", "A better").replace("contradicted", "B better")})
    return pd.DataFrame(rows)


def similar_set_note(similar: Study) -> str:
    """What the similar set shows for claim 19 (group 0 trained minus frozen), generated from its interval."""
    from ..claims import verdict_of
    d = relearn_advantage(similar)
    effect, low, high = bootstrap_sum([(1.0, d)])
    reading = {"supported": "training the first layers helped here too",
               "contradicted": "training the first layers made the predictions worse here",
               "not shown at this size": "this run cannot tell the two apart"}[verdict_of(low, high)]
    aside = _accuracy_aside([(1.0, relearn_advantage(similar, "accuracy"))])
    return (f"For comparison, on the similar set **{similar.dataset}** the same difference (log-loss saved by training "
            f"group 0 instead of freezing it) is **{effect:+.3f} nats** (95 % interval {low:+.3f} to {high:+.3f}, "
            f"n = {d.shape[1]:,} images, {d.shape[0]} seeds; {aside}): {reading}.")


def plot_filters(before: torch.Tensor, after: torch.Tensor, n: int = 16, axes=None, title: str = ""):
    """The first `n` first-layer filters before and after fine-tuning, and their change magnified.

    Each filter is shown as a small RGB image (min-max scaled over all filters of the row); the third
    row scales the difference on its own, so even a tiny move is visible (read its size off the
    relative change, not off the picture).
    """
    import matplotlib.pyplot as plt
    rows = {"before": before[:n], "after": after[:n], "change (own scale)": (after - before)[:n]}
    if axes is None:
        _, axes = plt.subplots(3, n, figsize=(n * 0.6, 2.2))
    for r, (name, w) in enumerate(rows.items()):
        w = w.float()
        lo, hi = (float(before[:n].min()), float(before[:n].max())) if r < 2 else (float(w.min()), float(w.max()))
        for i in range(n):
            img = ((w[i] - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
            img = img.permute(1, 2, 0) if img.shape[0] == 3 else img.mean(0)
            axes[r, i].imshow(img.numpy(), interpolation="nearest")
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        axes[0, 0].figure.suptitle(title, fontsize=9)
    return axes
