"""Interactive LR-finder curve: sliders for smoothing and the skip-start / skip-end trims.

`redraw` is the whole callback, a plain function (result, axes, slider values -> suggestions), so
tests call it without a browser; `lr_finder_view` only wires it to ipywidgets. Re-smoothing and
re-trimming reuse the recorded raw losses: moving a slider never re-runs the sweep.
"""
from __future__ import annotations

import html

from ..lr_finder import LRFinderResult, Suggestion, plot_lr_find

__all__ = ["redraw", "slider_ranges", "lr_finder_view"]


def redraw(result: LRFinderResult, ax, smoothing: float, skip_start: int, skip_end: int,
           title: str | None = None) -> dict[str, Suggestion]:
    """Clear `ax`, draw the curve at these settings with its suggestions marked; return the suggestions."""
    ax.clear()
    plot_lr_find(result, ax=ax, beta=smoothing, skip_start=skip_start, skip_end=skip_end, title=title)
    return result.suggest(beta=smoothing, skip_start=skip_start, skip_end=skip_end)


def describe(suggestions: dict[str, Suggestion]) -> str:
    """One line per rule: its LR, or why it has none."""
    return "\n".join(f"{s.name:>6}: {s.lr:.3g}" if s.lr is not None else f"{s.name:>6}: none ({s.reason})"
                     for s in suggestions.values())


def slider_ranges(result: LRFinderResult) -> dict[str, tuple[int, int]]:
    """(min, max) of each trim slider: together the trims always leave a few points to read."""
    most = max(len(result.lrs) - 5, 0)
    return {"skip_start": (0, most), "skip_end": (0, most)}


def lr_finder_view(result: LRFinderResult, figsize=(7, 4)):
    """Sliders (smoothing, skip start, skip end) redrawing the curve and suggestions; returns the widget box."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    ranges = slider_ranges(result)
    smoothing = W.FloatSlider(value=result.beta, min=0.0, max=0.99, step=0.01, description="smoothing")
    start = W.IntSlider(value=min(result.skip_start, ranges["skip_start"][1]), min=0,
                        max=ranges["skip_start"][1], description="skip start")
    end = W.IntSlider(value=min(result.skip_end, ranges["skip_end"][1]), min=0, max=ranges["skip_end"][1],
                      description="skip end")
    out, text = W.Output(), W.HTML()  # the text is a widget value: readable without a browser

    def update(_change=None):
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=figsize)
            suggestions = redraw(result, ax, smoothing.value, start.value, end.value)
            plt.show()
            plt.close(fig)
        text.value = f"<pre>{html.escape(describe(suggestions))}</pre>"

    for slider in (smoothing, start, end):
        slider.observe(update, names="value")
    update()
    box = W.VBox([W.HBox([smoothing, start, end]), out, text])
    display(box)
    return box
