"""Lesson settings: resolve the preset, validate papermill parameters, seed, pick the device."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import data, env, fit_cache
from .errors import ParameterError
from .validate import check_fraction, check_positive, check_positive_int

__all__ = ["Settings", "check_values", "resolve_preset", "setup", "PRESETS"]

PRESETS = ("auto", "quick", "full")


@dataclass
class Settings:
    """The resolved knobs of one lesson run (attribute access, printable)."""

    preset: str
    device: torch.device
    seed: int
    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"lesson settings have no {name!r}; known: {sorted(values)}")

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"Settings(preset={self.preset!r}, device={str(self.device)!r}, seed={self.seed}, {knobs})"


def resolve_preset(preset: str, device: torch.device) -> str:
    """'auto' means quick on a CPU (or MPS) and full on a CUDA GPU."""
    if preset not in PRESETS:
        raise ParameterError(f"preset={preset!r} is not one of {PRESETS}. "
                             "Use 'quick' (2-core CPU, minutes), 'full' (one GPU) or 'auto'.")
    if preset == "auto":
        return "full" if device.type == "cuda" else "quick"
    return preset


def setup(preset: str = "auto", device: str = "auto", seed: int = 0, *,
          quick: dict | None = None, full: dict | None = None, verbose: bool = True,
          **params: Any) -> Settings:
    """Validate a lesson's parameters and return its settings.

    Every keyword in `params` left as None takes the preset's value from `quick` / `full`;
    a value of the wrong type for the preset's default is refused with the expected type, and so is
    a value out of range (see `check_values`).
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ParameterError(f"seed={seed!r} must be an integer, e.g. seed=0.")
    dev = env.pick_device(device)
    chosen = resolve_preset(preset, dev)
    defaults = dict((quick if chosen == "quick" else full) or {})
    values = dict(defaults)
    for name, value in params.items():
        if value is None:
            values.setdefault(name, None)
            continue
        if name in defaults and defaults[name] is not None:
            value = _coerce(name, value, defaults[name])
        values[name] = value
    check_values(values)
    env.seed_everything(seed)
    env.set_threads()
    fit_cache.use(data.cache_dir() / fit_cache.FOLDER)   # a rerun reads finished fits back (TLKIT_FIT_CACHE=0: off)
    settings = Settings(preset=chosen, device=dev, seed=seed, values=values)
    if verbose:
        print(f"tlkit: preset={chosen} device={dev} seed={seed} | "
              + ", ".join(f"{k}={v}" for k, v in values.items()))
    return settings


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Accept ints for floats (papermill passes 1 for 1.0); refuse anything else of the wrong type."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, str) and isinstance(value, str):
        return value
    elif not isinstance(default, (bool, int, float, str)):
        return value
    raise ParameterError(f"{name}={value!r} has the wrong type: expected {type(default).__name__} "
                         f"like the preset's value, e.g. {name}={default!r}.")


# Which parameters hold what, by name: the lessons follow these naming rules, so one check covers them all.
_FRACTIONS = ("subset", "fraction")                       # ... and lists named *fractions
_POSITIVE_INTS = ("epochs", "cycles", "cycle_len", "batch_size", "size", "hidden", "num_it", "iters", "images",
                  "steps", "draws", "width", "points", "every", "batch")    # also every n_* and max_*
_NON_NEGATIVE_INTS = ("max_workers", "finetune_from")
_POSITIVE_REALS = ("lr", "lrs", "ratio", "cycle_mult")    # also every ratio_*


def _named(name: str, suffixes: tuple[str, ...]) -> bool:
    return any(name == s or name.endswith("_" + s) for s in suffixes)


def check_values(values: dict[str, Any]) -> None:
    """Refuse a zero or negative count, size, epoch number or learning rate, and a fraction outside (0, 1].

    Why here: a bad value would otherwise fail only minutes into a run, or train without a word
    (a negative learning rate climbs the loss).
    """
    for name, value in values.items():
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if name.endswith("fractions") or _named(name, _FRACTIONS):
                check_fraction(name, v, 0.5)
            elif name in _NON_NEGATIVE_INTS:
                check_positive_int(name, v, 0, allow_zero=True)
            elif _named(name, _POSITIVE_INTS) or name.startswith(("n_", "max_")):
                check_positive_int(name, v, 2)
            elif _named(name, _POSITIVE_REALS) or name.startswith("ratio_"):
                check_positive(name, v, 1e-3 if "lr" in name else 3)
