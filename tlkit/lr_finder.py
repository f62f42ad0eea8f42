"""LR range test (Smith 2015, fastai's `lr_find`): sweep the learning rate, watch the loss, suggest a rate.

The sweep trains for real, so it leaves no trace: weights, buffers, gradients, train/eval modes,
optimizer state and every RNG are restored bit for bit, whether it ends normally, stops on
divergence or raises (the most common complaint about LR finders is "it changed my model").
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ParameterError
from .train import CancelFit, check_lr, rng_state, set_rng_state
from .validate import check_choice, check_positive, check_positive_int, check_unit_interval
from .models import copy_state

__all__ = ["LRFinder", "LRFinderResult", "Suggestion", "divergence_lr", "longest_valley", "lr_find",
           "lr_from_finder", "lr_schedule", "plot_lr_curves", "plot_lr_find", "smooth_losses", "state_equal",
           "suggest", "suggest_min10", "suggest_steep", "suggest_valley", "FLAT_RTOL", "MIN_POINTS", "STEEP_SPAN",
           "SUGGESTION_RULES"]

SUGGESTION_RULES = ("min10", "steep", "valley")
MIN_POINTS = 5  # fewer points than this after trimming: no rule can say anything useful
FLAT_RTOL = 1e-3  # the curve counts as flat when it varies by less than 0.1% of its level
STEEP_SPAN = 0.5  # decades of LR over which `steep` measures the slope


# ----------------------------------------------------------------------------- schedule & smoothing
def lr_schedule(start_lr: float, end_lr: float, num_it: int, mode: str = "exp") -> np.ndarray:
    """The `num_it` learning rates of the sweep, from `start_lr` to `end_lr` inclusive."""
    _check_range(start_lr, end_lr, num_it, mode)
    return (np.geomspace if mode == "exp" else np.linspace)(start_lr, end_lr, num_it)


def smooth_losses(losses, beta: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average (what the sweep compares against its best).

    Dividing by `1 - beta**(t+1)` removes the pull towards zero of an average that starts at 0,
    so the first points are usable. `beta=0` returns the raw losses.
    """
    check_unit_interval("beta", beta, 0.98, include_one=False)
    losses = np.asarray(losses, dtype=float)
    out, avg = np.empty_like(losses), 0.0
    for t, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out[t] = avg / (1 - beta ** (t + 1))
    return out


# ----------------------------------------------------------------------------- suggestions
@dataclass
class Suggestion:
    """One rule's suggested LR; `lr is None` when the curve does not allow one, `reason` says why."""

    name: str
    lr: float | None
    point: tuple[float, float] | None = None  # (lr, loss) on the curve at the suggested LR
    reason: str = ""
    anchor: tuple[float, float] | None = None  # the point the rule starts from (min10: the minimum)

    def __bool__(self) -> bool:
        return self.lr is not None


def _no_suggestion(name: str, reason: str, warn: bool) -> Suggestion:
    if warn:
        warnings.warn(f"lr_find {name}: {reason}", stacklevel=3)
    return Suggestion(name, None, None, reason)


