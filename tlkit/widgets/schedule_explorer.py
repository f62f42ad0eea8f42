"""SGDR schedule explorer: sliders for n_cycles, cycle_len, cycle_mult and the LR bounds, redrawing LR vs iteration.

`schedule_curve` and `draw_schedule` are plain functions (tests call them without a browser). An
``lr_min`` above ``lr_max`` is refused with a message (it would draw the schedule upside down), and the
title counts the warm-up separately from the cycles.
"""
from __future__ import annotations

import numpy as np

from tlkit import schedules
from tlkit.errors import ParameterError

from ._static import figure_png, show_static_in_headless

__all__ = ["check_bounds", "schedule_curve", "schedule_title", "draw_schedule", "schedule_explorer"]


def check_bounds(lr_max: float, lr_min: float) -> None:
    """Refuse lr_min > lr_max: SGDR anneals *down* from lr_max to lr_min."""
    if not (lr_max > 0 and lr_min >= 0):
        raise ParameterError(f"lr_max={lr_max!r}, lr_min={lr_min!r}: both must be positive, e.g. lr_max=1e-2, "
                             "lr_min=1e-4.")
    if lr_min > lr_max:
        raise ParameterError(f"lr_min={lr_min:.3g} is above lr_max={lr_max:.3g}: SGDR anneals from lr_max down to "
                             f"lr_min, so lower lr_min or raise lr_max (e.g. lr_min={lr_max / 100:.3g}).")


def schedule_curve(n_cycles: int = 3, cycle_len: float = 1, cycle_mult: float = 2, lr_max: float = 1e-2,
                   lr_min: float = 1e-4, steps_per_epoch: int = 10, warmup: float = 0) -> tuple[np.ndarray, float]:
    """The widget's callback: (LR at every iteration, total epochs incl. warm-up) of the SGDR schedule the sliders describe.

    Raises ParameterError when lr_min > lr_max.
    """
    check_bounds(lr_max, lr_min)
    schedule = schedules.sgdr(n_cycles, cycle_len, cycle_mult, min_frac=lr_min / lr_max, warmup=warmup)
    return schedules.lr_values(schedule, steps_per_epoch=steps_per_epoch, base_lr=lr_max), schedule.total_epochs


def schedule_title(n_cycles, cycle_len, cycle_mult, total: float, n_steps: int, warmup: float = 0) -> str:
    """`3 cycles x 1 epochs, cycle_mult=2: 7 epochs + 0.5 warm-up = 7.5 epochs, 75 steps` (warm-up named)."""
    head = f"{n_cycles} cycles x {cycle_len:g} epochs, cycle_mult={cycle_mult:g}: "
    if warmup:
        return head + f"{total - warmup:g} epochs + {warmup:g} warm-up = {total:g} epochs, {n_steps} steps"
    return head + f"{total:g} epochs (no warm-up), {n_steps} steps"


def draw_schedule(n_cycles=3, cycle_len=1, cycle_mult=2, lr_max=1e-2, lr_min=1e-4, steps_per_epoch=10, warmup=0,
                  ax=None):
    """Plot the curve from `schedule_curve` with its restarts marked and the epoch budget in the title."""
    import matplotlib.pyplot as plt

    lrs, total = schedule_curve(n_cycles, cycle_len, cycle_mult, lr_max, lr_min, steps_per_epoch, warmup)
    schedule = schedules.sgdr(n_cycles, cycle_len, cycle_mult, warmup=warmup)
    ax = ax or plt.subplots(figsize=(7, 3))[1]
    ax.plot(lrs)
    schedules.mark_restarts(ax, schedules.restart_steps(schedule, steps_per_epoch))
    if warmup:
        ax.axvspan(0, warmup * steps_per_epoch, color="0.9", zorder=0, label="warm-up")
    ax.set(xlabel="iteration", ylabel="learning rate",
           title=schedule_title(n_cycles, cycle_len, cycle_mult, total, len(lrs), warmup))
    return ax


def schedule_explorer(steps_per_epoch: int = 10):
    """Interactive SGDR explorer (ipywidgets): move the sliders, watch the schedule and its epoch budget.

    In a headless run it displays as a picture of its initial state (see ``_static``).
    """
    import html

    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import HTML, Image, display

    state = {"png": b"", "title": "", "refused": None, "draws": 0}

    def show(**kwargs):
        try:
            check_bounds(kwargs["lr_max"], kwargs["lr_min"])
        except ParameterError as exc:  # refused, in words, where the plot would be
            state["refused"], state["title"] = str(exc), ""
            display(HTML(f'<p class="tlkit-schedule-refused" style="color:#b00"><b>Not drawn:</b> '
                         f"{html.escape(str(exc))}</p>"))
            return
        fig, ax = plt.subplots(figsize=(7, 3))
        try:
            draw_schedule(steps_per_epoch=steps_per_epoch, ax=ax, **kwargs)
            state["png"], state["title"], state["refused"] = figure_png(fig), ax.get_title(), None
        finally:
            plt.close(fig)
        display(Image(state["png"]))
        display(HTML(f'<p class="tlkit-schedule-title">{html.escape(state["title"])}</p>'))
        state["draws"] += 1

    ui = W.interactive(
        show,
        n_cycles=W.IntSlider(value=3, min=1, max=8, description="n_cycles"),
        cycle_len=W.FloatSlider(value=1, min=0.5, max=5, step=0.5, description="cycle_len"),
        cycle_mult=W.IntSlider(value=2, min=1, max=3, description="cycle_mult"),
        lr_max=W.FloatLogSlider(value=1e-2, base=10, min=-5, max=0, description="lr_max"),
        lr_min=W.FloatLogSlider(value=1e-4, base=10, min=-7, max=-1, description="lr_min"),
        warmup=W.FloatSlider(value=0, min=0, max=2, step=0.25, description="warmup"),
    )
    ui.add_class("tlkit-schedule")
    ui.explorer_state = state
    return show_static_in_headless(ui, state["png"], f"SGDR schedule: {state['title']}")
