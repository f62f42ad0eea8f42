"""LR range test (Smith 2015, fastai's `lr_find`): sweep the learning rate, watch the loss, suggest a rate.

The sweep trains for real, so it leaves no trace: weights, buffers, gradients, train/eval modes,
optimizer state and every RNG are restored bit for bit, whether it ends normally, stops on
divergence or raises (the most common complaint about LR finders is "it changed my model").
"""
from __future__ import annotations

import copy
import math
import random
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ParameterError
from .validate import check_choice, check_positive, check_positive_int, check_unit_interval

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


def plot_lr_curves(results: dict[str, LRFinderResult], ax=None, rule: str = "valley", beta: float | None = None):
    """Overlay the smoothed curves of several sweeps (e.g. before / after unfreezing), each with `rule` marked."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for color, (name, r) in zip((f"C{i}" for i in range(10)), results.items()):
        b = r.beta if beta is None else beta
        curve = smooth_losses(r.losses, b)
        ax.plot(r.lrs, curve, color=color, label=name)
        s = r.suggest(beta=b)[rule]
        if s.point is not None:
            ax.plot(*s.point, "o", color=color, ms=8, label=f"{name} {rule}: {s.lr:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed loss")
    ax.legend(fontsize=8)
    return ax


# ----------------------------------------------------------------------------- does the suggestion work?
def lr_grid(make_learner, lrs, epochs: int, **fit_kwargs):
    """Train a fresh learner per LR for the same budget; one row per LR with its final validation numbers.

    `make_learner()` must return a learner starting from the same weights every time (the
    comparison is only fair if nothing but the LR changes). A run whose loss goes NaN is a row
    with `diverged=True` instead of an error: diverging is a result here.
    """
    import pandas as pd

    from .train import NonFiniteLossError

    check_positive_int("epochs", epochs, 2)
    lrs = [check_positive(f"lrs[{i}]", lr, 1e-3) for i, lr in enumerate(lrs)]
    if not lrs:
        raise ParameterError("lrs=[] holds no learning rate to try, e.g. lrs=[1e-4, 1e-3, 1e-2].")
    rows = []
    for lr in lrs:
        learn = make_learner()
        try:
            hist = learn.fit(epochs, float(lr), **fit_kwargs)
            last = hist.iloc[-1]
            rows.append({"lr": float(lr), "train_loss": last.train_loss, "val_loss": last.val_loss,
                         "val_acc": last.val_acc, "diverged": False})
        except NonFiniteLossError:
            rows.append({"lr": float(lr), "train_loss": np.nan, "val_loss": np.nan, "val_acc": np.nan,
                         "diverged": True})
    return pd.DataFrame(rows)


def best_lr(grid) -> float:
    """The grid's LR with the lowest final validation loss (diverged runs never win)."""
    ok = grid[~grid.diverged]
    if ok.empty:
        raise ValueError("every LR in the grid diverged: move the grid to lower LRs")
    return float(ok.loc[ok.val_loss.idxmin(), "lr"])


def plot_lr_grid(grid, suggestions: dict[str, Suggestion] | None = None, axes=None):
    """Final validation loss and accuracy against LR, with the finder's suggestions as vertical lines."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, col in zip(axes, ("val_loss", "val_acc")):
        ax.plot(grid.lr, grid[col], "o-", color="0.3", label="grid run")
        if col == "val_loss":
            ax.set_yscale("log")  # a too-large LR can cost orders of magnitude in loss
        for x in grid.lr[grid.diverged]:
            ax.axvline(x, color="red", alpha=0.3, lw=6, label="diverged")
        for color, s in zip(("C1", "C2", "C3"), (suggestions or {}).values()):
            if s.lr is not None:
                ax.axvline(s.lr, color=color, ls="--", label=f"{s.name} {s.lr:.2g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel=col.replace("_", " "))
    axes[0].legend(fontsize=8)
    return axes


# ----------------------------------------------------------------------------- state snapshot
def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Everything the sweep may touch, copied (tensors cloned so later in-place updates cannot reach them)."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "optimizer": None if optimizer is None else copy.deepcopy(optimizer.state_dict()),
        "rng": _rng_state(),
    }


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


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
    rng = snap["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng:
        torch.cuda.set_rng_state_all(rng["cuda"])


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


# ----------------------------------------------------------------------------- the sweep
def _batches(loader):
    """Endless batches: start the loader again when it runs out (short loaders, long sweeps)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr_find: the train loader yields no batches")


def _group_ratios(optimizer) -> list[float]:
    """Each group's LR relative to the largest, so the sweep scales all groups together."""
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    top = max(lrs)
    return [lr / top for lr in lrs] if top > 0 else [1.0] * len(lrs)


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
    from .train import check_lr

    _check_range(start_lr, end_lr, num_it, mode)
    check_unit_interval("smooth", smooth, 0.98, include_one=False)
    if diverge is not None and check_positive("diverge", diverge, 4.0) <= 1:
        raise ParameterError(f"diverge={diverge!r} must be > 1 (a multiple of the best loss) or None, "
                             "e.g. diverge=4.0.")
    _check_skips(skip_start, skip_end)
    if group_lrs is not None:
        check_lr(group_lrs, "group_lrs")


