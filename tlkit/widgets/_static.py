"""Static pictures of the widgets for headless runs, and errors shown where the learner looks.

In a headless run (``TLKIT_HEADLESS=1``: papermill, the lesson runner) nobody can move a slider, and
a widget's output would be saved as a widget-view reference that neither the HTML copy nor a reopened
notebook can draw. There the factories make the widget as usual (its callbacks and state work the
same), but the widget *displays* as a PNG of its initial state plus a one-line text description.
"""
from __future__ import annotations

import base64
import html
import io
import traceback
from typing import Any, Sequence

from ..progress import headless

__all__ = ["headless", "figure_png", "stack_pngs", "show_static_in_headless", "show_error"]


def figure_png(fig, dpi: int = 80) -> bytes:
    """PNG bytes of a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def stack_pngs(pngs: Sequence[bytes]) -> bytes:
    """Several PNGs one above the other, as one PNG (a widget output holds one picture)."""
    import PIL.Image
    images = [PIL.Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    if len(images) == 1:
        return pngs[0]
    width = max(im.width for im in images)
    canvas = PIL.Image.new("RGB", (width, sum(im.height for im in images)), "white")
    top = 0
    for im in images:
        canvas.paste(im, (0, top))
        top += im.height
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def show_static_in_headless(widget: Any, png: bytes, alt: str) -> Any:
    """In a headless run, make `widget` display as `png` (and `alt` as text); elsewhere change nothing.

    The widget stays a working widget (tests and code can still drive it); only its rich display
    changes, so the executed notebook holds a picture instead of a widget reference.
    """
    widget.static_png = png
    widget.static_alt = alt
    if headless():
        bundle = {"text/plain": alt}
        if png:
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
        widget._repr_mimebundle_ = lambda include=None, exclude=None, **_: dict(bundle)
    return widget


def show_error(out: Any, exc: BaseException, what: str) -> None:
    """Show a callback's exception inside the widget's own output (not only in the Log Console)."""
    from IPython.display import HTML, display
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    with out:
        out.clear_output(wait=True)
        display(HTML(f'<pre class="tlkit-widget-error" style="color:#b00">tlkit widget error in {html.escape(what)}: '
                     f"{html.escape(text)}</pre>"))