def suggest_min10(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """The notes' rule: the LR at the lowest loss, divided by 10 (one order of magnitude less)."""
    i = int(np.argmin(losses))
    if i == 0:
        return _no_suggestion("min10", "the loss is lowest at the first LR: start_lr is too high "
                              "or skip_start too large", warn=False)
    lr = float(lrs[i] / 10)
    return Suggestion("min10", lr, (lr, _loss_at(lrs, losses, lr)), anchor=(float(lrs[i]), float(losses[i])))


def _loss_at(lrs: np.ndarray, losses: np.ndarray, lr: float) -> float:
    """The curve's loss at `lr` (interpolated in log LR; clamped to the ends of the sweep)."""
    return float(np.interp(np.log(lr), np.log(lrs), losses))


def suggest_steep(lrs: np.ndarray, losses: np.ndarray, span: float = STEEP_SPAN) -> Suggestion:
    """Steepest descent of the loss against log(lr), measured over `span` decades of LR.

    `span=0` is fastai's `steep` (slope between neighbours, left end of the steepest segment);
    a pointwise slope of a noisy curve is mostly noise, so by default the slope is taken across
    half a decade and reported at the middle of the steepest window.
    """
    log_lr = np.log(lrs)
    per_decade = (len(lrs) - 1) / max(np.log10(lrs[-1] / lrs[0]), 1e-12)
    k = min(max(int(round(span * per_decade)), 1), len(lrs) - 1)
    slopes = (losses[k:] - losses[:-k]) / (log_lr[k:] - log_lr[:-k])
    i = int(np.argmin(slopes))
    if slopes[i] >= 0:
        return _no_suggestion("steep", "the loss never decreases: start_lr is too high", warn=False)
    i += k // 2
    return Suggestion("steep", float(lrs[i]), (float(lrs[i]), float(losses[i])))


def longest_valley(losses: np.ndarray) -> tuple[int, int]:
    """(start, end) of the longest decreasing (not necessarily contiguous) run, as fastai's `valley` finds it.

    `run[i]` = length of the longest strictly decreasing subsequence ending at i; the end is the
    first index with the longest run, the start is `end - run[end]` (fastai's convention).
    """
    run = np.ones(len(losses), dtype=int)
    for i in range(1, len(losses)):
        higher_before = losses[:i] > losses[i]
        if higher_before.any():
            run[i] = run[:i][higher_before].max() + 1
    end = int(np.argmax(run))
    return end - int(run[end]), end


def suggest_valley(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """fastai's default rule (ESRI): about 2/3 of the way down the longest valley of the curve.

    It lands where the loss still falls fast but well before the minimum, which is what a
    human reading the plot picks, and it is less sensitive to noise than the steepest point.
    """
    start, end = longest_valley(losses)
    if end - start < 3:
        return _no_suggestion("valley", "no valley: the loss never falls for more than two points",
                              warn=False)
    sections = (end - start) / 3
    i = min(max(start + int(sections) + int(sections / 2), 0), len(lrs) - 1)
    return Suggestion("valley", float(lrs[i]), (float(lrs[i]), float(losses[i])))


_RULES = {"min10": suggest_min10, "steep": suggest_steep, "valley": suggest_valley}


def _usable_curve(lrs, losses, skip_start: int, skip_end: int):
    """Trim the ends, cut at the first non-finite loss; (lrs, losses, None) or (.., .., reason)."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    stop = len(losses) - skip_end if skip_end else len(losses)
    lrs, losses = lrs[skip_start:stop], losses[skip_start:stop]
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        lrs, losses = lrs[: bad[0]], losses[: bad[0]]
    if len(losses) < MIN_POINTS:
        why = f"only {len(losses)} usable points (need {MIN_POINTS})"
        if len(bad):
            why += f"; the loss is NaN/inf from point {bad[0] + skip_start} on"
        return lrs, losses, why + ": run more iterations, lower end_lr, or trim less"
    spread = losses.max() - losses.min()
    if spread <= FLAT_RTOL * max(abs(float(np.median(losses))), 1e-12):
        return lrs, losses, (f"the curve is flat (loss varies by {spread:.2g}): nothing is learned "
                             "in this LR range; check the parameters require grad and widen the range")
    return lrs, losses, None


def suggest(lrs, losses, rules=SUGGESTION_RULES, skip_start: int = 0, skip_end: int = 0,
            warn: bool = True) -> dict[str, Suggestion]:
    """Apply each rule to a (smoothed) loss curve; rules that cannot answer give `lr=None` and a reason.

    Non-finite losses end the usable curve (what follows a NaN says nothing); a flat or too-short
    curve gives no suggestion rather than an arbitrary point.
    """
    unknown = set(rules) - set(_RULES)
    if unknown:
        raise ParameterError(f"rules={rules!r}: unknown suggestion rule(s) {sorted(unknown)}; choose from "
                             f"{list(_RULES)}, e.g. rules={SUGGESTION_RULES!r}.")
    _check_skips(skip_start, skip_end)
    lrs, losses, problem = _usable_curve(lrs, losses, skip_start, skip_end)
    if problem:
        if warn:
            warnings.warn(f"lr_find: no suggestion: {problem}", stacklevel=2)
        return {name: Suggestion(name, None, None, problem) for name in rules}
    out = {name: _RULES[name](lrs, losses) for name in rules}
    if warn:
        for s in out.values():
            if s.lr is None:
                warnings.warn(f"lr_find {s.name}: {s.reason}", stacklevel=2)
    return out


# ----------------------------------------------------------------------------- result
@dataclass
class LRFinderResult:
    """What one sweep saw: LRs, raw and smoothed losses, suggestions and how it ended."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestions: dict[str, Suggestion]
    stopped_early: bool
    stop_reason: str
    num_it: int
    beta: float
    skip_start: int = 0
    skip_end: int = 0
    weights_restored: bool = field(default=False)
    loss_floor: float = 0.0         # smoothed losses below it counted as it when testing for divergence

    def suggest(self, beta: float | None = None, skip_start: int | None = None,
                skip_end: int | None = None, warn: bool = False) -> dict[str, Suggestion]:
        """Suggestions for another smoothing / trimming of the same sweep (what the sliders redo)."""
        beta = self.beta if beta is None else beta
        curve = smooth_losses(self.losses, beta)
        return suggest(self.lrs, curve,
                       skip_start=self.skip_start if skip_start is None else skip_start,
                       skip_end=self.skip_end if skip_end is None else skip_end, warn=warn)

    def lr(self, rule: str) -> float | None:
        """The suggested LR of one rule (None if it had none)."""
        return self.suggestions[rule].lr

    def plot(self, ax=None, **kwargs):
        """Loss against LR (log axis) with each suggestion as a marked point; returns the axes."""
        return plot_lr_find(self, ax=ax, **kwargs)


def plot_lr_find(result: LRFinderResult, ax=None, beta: float | None = None, skip_start: int | None = None,
                 skip_end: int | None = None, show_raw: bool = True, title: str | None = None):
    """Draw the raw and smoothed curve and mark the suggestions (fastai style)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    beta = result.beta if beta is None else beta
    skip_start = result.skip_start if skip_start is None else skip_start
    skip_end = result.skip_end if skip_end is None else skip_end
    stop = len(result.lrs) - skip_end if skip_end else len(result.lrs)
    window = slice(skip_start, max(stop, skip_start))
    curve = smooth_losses(result.losses, beta)
    if show_raw:
        ax.plot(result.lrs[window], result.losses[window], color="0.75", lw=0.8, label="raw loss")
    ax.plot(result.lrs[window], curve[window], color="C0", label=f"smoothed (beta={beta:g})")
    suggestions = suggest(result.lrs, curve, skip_start=skip_start, skip_end=skip_end, warn=False)
    for color, s in zip(("C1", "C2", "C3"), suggestions.values()):
        if s.point is not None:
            ax.plot(*s.point, "o", color=color, ms=8, label=f"{s.name}: {s.lr:.2g}")
        if s.anchor is not None:  # min10: the minimum it starts from, one decade right of the suggestion
            ax.plot(*s.anchor, "x", color=color, ms=9, mew=2, label="minimum")
            ax.plot([s.point[0], s.anchor[0]], [s.point[1], s.anchor[1]], ":", color=color, lw=1)
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title=title or "LR range test")
    _zoom(ax, curve[window], result.losses[window] if show_raw else None)
    ax.legend(fontsize=8)
    return ax


def _zoom(ax, curve: np.ndarray, raw: np.ndarray | None) -> None:
    """Y range from the lowest loss to the top of the descent: the divergence tail must not squash the rest."""
    finite = curve[np.isfinite(curve)]
    if not len(finite):
        return
    lowest = int(np.argmin(finite))
    lo, hi = finite[lowest], finite[: lowest + 1].max()
    if hi <= lo:  # the loss only rises: show all of it
        hi = finite.max()
    raw = raw[np.isfinite(raw)] if raw is not None else np.array([])
    if len(raw):
        lo = min(lo, float(np.percentile(raw, 5)))
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * abs(lo) + 1e-3
    ax.set_ylim(lo - pad, hi + pad)


def plot_lr_curves(results: dict[str, LRFinderResult], ax=None, rule="valley", beta: float | None = None):
    """Overlay the smoothed curves of several sweeps (e.g. before / after unfreezing), each with `rule` marked.

    `rule` names a suggestion rule or is a function of a result returning an LR (e.g. `divergence_lr`).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for color, (name, r) in zip((f"C{i}" for i in range(10)), results.items()):
        b = r.beta if beta is None else beta
        curve = smooth_losses(r.losses, b)
        ax.plot(r.lrs, curve, color=color, label=name)
        if callable(rule):
            lr = rule(r)
            point = None if lr is None else (lr, curve[int(np.argmin(np.abs(np.log(np.asarray(r.lrs) / lr))))])
            label = rule.__name__.replace("_lr", "").replace("_", " ")
        else:
            s = r.suggest(beta=b)[rule]
            lr, point, label = s.lr, s.point, rule
        if point is not None:
            ax.plot(*point, "o", color=color, ms=8, label=f"{name} {label}: {lr:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed loss")
    ax.legend(fontsize=8)
    return ax


def divergence_lr(result, rise: float = 2.0) -> float | None:
    """The first LR of a sweep from which the smoothed loss stays at `rise` times its lowest value so far (or more).

    The lowest value counts as at least the sweep's `loss_floor` (if it has one): near zero, one hard
    batch doubles the loss without anything breaking.
    """
    smoothed = np.asarray(result.smoothed, float)
    if not len(smoothed):
        return None
    best = np.minimum.accumulate(np.where(np.isfinite(smoothed), smoothed, np.inf))
    best = np.maximum(best, getattr(result, "loss_floor", 0.0))
    high = ~np.isfinite(smoothed) | ((smoothed >= rise * best) & (best > 0))
    # a real divergence does not recover: the first LR from which the loss stays high to the end of the
    # sweep (a short sweep's noisy first batches can double the loss for a step and come back down)
    stays = np.flatnonzero(np.logical_and.accumulate(high[::-1])[::-1])
    if len(stays):
        return float(result.lrs[stays[0]])
    return float(result.lrs[-1]) if result.stopped_early else None


def lr_from_finder(result, below_divergence: float = 10.0, rise: float = 2.0, fallback: float = 1e-3) -> float:
    """An LR `below_divergence` times below where the loss doubled, for a network whose head is trained.

    Why not the usual suggestions: once the head is trained, the training loss is already low and the
    curve is flat until training breaks, so 'valley' and 'steep' read noise; the one solid fact is
    where the loss takes off, and one order of magnitude below it is the notes' rule. A sweep whose
    loss never took off falls back to its 'valley' suggestion, then to `fallback`.
    """
    broke = divergence_lr(result, rise)
    if broke is not None:
        return broke / below_divergence
    return float(result.lr("valley") or fallback)


# ----------------------------------------------------------------------------- state snapshot
def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Everything the sweep may touch, copied (tensors cloned so later in-place updates cannot reach them)."""
    return {
        "model": copy_state(model),
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "optimizer": None if optimizer is None else copy.deepcopy(optimizer.state_dict()),
        "rng": rng_state(),
    }


def _restore(model: torch.nn.Module, optimizer, snap: dict) -> None:
    """Put back weights, buffers, grads, modes, optimizer state and RNGs exactly as snapshotted."""
    with torch.no_grad():
        model.load_state_dict(snap["model"])
    for p, g in zip(model.parameters(), snap["grads"]):
        p.grad = g
    for m, flag in zip(model.modules(), snap["training"]):
        m.training = flag
    if optimizer is not None:
        optimizer.load_state_dict(snap["optimizer"])
    set_rng_state(snap["rng"])


def state_equal(a: dict, b: dict) -> bool:
    """True when two `_snapshot`s are bit-for-bit identical (weights, grads, modes, optimizer, RNGs)."""
    return _same(a, b)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    return a == b


def _check_range(start_lr, end_lr, num_it, mode) -> None:
    """The swept LRs: 0 < start_lr < end_lr, at least 2 of them, a known spacing."""
    check_positive("start_lr", start_lr, 1e-7)
    check_positive("end_lr", end_lr, 10.0)
    if start_lr >= end_lr:
        raise ParameterError(f"need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}; "
                             "e.g. start_lr=1e-07, end_lr=10.0.")
    if check_positive_int("num_it", num_it, 100) < 2:
        raise ParameterError(f"num_it={num_it!r} must be an integer >= 2, e.g. num_it=100.")
    check_choice("mode", mode, ("exp", "linear"))


def _check_skips(skip_start, skip_end) -> None:
    if skip_start is not None:
        check_positive_int("skip_start", skip_start, 10, allow_zero=True)
    check_positive_int("skip_end", skip_end, 5, allow_zero=True)


def _check_args(start_lr, end_lr, num_it, mode, smooth, diverge, skip_start, skip_end, group_lrs):
    """Refuse sweep settings that would train wrongly or say nothing, before the model is touched."""
    _check_range(start_lr, end_lr, num_it, mode)
    check_unit_interval("smooth", smooth, 0.98, include_one=False)
    if diverge is not None and check_positive("diverge", diverge, 4.0) <= 1:
        raise ParameterError(f"diverge={diverge!r} must be > 1 (a multiple of the best loss) or None, "
                             "e.g. diverge=4.0.")
    _check_skips(skip_start, skip_end)
    if group_lrs is not None:
        check_lr(group_lrs, "group_lrs")


class LRFinder:
    """The range test as a `Learner.fit` callback: before each batch, set every group's LR to the next swept
    value (their ratios kept); after each loss, record it; stop (`CancelFit`) on a non-finite loss, on
    divergence (smoothed loss above `diverge` x its best, the best counted as at least `loss_floor`) or after
    the last LR.

    Why a callback: the sweep then runs in `fit`'s own step, so it inherits the learner's precision,
    `channels_last`, GradScaler and DDP, and there is one training step in tlkit, not two.
    """

    def __init__(self, schedule: np.ndarray, beta: float = 0.98, diverge: float | None = 4.0,
                 loss_floor: float = 0.0):
        self.schedule, self.beta, self.diverge, self.loss_floor = schedule, beta, diverge, loss_floor
        self.lrs, self.losses, self.smoothed = [], [], []
        self.reason, self._avg, self._best = "completed", 0.0, math.inf

    def before_fit(self, learn) -> None:
        self.ratios = _group_ratios(learn.opt)

    # the fit cache (`tlkit.fit_cache`) may read a sweep back instead of running it: these name the finder and
    # keep what it recorded
    def fit_cache_id(self, learn) -> str:
        from .fit_cache import value_id
        return value_id([self.schedule, self.beta, self.diverge, self.loss_floor, self.lrs, self.losses])

    def fit_cache_state(self) -> dict:
        return {"lrs": self.lrs, "losses": self.losses, "smoothed": self.smoothed, "reason": self.reason,
                "avg": self._avg, "best": self._best}

    def load_fit_cache_state(self, state: dict) -> None:
        self.lrs, self.losses, self.smoothed = list(state["lrs"]), list(state["losses"]), list(state["smoothed"])
        self.reason, self._avg, self._best = state["reason"], state["avg"], state["best"]

    def before_batch(self, learn) -> None:
        lr = float(self.schedule[len(self.lrs)])
        for group, ratio in zip(learn.opt.param_groups, self.ratios):
            group["lr"] = lr * ratio

    def after_loss(self, learn) -> None:
        lr, value = float(self.schedule[len(self.lrs)]), float(learn.loss.detach())
        if not math.isfinite(value):
            self.reason = f"non-finite loss ({value}) at lr={lr:.3g}"
            raise CancelFit
        self._value = value

    def after_batch(self, learn) -> None:
        lr, value, t = float(self.schedule[len(self.lrs)]), self._value, len(self.lrs)
        self._avg = self.beta * self._avg + (1 - self.beta) * value
        smooth = self._avg / (1 - self.beta ** (t + 1))
        self.lrs.append(lr), self.losses.append(value), self.smoothed.append(smooth)
        self._best = min(self._best, smooth)
        if self.diverge is not None and smooth > self.diverge * max(self._best, self.loss_floor):
            self.reason = (f"diverged at lr={lr:.3g}: smoothed loss {smooth:.3g} > "
                           f"{self.diverge:g} x best {max(self._best, self.loss_floor):.3g}")
            raise CancelFit
        if len(self.lrs) == len(self.schedule):
            raise CancelFit


def _group_ratios(optimizer) -> list[float]:
    """Each group's LR relative to the largest, so the sweep scales all groups together."""
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    top = max(lrs)
    return [lr / top for lr in lrs] if top > 0 else [1.0] * len(lrs)


def _default_optimizer(model):
    """Plain SGD with momentum 0.9 on the trainable parameters (the notes' setting)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("lr_find: the model has no trainable parameters (is everything frozen?)")
    return torch.optim.SGD(params, lr=1.0, momentum=0.9)


def _is_learner(obj) -> bool:
    return hasattr(obj, "net") and hasattr(obj, "dls")


def _sweep_learner(model, train_loader, loss_fn, optimizer, group_lrs, device, progress):
    """A `Learner` for the sweep: a learner's net, recipe, precision, layout and micro-batches, or a bare model's.

    It shares the network (so the sweep trains it, and `lr_find` restores it) but has its own optimizer,
    GradScaler and history, so the learner it came from keeps its own.
    """
    from .train import Learner
    loaders = SimpleNamespace(train=train_loader, val=None)
    if _is_learner(model):
        learn = model
        opt = (lambda groups, wd: optimizer) if optimizer is not None else learn.opt_factory
        return Learner(learn.net, SimpleNamespace(train=train_loader or learn.dls.train, val=None), opt=opt,
                       wd=learn.wd, loss_fn=loss_fn or learn.loss_fn, device=device or learn.device,
                       precision=learn.precision, channels_last=learn.channels_last, progress=progress,
                       micro_batch=learn.micro_batch)
    if train_loader is None:
        raise ValueError("lr_find needs a train_loader (or a Learner)")
    optimizer = optimizer if optimizer is not None else _default_optimizer(model)
    # channels_last=False: a bare model comes back exactly as it was given, memory layout included
    return Learner(model, loaders, opt=lambda groups, wd: optimizer, wd=0.0, loss_fn=loss_fn or F.cross_entropy,
                   device=device or next(model.parameters()).device, channels_last=False, progress=progress)


def lr_find(model, train_loader=None, loss_fn=None, optimizer=None, start_lr: float = 1e-7,
            end_lr: float = 10.0, num_it: int = 100, mode: str = "exp", smooth: float = 0.98,
            diverge: float | None = 4.0, device=None, skip_start: int | None = None, skip_end: int = 5,
            group_lrs=None, progress: bool = False, warn: bool = True, loss_floor: float = 0.0) -> LRFinderResult:
    """Run the LR range test and restore everything it touched; returns an `LRFinderResult`.

    `model` may be a `tlkit.Learner`: then its net, train loader, loss, optimizer recipe, precision and
    `channels_last` are used (`group_lrs` — float, `slice(lo, hi)` or list — fixes the ratios between
    parameter groups). With an explicit `optimizer`, every group's LR is scaled together and their ratios
    kept; the reported LR is the largest group's. `diverge=None` runs all `num_it` steps. Suggestions use
    the smoothed curve with `skip_start` (default `num_it // 10`) and `skip_end` points trimmed.
    `loss_floor`: the divergence tests count a best loss below it as it (for a network already near zero
    loss, whose noise would otherwise read as divergence).
    """
    _check_args(start_lr, end_lr, num_it, mode, smooth, diverge, skip_start, skip_end, group_lrs)
    check_positive("loss_floor", loss_floor, 0.1, allow_zero=True)
    net = model.net if _is_learner(model) else model
    sweeper = _sweep_learner(model, train_loader, loss_fn, optimizer, group_lrs, device, progress)
    loader = sweeper.dls.train
    if len(loader) == 0:
        raise ValueError("lr_find: the train loader yields no batches")
    schedule = lr_schedule(start_lr, end_lr, num_it, mode)
    finder = LRFinder(schedule, smooth, diverge, loss_floor)
    kept_opt = optimizer if optimizer is not None else None
    snap = _snapshot(net, kept_opt)
    try:
        sweeper.fit(math.ceil(num_it / len(loader)), 1.0 if group_lrs is None else group_lrs,
                    callbacks=[finder], validate=False)
    finally:
        _restore(net, kept_opt, snap)
    restored = state_equal(snap, _snapshot(net, kept_opt))
    skip_start = num_it // 10 if skip_start is None else skip_start
    smoothed = np.asarray(finder.smoothed, float)
    lrs_arr = np.asarray(finder.lrs, float)
    return LRFinderResult(lrs=lrs_arr, losses=np.asarray(finder.losses, float), smoothed=smoothed,
                          suggestions=suggest(lrs_arr, smoothed, skip_start=skip_start, skip_end=skip_end, warn=warn),
                          stopped_early=finder.reason != "completed", stop_reason=finder.reason, num_it=num_it,
                          beta=smooth, skip_start=skip_start, skip_end=skip_end, weights_restored=restored,
                          loss_floor=float(loss_floor))
