"""Writing files so that a reader never sees half of one: every tlkit file write goes through here."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable

import torch

__all__ = ["atomic_save", "atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write` on a temporary file in `path`'s folder, fsync, then rename it to `path`: never half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """`torch.save` to `path` through `atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))