def _move(batch, device):
    x, y = batch[0], batch[1]
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _sweep(model, loader, loss_fn, optimizer, schedule, beta, diverge, device, progress):
    """Train one batch per LR; stop when the smoothed loss exceeds `diverge` x its best or is not finite."""
    ratios = _group_ratios(optimizer)
    lrs, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    steps = zip(schedule, _batches(loader))
    if progress:
        from .progress import progress as progress_bar
        steps = progress_bar(steps, total=len(schedule), desc="lr_find", leave=False)
    model.train()
    for t, (lr, batch) in enumerate(steps):
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = float(lr) * ratio
        x, y = _move(batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            return lrs, losses, smoothed, f"non-finite loss ({value}) at lr={lr:.3g}"
        loss.backward()
        optimizer.step()
        avg = beta * avg + (1 - beta) * value
        smooth = avg / (1 - beta ** (t + 1))
        lrs.append(float(lr)), losses.append(value), smoothed.append(smooth)
        best = min(best, smooth)
        if diverge is not None and smooth > diverge * best:
            return lrs, losses, smoothed, (f"diverged at lr={lr:.3g}: smoothed loss {smooth:.3g} > "
                                           f"{diverge:g} x best {best:.3g}")
    return lrs, losses, smoothed, "completed"


def _default_optimizer(model):
    """Plain SGD with momentum 0.9 on the trainable parameters (the notes' setting)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("lr_find: the model has no trainable parameters (is everything frozen?)")
    return torch.optim.SGD(params, lr=1.0, momentum=0.9)


def _is_learner(obj) -> bool:
    return hasattr(obj, "net") and hasattr(obj, "dls")


def lr_find(model, train_loader=None, loss_fn=None, optimizer=None, start_lr: float = 1e-7,
            end_lr: float = 10.0, num_it: int = 100, mode: str = "exp", smooth: float = 0.98,
            diverge: float | None = 4.0, device=None, skip_start: int | None = None, skip_end: int = 5,
            group_lrs=None, progress: bool = False, warn: bool = True) -> LRFinderResult:
    """Run the LR range test and restore everything it touched; returns an `LRFinderResult`.

    `model` may be a `tlkit.Learner`: then its net, train loader, loss and optimizer recipe are used
    (`group_lrs` — float, `slice(lo, hi)` or list — fixes the ratios between parameter groups).
    With an explicit `optimizer`, every group's LR is scaled together and their ratios kept; the
    reported LR is the largest group's. `diverge=None` runs all `num_it` steps. Suggestions use the
    smoothed curve with `skip_start` (default `num_it // 10`) and `skip_end` points trimmed.
    """
    _check_args(start_lr, end_lr, num_it, mode, smooth, diverge, skip_start, skip_end, group_lrs)
    if _is_learner(model):
        return _learner_lr_find(model, start_lr=start_lr, end_lr=end_lr, num_it=num_it, mode=mode,
                                smooth=smooth, diverge=diverge, skip_start=skip_start, skip_end=skip_end,
                                group_lrs=group_lrs, progress=progress, warn=warn, optimizer=optimizer,
                                loss_fn=loss_fn, train_loader=train_loader, device=device)
    if train_loader is None:
        raise ValueError("lr_find needs a train_loader (or a Learner)")
    loss_fn = loss_fn or F.cross_entropy
    device = device or next(model.parameters()).device
    own_optimizer = optimizer is None
    optimizer = _default_optimizer(model) if own_optimizer else optimizer
    schedule = lr_schedule(start_lr, end_lr, num_it, mode)
    snap = _snapshot(model, None if own_optimizer else optimizer)
    try:
        lrs, losses, smoothed, reason = _sweep(model, train_loader, loss_fn, optimizer, schedule,
                                               smooth, diverge, device, progress)
    finally:
        _restore(model, None if own_optimizer else optimizer, snap)
    restored = state_equal(snap, _snapshot(model, None if own_optimizer else optimizer))
    skip_start = num_it // 10 if skip_start is None else skip_start
    smoothed = np.asarray(smoothed, float)
    lrs_arr = np.asarray(lrs, float)
    result = LRFinderResult(lrs=lrs_arr, losses=np.asarray(losses, float), smoothed=smoothed,
                            suggestions=suggest(lrs_arr, smoothed, skip_start=skip_start,
                                                skip_end=skip_end, warn=warn),
                            stopped_early=reason != "completed", stop_reason=reason, num_it=num_it,
                            beta=smooth, skip_start=skip_start, skip_end=skip_end,
                            weights_restored=restored)
    return result


def _learner_optimizer(learn, group_lrs):
    """The optimizer `learn.fit` would build (`learn.make_optimizer`, i.e. `tlkit.optim.param_groups`).

    Only the ratios of `group_lrs` matter: the sweep scales every group together.
    """
    return learn.make_optimizer(1.0 if group_lrs is None else group_lrs)


def _learner_lr_find(learn, group_lrs=None, optimizer=None, loss_fn=None, train_loader=None,
                     device=None, **kwargs) -> LRFinderResult:
    """`lr_find` on a Learner's net, train loader, loss and optimizer recipe."""
    optimizer = optimizer or _learner_optimizer(learn, group_lrs)
    return lr_find(learn.net, train_loader or learn.dls.train, loss_fn=loss_fn or learn.loss_fn,
                   optimizer=optimizer, device=device or getattr(learn, "device", None), **kwargs)


# ----------------------------------------------------------------------------- verdicts on the notes' claims
def item_losses(learn, loader) -> np.ndarray:
    """Cross-entropy of every item of `loader` under `learn`'s model (for image-by-image comparisons)."""
    logits, y = learn.get_logits(loader)
    return F.cross_entropy(logits, y, reduction="none").numpy()


def rule_losses(make_learner, rules, epochs: int, seeds, loader, **find_kwargs) -> tuple[dict, "pd.DataFrame"]:
    """Per-item losses on `loader` after training at each rule's suggestion, one sweep per seed.

    Why one sweep per seed: the claim is about the rule, not about one sweep's curve, so each seed
    sweeps `make_learner(seed)` afresh and then trains a fresh `make_learner(seed)` at every rule's
    LR. Returns `{rule: array [seeds, items]}` and a table of the suggested LRs per seed.
    """
    import pandas as pd

    from .env import seed_everything
    losses, chosen = {rule: [] for rule in rules}, []
    for seed in seeds:
        seed_everything(seed)
        result = lr_find(make_learner(seed), **find_kwargs)
        row = {"seed": seed}
        for rule in rules:
            row[rule] = lr = result.lr(rule)
            if lr is None:
                raise ValueError(f"seed {seed}: the sweep gave no {rule!r} suggestion ({result.stop_reason})")
            seed_everything(seed)
            learn = make_learner(seed)
            learn.fit(epochs, float(lr))
            losses[rule].append(item_losses(learn, loader))
        chosen.append(row)
    return {rule: np.stack(rows) for rule, rows in losses.items()}, pd.DataFrame(chosen)


def verdict_min10_vs_steep(loss_min10: np.ndarray, loss_steep: np.ndarray):
    """Claim 12: loss after training at the steepest point minus at min/10, `[seeds, images]` (resamples both)."""
    from . import claims
    steep, min10 = np.atleast_2d(loss_steep), np.atleast_2d(loss_min10)
    effect, low, high = claims.paired_bootstrap(steep, min10)
    return claims.judge(12, effect, (low, high), min10.shape[1],
                        f"validation loss after training at the steep suggestion minus at min/10, over "
                        f"{min10.shape[0]} sweeps and fits (the interval resamples seeds and images)",
                        unit="nats", scale=1.0, runs=min10.shape[0])


def suggestion_shifts(make_before, make_after, seeds, rule: str = "valley", **find_kwargs):
    """The `rule` suggestion of a sweep before and after a change (e.g. unfreezing), one pair per seed.

    `make_before(seed)` and `make_after(seed)` return the learners to sweep (e.g. the head on cached
    features of the frozen body, and the unfrozen network on images); the seed is set before each
    sweep. Returns one row per seed and the sweeps, `{seed: {"before": result, "after": result}}`.
    """
    import pandas as pd
    from .env import seed_everything
    rows, sweeps = [], {}
    for seed in seeds:
        sweeps[seed] = {}
        for when, make in (("before", make_before), ("after", make_after)):
            seed_everything(seed)
            sweeps[seed][when] = lr_find(make(seed), **find_kwargs)
        before, after = sweeps[seed]["before"].lr(rule), sweeps[seed]["after"].lr(rule)
        shift = math.log10(after / before) if before and after else float("nan")
        rows.append({"seed": seed, "lr_before": before, "lr_after": after, "decades": shift})
    return pd.DataFrame(rows), sweeps


def verdict_rerun_after_change(shifts):
    """Claim 13: how far (in decades) the suggestion moved, with a t interval over the seeds' sweeps."""
    from . import claims
    decades = shifts["decades"].dropna().to_numpy()
    if len(decades) < 2:
        raise ValueError("need at least two seeds with a suggestion before and after")
    mean, low, high = claims.mean_interval(decades)
    sign = 1.0 if mean >= 0 else -1.0          # moved either way: the size of the move, interval mirrored
    low, high = sorted((sign * low, sign * high))
    return claims.judge(13, sign * mean, (low, high), len(decades),
                        "how far the valley suggestion moved after unfreezing (either direction), "
                        "over repeated pairs of sweeps", unit="decades", scale=1.0)
