"""Decoded images on disk: each image list decoded and resized once, kept in one contiguous memmap file that every
lesson shares.

Why: lessons 01, 02 and 05 decode the same JPEGs at the same size; decoding is paid once per (data, size) on a
machine, and a run reads the pixels back from one file. An entry is safe by construction: its key covers
everything the pixels depend on; it is built in a temporary folder and renamed into place under a lock, so two
processes never both write it; and every read checks the key, the shapes and a digest of the pixels, so a
truncated, foreign or damaged entry is rebuilt, never served.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

__all__ = ["FOLDER", "FORMAT_VERSION", "cached_arrays", "entry_digest", "file_lock", "load_entry", "write_entry"]

FOLDER = "decoded"   # the entries' folder inside the tlkit cache (`data.cache_dir()`)
FORMAT_VERSION = 1
_CHUNK = 1 << 24   # bytes hashed at a time


def entry_digest(key: dict) -> str:
    """The entry's folder name: a digest of its key (a JSON-able dict of everything the pixels depend on)."""
    return hashlib.sha256(json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True).encode()).hexdigest()[:24]


@contextmanager
def file_lock(path: Path):
    """An exclusive `flock` on `path` (created if missing), released on exit, even after an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pixels_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_entry(folder: Path, key: dict, arrays: Iterable[np.ndarray]) -> None:
    """Stream `arrays` (uint8, H x W x C) into `folder`: one flat pixel file, an index of offsets and shapes, meta.

    Why streamed: memory stays at one image however many the list holds.
    """
    rows, offset, h = [], 0, hashlib.blake2b(digest_size=16)
    with open(folder / "pixels.bin", "wb") as f:
        for a in arrays:
            raw = np.ascontiguousarray(a, dtype=np.uint8).reshape(a.shape[0], a.shape[1], -1)
            f.write(raw.data)
            h.update(raw.data)
            rows.append((offset, *raw.shape))
            offset += raw.size
        f.flush()
        os.fsync(f.fileno())
    np.save(folder / "index.npy", np.array(rows, dtype=np.int64).reshape(len(rows), 4))
    meta = {"format": FORMAT_VERSION, "key": key, "count": len(rows), "pixels_blake2b": h.hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    for name in ("index.npy", "meta.json"):
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())


def load_entry(folder: Path, key: dict, count: int) -> list[np.ndarray] | None:
    """The entry's images as read-only views of its memmap, or None unless it is this key's, whole and intact."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION or meta.get("key") != json.loads(json.dumps(key)) \
                or meta.get("count") != count:
            return None
        index = np.load(folder / "index.npy")
        ends = index[:, 0] + index[:, 1:].prod(axis=1)
        if index.shape != (count, 4) or (folder / "pixels.bin").stat().st_size != (ends[-1] if count else 0) \
                or _pixels_digest(folder / "pixels.bin") != meta.get("pixels_blake2b"):
            return None
        if count == 0:
            return []
        pixels = np.memmap(folder / "pixels.bin", dtype=np.uint8, mode="r")
        return [pixels[o:e].reshape(h, w, c) for (o, h, w, c), e in zip(index.tolist(), ends.tolist())]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if (folder / "meta.json").exists():
            warnings.warn(f"ignoring a damaged decoded-image cache entry {folder} ({type(exc).__name__}: {exc}); "
                          "rebuilding it", stacklevel=3)
        return None


def cached_arrays(key: dict, count: int, decode: Callable[[int], np.ndarray], root: Path,
                  progress: Callable | None = None) -> tuple[list[np.ndarray], bool]:
    """The `count` decoded images for `key`: read from `root`, or built with `decode(i)` once and stored.

    Returns (arrays, built) with `built` False when the entry was served from disk. The check, the build and
    the rename run under the entry's lock, so a second process waits and then reads the first one's entry.
    """
    root = Path(root)
    folder = root / entry_digest(key)
    arrays = load_entry(folder, key, count)
    if arrays is not None:
        return arrays, False
    with file_lock(root / f"{folder.name}.lock"):
        arrays = load_entry(folder, key, count)      # another process may have built it while we waited
        if arrays is not None:
            return arrays, False
        for stale in root.glob(f".{folder.name}-*"):  # left by a killed build (we hold the lock: nobody else's)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}-building-"))
        try:
            items = range(count) if progress is None else progress(range(count))
            write_entry(tmp, key, (decode(i) for i in items))
            if folder.exists():                      # a damaged entry: move it aside, then drop it
                aside = root / f".{folder.name}-damaged"
                folder.rename(aside)
                shutil.rmtree(aside, ignore_errors=True)
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    arrays = load_entry(folder, key, count)
    if arrays is None:
        raise OSError(f"the decoded-image cache entry {folder} could not be read back after writing it")
    return arrays, True
