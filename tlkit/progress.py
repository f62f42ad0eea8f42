"""One progress-bar factory for tlkit: live bars for a person, one final line for a headless run.

`progress(iterable, desc=..., total=..., leave=...)` returns

* in a headless run (``TLKIT_HEADLESS=1``, set by the lesson runner for papermill): a bar that shows
  nothing while it runs and prints **one text line with its final state** when it closes — the
  executed notebook and its HTML copy then read ``epochs: 100%|##########| 3/3 [00:12<00:00]``
  instead of an empty widget output or a stale ``0%|``;
* in JupyterLab: tqdm's notebook widget, whose saved output is rewritten when the bar closes
  (its final state, or nothing for a ``leave=False`` bar), so a reopened notebook never shows a
  ``0%`` bar that looks like a stalled run;
* elsewhere (a terminal): tqdm's console bar.

``disable=None`` (the default) turns bars off when ``TLKIT_PROGRESS=0`` (short CI logs).
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from typing import Any, Iterable

__all__ = ["headless", "progress", "HEADLESS_ENV"]

HEADLESS_ENV = "TLKIT_HEADLESS"


def headless() -> bool:
    """True in a run without a widget front-end (the lesson runner sets ``TLKIT_HEADLESS=1``)."""
    return os.environ.get(HEADLESS_ENV, "0").strip().lower() in {"1", "true", "yes", "on"}


def _disabled_by_env() -> bool:
    return os.environ.get("TLKIT_PROGRESS", "1") == "0"


class _Sink:
    """A file that swallows tqdm's live updates (the headless bar prints only its final line)."""

    def write(self, _s: str) -> None:
        pass

    def flush(self) -> None:
        pass


_lock = threading.Lock()


@functools.cache
def _final_line_class() -> type:
    """tqdm's console bar, silent while it runs, printing one line of its final state on close."""
    from tqdm.std import tqdm as std_tqdm

    class FinalLineBar(std_tqdm):
        _open = 0  # headless bars open right now: a bar opened inside another one is nested

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._explicit_leave = kwargs.get("leave") is True
            out = kwargs.pop("file", None)
            self._out = out if out is not None else sys.stdout
            kwargs["file"] = _Sink()
            kwargs.setdefault("ascii", True)  # '#' reads the same in a log, a notebook and its HTML copy
            kwargs.setdefault("ncols", 80)
            with _lock:
                self._nested = FinalLineBar._open > 0
                FinalLineBar._open += 1
            self._counted = True
            self._final_printed = False
            try:
                super().__init__(*args, **kwargs)
            except BaseException:
                self._uncount()
                raise

        def _uncount(self) -> None:
            with _lock:
                if getattr(self, "_counted", False):
                    FinalLineBar._open -= 1
                    self._counted = False

        def final_line(self) -> str:
            """The bar's state as one line (what `close` prints)."""
            return self.format_meter(**self.format_dict)

        def close(self) -> None:
            if not getattr(self, "_final_printed", True):
                self._final_printed = True
                self._uncount()
                if not self.disable and (self._explicit_leave or not self._nested):
                    print(self.final_line(), file=self._out, flush=True)
            super().close()

    return FinalLineBar


@functools.cache
def _notebook_class() -> type:
    """tqdm's notebook widget whose output is rewritten at close: final state, or nothing if not kept."""
    from tqdm.notebook import tqdm as nb_tqdm

    class SavedCleanBar(nb_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["display"] = False
            kwargs.pop("delay", None)  # displayed at once, under a display id the close can update
            super().__init__(*args, **kwargs)
            self._handle = None
            if not self.disable and getattr(self, "container", None) is not None:
                from IPython.display import display
                self._handle = display(self.container, display_id=True)
                self.displayed = True

        def close(self) -> None:
            if self.disable:
                return
            failed = bool(self.total and self.n < self.total)
            super().close()
            handle, self._handle = self._handle, None
            if handle is None:
                return
            if self.leave or failed:  # the widget stays: its saved text is its final state
                handle.update(self.container)
            else:  # the widget is gone: leave no stale text behind in the saved notebook
                handle.update({"text/plain": ""}, raw=True)

    return SavedCleanBar


def _interactive_class() -> type:
    from tqdm.autonotebook import tqdm as auto_tqdm
    try:
        from tqdm.notebook import tqdm as nb_tqdm
    except ImportError:  # pragma: no cover - ipywidgets missing
        return auto_tqdm
    return _notebook_class() if issubclass(auto_tqdm, nb_tqdm) else auto_tqdm


def progress(iterable: Iterable | None = None, desc: str | None = None, total: float | None = None,
             leave: bool | None = True, disable: bool | None = None, **kwargs: Any):
    """A tqdm bar over `iterable` (or a manual one with `total`), suited to where the code runs.

    Same arguments as tqdm (``unit``, ``unit_scale``, ``position`` ... pass through). Headless runs get
    one final text line per outermost bar (and per bar opened with ``leave=True``), nothing while it runs.
    """
    if disable is None:
        disable = _disabled_by_env()
    cls = _final_line_class() if headless() else _interactive_class()
    return cls(iterable, desc=desc, total=total, leave=leave, disable=disable, **kwargs)
