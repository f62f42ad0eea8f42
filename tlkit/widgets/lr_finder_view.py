"""Interactive LR-finder curve: sliders for smoothing and the skip-start / skip-end trims.

`redraw` is the whole callback, a plain function (result, axes, slider values -> suggestions), so
tests call it without a browser; `lr_finder_view` only wires it to ipywidgets. Re-smoothing and
re-trimming reuse the recorded raw losses: moving a slider never re-runs the sweep.

The trims are clamped so that at least ``MIN_POINTS`` points always remain (the two sliders' ranges
follow each other), and a suggestion whose marker would fall outside the zoomed y range is left off
the plot and its legend (the text below the plot still gives its LR, marked "off the plot").
"""
from __future__ import annotations

import html

import numpy as np

from ..lr_finder import MIN_POINTS, LRFinderResult, Suggestion, plot_lr_find
from ._static import figure_png, show_error, show_static_in_headless

__all__ = ["redraw", "describe", "clamp_trims", "slider_ranges", "drop_offscale_markers", "lr_finder_view"]


def clamp_trims(n_points: int, skip_start: int, skip_end: int, keep: int = MIN_POINTS) -> tuple[int, int]:
    """(skip_start, skip_end) reduced so that at least `keep` of `n_points` remain (skip_end gives way first)."""
    most = max(n_points - keep, 0)
    skip_start = min(max(int(skip_start), 0), most)
    skip_end = min(max(int(skip_end), 0), most - skip_start)
    return skip_start, skip_end


def drop_offscale_markers(ax, suggestions: dict[str, Suggestion]) -> list[str]:
    """Remove suggestion markers (and their min10 connector) outside the y range; rebuild the legend.

    Returns the names of the suggestions left off the plot.
    """
    lo, hi = sorted(ax.get_ylim())
    inside = lambda y: lo <= y <= hi  # noqa: E731
    dropped = []
    for s in suggestions.values():
        if s.point is None or inside(s.point[1]):
            continue
        dropped.append(s.name)
        points = [s.point] + ([s.anchor] if s.anchor is not None else [])
        for line in list(ax.lines):
            xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
            if len(xy) <= 2 and any(np.allclose(xy[0], p) or np.allclose(xy[-1], p) for p in points):
                if len(xy) == 1 and s.anchor is not None and np.allclose(xy[0], s.anchor) and inside(s.anchor[1]):
                    continue  # the minimum itself is on screen: keep it
                line.remove()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if ax.lines:
        ax.legend(fontsize=8)
    return dropped


def redraw(result: LRFinderResult, ax, smoothing: float, skip_start: int, skip_end: int,
           title: str | None = None) -> dict[str, Suggestion]:
    """Clear `ax`, draw the curve at these settings with its suggestions marked; return the suggestions.

    The trims are clamped (`clamp_trims`) so the curve never vanishes; markers outside the y range are
    dropped (`drop_offscale_markers`); ``ax.offscale`` lists the suggestions left off the plot.
    """
    skip_start, skip_end = clamp_trims(len(result.lrs), skip_start, skip_end)
    ax.clear()
    plot_lr_find(result, ax=ax, beta=smoothing, skip_start=skip_start, skip_end=skip_end, title=title)
    suggestions = result.suggest(beta=smoothing, skip_start=skip_start, skip_end=skip_end)
    ax.offscale = drop_offscale_markers(ax, suggestions)
    return suggestions


def describe(suggestions: dict[str, Suggestion], offscale=()) -> str:
    """One line per rule: its LR, or why it has none."""
    def line(s: Suggestion) -> str:
        if s.lr is None:
            return f"{s.name:>6}: none ({s.reason})"
        return f"{s.name:>6}: {s.lr:.3g}" + (" (off the plot: outside the loss range shown)" if s.name in offscale
                                             else "")
    return "\n".join(line(s) for s in suggestions.values())


def slider_ranges(result: LRFinderResult, skip_start: int = 0, skip_end: int = 0) -> dict[str, tuple[int, int]]:
    """(min, max) of each trim slider given the other's value: together they always leave MIN_POINTS points."""
    most = max(len(result.lrs) - MIN_POINTS, 0)
    skip_start, skip_end = clamp_trims(len(result.lrs), skip_start, skip_end)
    return {"skip_start": (0, most - skip_end), "skip_end": (0, most - skip_start)}


def lr_finder_view(result: LRFinderResult, figsize=(7, 4)):
    """Sliders (smoothing, skip start, skip end) redrawing the curve and suggestions; returns the widget box.

    In a headless run the box displays as a picture of its initial state (see ``_static``).
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    s0, e0 = clamp_trims(len(result.lrs), result.skip_start, result.skip_end)
    ranges = slider_ranges(result, s0, e0)
    # redrawn on release (as the gallery): a drag does not queue one redraw per pixel in the kernel
    smoothing = W.FloatSlider(value=result.beta, min=0.0, max=0.99, step=0.01, description="smoothing",
                              continuous_update=False)
    start = W.IntSlider(value=s0, min=0, max=ranges["skip_start"][1], description="skip start",
                        continuous_update=False)
    end = W.IntSlider(value=e0, min=0, max=ranges["skip_end"][1], description="skip end", continuous_update=False)
    out, text = W.Output(), W.HTML()  # the text is a widget value: readable without a browser
    out.add_class("tlkit-lrview-plot")
    text.add_class("tlkit-lrview-text")
    state = {"png": b"", "errors": [], "draws": 0, "busy": False}

    def update(_change=None):
        if state["busy"]:  # a range change below moved a slider: the running update draws its value
            return
        state["busy"] = True
        try:
            # the sliders' ranges follow each other: both trims together always leave MIN_POINTS points
            r = slider_ranges(result, start.value, end.value)
            end.max, start.max = r["skip_end"][1], r["skip_start"][1]
            draw()
        finally:
            state["busy"] = False

    def draw():
        try:
            fig, ax = plt.subplots(figsize=figsize)
            try:
                suggestions = redraw(result, ax, smoothing.value, start.value, end.value)
                state["png"] = figure_png(fig)
            finally:
                plt.close(fig)
        except Exception as exc:  # shown under the sliders, not only in the Log Console
            state["errors"].append(repr(exc))
            show_error(out, exc, "the LR-finder view")
            text.value = "<pre>(error: see above)</pre>"
            return
        with out:
            out.clear_output(wait=True)
            display(Image(state["png"]))
        text.value = f"<pre>{html.escape(describe(suggestions, ax.offscale))}</pre>"
        state["draws"] += 1

    for slider in (smoothing, start, end):
        slider.observe(update, names="value")
    update()
    box = W.VBox([W.HBox([smoothing, start, end]), out, text])
    box.add_class("tlkit-lrview")
    box.view_state = state
    show_static_in_headless(box, state["png"], "LR finder: " + " | ".join(
        line.strip() for line in html.unescape(text.value[5:-6]).splitlines()))
    display(box)
    return box
