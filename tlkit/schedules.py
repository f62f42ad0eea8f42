"""Learning-rate schedules as per-step functions `f(t) -> multiplier`, with `t` = epochs elapsed (a float).

The fit loop sets every parameter group's lr to `group["initial_lr"] * f(t)` before each optimizer step,
so one schedule scales discriminative learning rates and keeps their ratios.
Every schedule has `.total_epochs` (None = open-ended) and `.restarts` (epochs where the LR jumps back up),
so it can be plotted and a fit can be sized from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ParameterError
from .validate import check_fraction, check_positive, check_positive_int, check_unit_interval

# t = step / steps_per_epoch is a float: a step that lands on a boundary up to rounding belongs to the next phase.
_EPS = 1e-9

__all__ = ["constant", "step_decay", "cosine", "sgdr", "one_cycle", "with_warmup", "lr_values",
           "restart_steps", "fit_epochs", "plot_schedule", "mark_restarts", "Constant", "StepDecay",
           "Cosine", "SGDR", "OneCycle", "Warmup", "cosine_anneal", "n_steps", "torch_sgdr_lrs"]


def _check_total(total_epochs) -> None:
    if total_epochs is not None:
        check_positive("total_epochs", total_epochs, 10)


def _check_warmup(warmup, total_epochs) -> None:
    """A warm-up of >= 0 epochs that leaves some of the run for the schedule itself."""
    check_positive("warmup", warmup, 1, allow_zero=True)
    if total_epochs is not None and warmup >= total_epochs:
        raise ParameterError(f"warmup={warmup!r} must be shorter than total_epochs={total_epochs!r}, "
                             f"e.g. warmup={total_epochs / 10!r}.")


def cosine_anneal(frac: float, start: float = 1.0, end: float = 0.0) -> float:
    """Half a cosine from `start` (frac=0) to `end` (frac=1)."""
    return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2


class _NoRestarts:
    """A schedule that never jumps back up (`restarts` is what the plots mark)."""

    @property
    def restarts(self) -> list[float]:
        return []


@dataclass(frozen=True)
class Constant(_NoRestarts):
    """The same learning rate at every step: the baseline."""
    total_epochs: float | None = None

    def __post_init__(self):
        _check_total(self.total_epochs)

    def __call__(self, t: float) -> float:
        return 1.0


@dataclass(frozen=True)
class StepDecay(_NoRestarts):
    """Step-wise annealing: multiply the LR by `gamma` at every milestone epoch (like `MultiStepLR`)."""
    milestones: tuple[float, ...]
    gamma: float = 0.1
    total_epochs: float | None = None

    def __post_init__(self):
        for i, m in enumerate(self.milestones):
            check_positive(f"milestones[{i}]", m, 30, allow_zero=True)
        check_positive("gamma", self.gamma, 0.1)
        _check_total(self.total_epochs)

    def __call__(self, t: float) -> float:
        return self.gamma ** sum(t + _EPS >= m for m in self.milestones)


@dataclass(frozen=True)
class Cosine(_NoRestarts):
    """One cosine from the base LR down to `min_frac * base` over `total_epochs` (like `CosineAnnealingLR`)."""
    total_epochs: float
    min_frac: float = 0.0     # the last LR, as a fraction of the base LR

    def __post_init__(self):
        check_positive("total_epochs", self.total_epochs, 10)
        check_unit_interval("min_frac", self.min_frac, 0.01)

    def __call__(self, t: float) -> float:
        return cosine_anneal(min(max(t / self.total_epochs, 0.0), 1.0), 1.0, self.min_frac)


@dataclass(frozen=True)
class SGDR:
    """Cosine annealing with warm restarts (Loshchilov & Hutter), in fastai's vocabulary.

    Cycle i lasts `cycle_len * cycle_mult**i` epochs; each anneals from the base LR to `min_frac * base`
    and then jumps back up. Past `total_epochs` the pattern goes on, as torch's scheduler does.
    """
    n_cycles: int
    cycle_len: float          # epochs in the first cycle
    cycle_mult: float = 1     # each cycle this many times as long as the one before
    min_frac: float = 0.0     # where each cycle ends, as a fraction of the base LR

    def __post_init__(self):
        check_positive_int("n_cycles", self.n_cycles, 3)
        check_positive("cycle_len", self.cycle_len, 1)
        if check_positive("cycle_mult", self.cycle_mult, 2) < 1:
            raise ParameterError(f"cycle_mult={self.cycle_mult!r} must be >= 1 (each cycle at least as long as the "
                                 "last), e.g. cycle_mult=2.")
        check_unit_interval("min_frac", self.min_frac, 0.01)

    @property
    def total_epochs(self) -> float:
        """Sum of the cycle lengths: a geometric series when cycle_mult > 1."""
        if self.cycle_mult == 1:
            return self.n_cycles * self.cycle_len
        return self.cycle_len * (self.cycle_mult ** self.n_cycles - 1) / (self.cycle_mult - 1)

    @property
    def cycle_ends(self) -> list[float]:
        """Epoch at which each cycle ends (where a snapshot is worth saving)."""
        ends, end = [], 0.0
        for i in range(self.n_cycles):
            end += self.cycle_len * self.cycle_mult ** i
            ends.append(end)
        return ends

    @property
    def restarts(self) -> list[float]:
        """Epochs where the LR jumps back to the top: the starts of cycles 2..n."""
        return self.cycle_ends[:-1]

    def position(self, t: float) -> tuple[int, float]:
        """(cycle index, fraction of that cycle done) at epoch `t`."""
        index, start, length = 0, 0.0, float(self.cycle_len)
        # A loop rather than a closed-form log: the log formula misplaces t that sits exactly on a boundary.
        while t + _EPS >= start + length:
            index, start, length = index + 1, start + length, length * self.cycle_mult
        return index, min(max((t - start) / length, 0.0), 1.0)

    def __call__(self, t: float) -> float:
        return cosine_anneal(self.position(t)[1], 1.0, self.min_frac)


@dataclass(frozen=True)
class OneCycle(_NoRestarts):
    """One-cycle (Smith): cosine up from `1/div` to 1 over `pct_start` of the run, then down to `1/(div*final_div)`."""
    total_epochs: float
    pct_start: float = 0.25   # share of the run spent climbing to the peak
    div: float = 25.0         # the first LR is the peak / div
    final_div: float = 1e4    # the last LR is the first / final_div

    def __post_init__(self):
        check_positive("total_epochs", self.total_epochs, 10)
        check_fraction("pct_start", self.pct_start, 0.25, include_one=False)
        check_positive("div", self.div, 25.0)
        check_positive("final_div", self.final_div, 1e4)

    def __call__(self, t: float) -> float:
        peak = self.pct_start * self.total_epochs
        if t < peak:
            return cosine_anneal(t / peak, 1 / self.div, 1.0)
        frac = min((t - peak) / (self.total_epochs - peak), 1.0)
        return cosine_anneal(frac, 1.0, 1 / (self.div * self.final_div))


@dataclass(frozen=True)
class Warmup:
    """Linear warm-up from `start_frac` to the inner schedule's first value over `epochs`, then the inner schedule.

    Why: large LRs on freshly initialised heads (or Adam's first noisy moments) can throw weights far away.
    """
    inner: object
    epochs: float
    start_frac: float = 0.0

    def __post_init__(self):
        if not callable(self.inner):
            raise ParameterError(f"schedule={self.inner!r} must be a schedule f(t) -> multiplier, "
                                 "e.g. schedule=cosine(10).")
        check_positive("warmup", self.epochs, 1)
        check_unit_interval("start_frac", self.start_frac, 0.0)

    def __call__(self, t: float) -> float:
        if t + _EPS >= self.epochs:
            return self.inner(t - self.epochs)
        return self.inner(0.0) * (self.start_frac + (1 - self.start_frac) * t / self.epochs)

    @property
    def total_epochs(self) -> float | None:
        inner = getattr(self.inner, "total_epochs", None)
        return None if inner is None else self.epochs + inner

    @property
    def restarts(self) -> list[float]:
        return [self.epochs + r for r in getattr(self.inner, "restarts", [])]

    @property
    def cycle_ends(self) -> list[float]:
        return [self.epochs + e for e in getattr(self.inner, "cycle_ends", [])]


def with_warmup(schedule, epochs: float, start_frac: float = 0.0):
    """Prefix `schedule` with a linear warm-up of `epochs` epochs (no-op when epochs == 0)."""
    check_positive("warmup", epochs, 1, allow_zero=True)
    return Warmup(schedule, epochs, start_frac) if epochs > 0 else schedule


def constant(total_epochs: float | None = None) -> Constant:
    """Constant learning rate."""
    return Constant(total_epochs)


def step_decay(milestones, gamma: float = 0.1, total_epochs: float | None = None, warmup: float = 0):
    """Step-wise annealing: LR times `gamma` at each milestone epoch (milestones count from after the warm-up)."""
    _check_total(total_epochs)
    _check_warmup(warmup, total_epochs)
    inner_total = None if total_epochs is None else total_epochs - warmup
    return with_warmup(StepDecay(tuple(milestones), gamma, inner_total), warmup)


def cosine(total_epochs: float, min_frac: float = 0.0, warmup: float = 0):
    """Cosine annealing over the whole run (`total_epochs` includes the optional warm-up)."""
    check_positive("total_epochs", total_epochs, 10)
    _check_warmup(warmup, total_epochs)
    return with_warmup(Cosine(total_epochs - warmup, min_frac), warmup)


def sgdr(n_cycles: int, cycle_len: float, cycle_mult: float = 1, min_frac: float = 0.0, warmup: float = 0):
    """SGDR: `n_cycles` cosine cycles, the first `cycle_len` epochs long, each `cycle_mult` times longer."""
    return with_warmup(SGDR(n_cycles, cycle_len, cycle_mult, min_frac), warmup)


def one_cycle(total_epochs: float, pct_start: float = 0.25, div: float = 25.0, final_div: float = 1e4) -> OneCycle:
    """One-cycle policy (LR only), for comparison with SGDR."""
    return OneCycle(total_epochs, pct_start, div, final_div)


def n_steps(epochs: float, steps_per_epoch: int) -> int:
    """Number of optimizer steps in `epochs` (fractional epochs allowed)."""
    check_positive("epochs", epochs, 10, allow_zero=True)
    check_positive_int("steps_per_epoch", steps_per_epoch, 10)
    return int(math.ceil(epochs * steps_per_epoch - _EPS))


def lr_values(schedule, epochs: float | None = None, steps_per_epoch: int = 1, base_lr: float = 1.0) -> np.ndarray:
    """LR at every optimizer step, as the fit loop would set it (`base_lr * f(step / steps_per_epoch)`)."""
    epochs = schedule.total_epochs if epochs is None else epochs
    if epochs is None:
        raise ParameterError("epochs=None: this schedule has no total_epochs, so pass the epochs to show, "
                             "e.g. epochs=10.")
    check_positive("base_lr", base_lr, 1e-3)
    return np.array([base_lr * schedule(s / steps_per_epoch) for s in range(n_steps(epochs, steps_per_epoch))])


def restart_steps(schedule, steps_per_epoch: int) -> list[int]:
    """Step indices of the restarts: the first step of every cycle after the first."""
    return [n_steps(r, steps_per_epoch) for r in getattr(schedule, "restarts", [])]


def fit_epochs(schedule) -> int:
    """The whole number of epochs `Learner.fit` runs for a schedule's `total_epochs`."""
    total = getattr(schedule, "total_epochs", None)
    if total is None or abs(total - round(total)) > 1e-9:
        raise ValueError(f"{schedule} lasts {total} epochs: give the schedule a whole number of total_epochs")
    return int(round(total))


def mark_restarts(ax, restarts, color="0.5", label="restart"):
    """Dotted vertical lines at the restart positions (same units as the x axis)."""
    for i, r in enumerate(restarts):
        ax.axvline(r, color=color, ls=":", lw=1, label=label if i == 0 else None)
    return ax


def plot_schedule(schedules, epochs: float | None = None, steps_per_epoch: int = 10, base_lr: float = 1.0,
                  ax=None, log: bool = False):
    """LR against iteration for one schedule or a dict {name: schedule}; restarts marked."""
    import matplotlib.pyplot as plt

    if callable(schedules):
        schedules = {type(schedules).__name__: schedules}
    ax = ax or plt.subplots(figsize=(7, 3))[1]
    for name, schedule in schedules.items():
        lrs = lr_values(schedule, epochs or schedule.total_epochs, steps_per_epoch, base_lr)
        line, = ax.plot(lrs, label=name)
        mark_restarts(ax, restart_steps(schedule, steps_per_epoch), color=line.get_color(), label=None)
    ax.set(xlabel="iteration", ylabel="learning rate", yscale="log" if log else "linear")
    if len(schedules) > 1:
        ax.legend(fontsize="small")
    return ax


# ------------------------------------------------------------ verdicts on the notes' claims

def torch_sgdr_lrs(schedule: SGDR, steps_per_epoch: int, base_lr: float = 1.0) -> np.ndarray:
    """The LR torch's `CosineAnnealingWarmRestarts` sets before each step of `schedule`'s budget (the reference)."""
    import torch
    from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts
    if schedule.cycle_mult != int(schedule.cycle_mult):
        raise ParameterError(f"cycle_mult={schedule.cycle_mult!r}: torch's scheduler takes integers, e.g. 2")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = CosineAnnealingWarmRestarts(opt, T_0=round(schedule.cycle_len * steps_per_epoch),
                                        T_mult=int(schedule.cycle_mult), eta_min=schedule.min_frac * base_lr)
    lrs = []
    for _ in range(n_steps(schedule.total_epochs, steps_per_epoch)):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.asarray(lrs)


