"""`record(name, value)`: keep a lesson's key numbers where the runner and the tests can read them.

A recorded value is shown in the notebook as a display output with its own MIME type, so it
travels inside the executed .ipynb; `read_notebook_metrics` reads them back.
"""
from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["read_notebook_metrics", "record", "to_jsonable", "MIME", "RECORDED"]

MIME = "application/vnd.tlkit.metric+json"
RECORDED: dict[str, Any] = {}


def to_jsonable(value: Any) -> Any:
    """Convert numpy / torch / pandas values into plain JSON types (NaN becomes None)."""
    try:
        import numpy as np
        import pandas as pd
        import torch
    except ImportError:  # pragma: no cover - all are hard dependencies
        np = pd = torch = None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if pd is not None and isinstance(value, pd.DataFrame):
        return [to_jsonable(r) for r in value.to_dict(orient="records")]
    if pd is not None and isinstance(value, pd.Series):
        return to_jsonable(value.to_dict())
    if torch is not None and isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if np is not None and isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if np is not None and isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"record() cannot store a {type(value).__name__}; pass numbers, strings, lists or dicts.")


def record(name: str, value: Any) -> Any:
    """Store `value` under `name` for this lesson's metrics; returns `value` unchanged."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"record name {name!r} must be a simple identifier such as 'acc_frozen_head'.")
    plain = to_jsonable(value)
    json.dumps(plain)  # fail here, not in the runner
    RECORDED[name] = plain
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover
        return value
    if get_ipython() is not None:
        display({MIME: {name: plain}, "text/plain": f"recorded {name} = {_short(plain)}"}, raw=True)
    return value


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else f"{value:.4g}"
    return text if len(text) < 120 else text[:117] + "..."


def read_notebook_metrics(nb: Any) -> dict[str, Any]:
    """Collect every recorded value from an executed notebook (path or nbformat node)."""
    if not hasattr(nb, "cells"):
        import nbformat
        nb = nbformat.read(str(nb), as_version=4)
    metrics: dict[str, Any] = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if MIME in data:
                payload = data[MIME]
                metrics.update(json.loads(payload) if isinstance(payload, str) else payload)
    return metrics
