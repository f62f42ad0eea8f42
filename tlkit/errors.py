"""The errors tlkit raises on bad input: one home, so callers and tests can catch them by kind."""
from __future__ import annotations

__all__ = ["ChecksumError", "CheckpointError", "DatasetLayoutError", "DatasetNotFoundError",
           "ParameterError"]


class ParameterError(ValueError):
    """A parameter has a value tlkit cannot use; the message names it, its value and a valid example."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is in none of the places searched and could not be downloaded."""


class DatasetLayoutError(ValueError):
    """A folder does not have the class-folder layout a dataset needs."""


class ChecksumError(RuntimeError):
    """Downloaded or cached data does not match its published or recorded checksum."""


class CheckpointError(RuntimeError):
    """A checkpoint or saved model is damaged or holds more than tensors, numbers and strings."""
