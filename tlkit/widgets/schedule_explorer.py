"""SGDR schedule explorer: sliders for n_cycles, cycle_len, cycle_mult and the LR bounds, redrawing LR vs iteration."""
from __future__ import annotations

import numpy as np

from tlkit import schedules


def schedule_curve(n_cycles: int = 3, cycle_len: float = 1, cycle_mult: float = 2, lr_max: float = 1e-2,
                   lr_min: float = 1e-4, steps_per_epoch: int = 10, warmup: float = 0) -> tuple[np.ndarray, float]:
    """The widget's callback: (LR at every iteration, total epochs) of the SGDR schedule the sliders describe."""
    schedule = schedules.sgdr(n_cycles, cycle_len, cycle_mult, min_frac=lr_min / lr_max, warmup=warmup)
    return schedules.lr_values(schedule, steps_per_epoch=steps_per_epoch, base_lr=lr_max), schedule.total_epochs


def draw_schedule(n_cycles=3, cycle_len=1, cycle_mult=2, lr_max=1e-2, lr_min=1e-4, steps_per_epoch=10, warmup=0,
                  ax=None):
    """Plot the curve from `schedule_curve` with its restarts marked and the epoch budget in the title."""
    import matplotlib.pyplot as plt

    lrs, total = schedule_curve(n_cycles, cycle_len, cycle_mult, lr_max, lr_min, steps_per_epoch, warmup)
    schedule = schedules.sgdr(n_cycles, cycle_len, cycle_mult, warmup=warmup)
    ax = ax or plt.subplots(figsize=(7, 3))[1]
    ax.plot(lrs)
    schedules.mark_restarts(ax, schedules.restart_steps(schedule, steps_per_epoch))
    ax.set(xlabel="iteration", ylabel="learning rate",
           title=f"{n_cycles} cycles x {cycle_len} epochs, cycle_mult={cycle_mult}: {total:g} epochs, {len(lrs)} steps")
    return ax


def schedule_explorer(steps_per_epoch: int = 10):
    """Interactive SGDR explorer (ipywidgets): move the sliders, watch the schedule and its epoch budget."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    def show(**kwargs):
        draw_schedule(steps_per_epoch=steps_per_epoch, **kwargs)
        plt.show()

    return W.interactive(
        show,
        n_cycles=W.IntSlider(value=3, min=1, max=8, description="n_cycles"),
        cycle_len=W.FloatSlider(value=1, min=0.5, max=5, step=0.5, description="cycle_len"),
        cycle_mult=W.IntSlider(value=2, min=1, max=3, description="cycle_mult"),
        lr_max=W.FloatLogSlider(value=1e-2, base=10, min=-5, max=0, description="lr_max"),
        lr_min=W.FloatLogSlider(value=1e-4, base=10, min=-7, max=-1, description="lr_min"),
        warmup=W.FloatSlider(value=0, min=0, max=2, step=0.25, description="warmup"),
    )
