"""tlkit: the helper package behind the practical-CNN teaching workbench.

`import tlkit` is light: the submodules and names below load on first use (PEP 562), so a process that
only runs notebooks (the lesson runner's child, `tlkit.execute`) never imports torch.
"""
import importlib

from .errors import ParameterError
from .record import record   # bound eagerly: the `tlkit.record` submodule must not shadow the function

__version__ = "0.1.0"
__all__ = ["Learner", "NonFiniteLossError", "ParameterError", "data", "env", "models", "optim", "plots",
           "record", "setup"]

_SUBMODULES = ("data", "env", "models", "optim", "plots")
_NAMES = {"Learner": "train", "NonFiniteLossError": "train", "setup": "config"}


def __getattr__(name: str):
    """A submodule or a top-level name, imported when first asked for."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
