"""Argument checks shared by every public entry point: one helper, one message style.

Why: a bad value should fail before any work starts, with a message that names the argument, the
value and a valid example, not deep inside a DataLoader worker or scikit-learn.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Iterable

from .errors import ParameterError

__all__ = ["check_choice", "check_fraction", "check_positive", "check_positive_int", "check_unit_interval"]


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_positive(name: str, value: Any, example: Any, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with `allow_zero`)."""
    ok = _is_number(value) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ParameterError(f"{name}={value!r} must be a finite number {bound}, e.g. {name}={example!r}.")
    return value


def check_positive_int(name: str, value: Any, example: int, *, allow_zero: bool = False) -> int:
    """An integer >= 1 (>= 0 with `allow_zero`); numpy integers are accepted."""
    import numpy as np
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and \
        (value >= 0 if allow_zero else value >= 1)
    if not ok:
        bound = ">= 0" if allow_zero else ">= 1"
        raise ParameterError(f"{name}={value!r} must be an integer {bound}, e.g. {name}={example!r}.")
    return int(value)


def _check_in_unit(name: str, value: Any, example: float, what: str, include_zero: bool, include_one: bool) -> float:
    low_ok = (lambda v: v >= 0) if include_zero else (lambda v: v > 0)
    ok = _is_number(value) and low_ok(value) and (value <= 1 if include_one else value < 1)
    if not ok:
        interval = ("[" if include_zero else "(") + "0, 1" + ("]" if include_one else ")")
        raise ParameterError(f"{name}={value!r} must be {what} in {interval}, e.g. {name}={example!r}.")
    return float(value)


def check_fraction(name: str, value: Any, example: float = 0.5, *, include_one: bool = True) -> float:
    """A fraction in (0, 1] (or (0, 1) when `include_one` is False)."""
    return _check_in_unit(name, value, example, "a fraction", False, include_one)


def check_unit_interval(name: str, value: Any, example: float = 0.5, *, include_one: bool = True) -> float:
    """A number in [0, 1] (or [0, 1) when `include_one` is False), e.g. a smoothing factor or a fraction of an LR."""
    return _check_in_unit(name, value, example, "a number", True, include_one)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of `choices`."""
    choices = list(choices)
    if value not in choices:
        raise ParameterError(f"{name}={value!r} is not one of {choices}, e.g. {name}={choices[0]!r}.")
    return value
