"""Lesson settings: resolve the preset, validate papermill parameters, seed, pick the device."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import env
from .errors import ParameterError

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
    a fraction outside (0, 1] (see `check_fractions`).
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
    check_fractions(values)
    env.seed_everything(seed)
    env.set_threads()
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
                         f"like the preset's {name}={default!r}.")


def check_fraction(name: str, value: float) -> float:
    """A fraction of a dataset must lie in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ParameterError(f"{name}={value!r} must be a fraction in (0, 1], e.g. {name}=0.5.")
    return value


def check_fractions(values: dict[str, Any]) -> None:
    """Check every parameter the lessons name as a fraction: `subset`, `*_subset`, `*fraction`, `*fractions`.

    Why here: a bad fraction would otherwise fail only when the subset is drawn, minutes into a run.
    """
    for name, value in values.items():
        if value is None:
            continue
        if name.endswith("fractions"):
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                check_fraction(name, v)
        elif name.endswith(("subset", "fraction")):
            check_fraction(name, value)
