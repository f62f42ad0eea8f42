"""Which files of a folder are usable images: each file checked once per (path, size, mtime), the usable ones
remembered in the user cache, new files checked on every core.

Why: a scan checks every file of a folder each time a lesson starts. Reading a JPEG's or PNG's structure costs 0.1-2
ms a file, but TIFF and BMP must be decoded (4 ms for 3 megapixels, more for large scientific TIFFs), a folder may
hold tens of thousands of files, and the answer only changes when the file does. A folder's record is one JSON file,
written to a temporary file and renamed into place, so a reader sees a whole old record or a whole new one; a record
that does not parse, or holds entries of the wrong shape, is ignored and rewritten. Only usable files are recorded:
a file that failed (corrupt, or unreadable for a moment: permissions, a network drive) is checked again on every
scan, and there are few of them. A file whose size or modification time differs from its entry is checked again, and
so is one modified less than `RACY_NS` before its scan began (as git does: a file rewritten within the file system's
clock tick keeps its modification time). Files dated in the future (a camera's clock set ahead) are therefore
checked on every scan.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from .storage import atomic_write

__all__ = ["FOLDER", "RACY_NS", "checked", "record_path"]

FOLDER = "checked"   # the records' folder inside the tlkit cache (`data.cache_dir()`)
RACY_NS = 2_000_000_000   # 2 s, the coarsest modification-time tick in use (FAT); only strictly older entries count


def record_path(root: Path, cache: Path, rule: str) -> Path:
    """Where the record of folder `root` lives; `rule` names the check, so a changed check starts afresh."""
    digest = hashlib.sha256(f"{Path(root).resolve()}|{rule}".encode()).hexdigest()[:24]
    return Path(cache) / FOLDER / f"{digest}.json"


def _load(path: Path) -> dict[str, tuple[int, int]]:
    """The record's trusted entries (relative path -> size, mtime in ns) of usable files; {} when absent or
    damaged. Entries of files modified within `RACY_NS` of the start of the scan that wrote them are left out."""
    try:
        raw = json.loads(path.read_text())
        started, entries = int(raw["started_ns"]), raw["usable"]
        known = {str(name): (int(size), int(mtime)) for name, (size, mtime) in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {name: e for name, e in known.items() if e[1] < started - RACY_NS}


def _save(path: Path, started_ns: int, entries: dict[str, tuple[int, int]]) -> None:
    """Write the record atomically; a cache that cannot be written only means checking again next time."""
    record = {"started_ns": started_ns, "usable": {k: list(v) for k, v in entries.items()}}
    try:
        atomic_write(path, lambda f: f.write(json.dumps(record).encode()))
    except OSError:
        pass


def checked(paths: Sequence[str], root: Path, check: Callable[[Path], str | None], rule: str,
            cache: Path | None, workers: int = 1) -> dict[str, str | None]:
    """Every path's problem (None: usable), from the record where the file is unchanged, else from `check`.

    `paths` lie under `root`; `rule` names what `check` tests; `cache=None` keeps no record. Files not yet known
    are checked on `workers` threads (decoding releases the GIL).
    """
    started = time.time_ns()   # before any stat: a file changed after it was looked at is then within RACY_NS
    record = record_path(root, cache, rule) if cache is not None else None
    known = _load(record) if record is not None else {}
    stats, answers, todo = {}, {}, []
    for p in paths:
        name = os.path.relpath(p, root)
        try:
            st = os.stat(p)
        except OSError:          # gone since the folder was listed: `check` says why, nothing is recorded
            todo.append(p)
            continue
        stats[p] = (name, st.st_size, st.st_mtime_ns)
        if known.get(name) == (st.st_size, st.st_mtime_ns):
            answers[p] = None
        else:
            todo.append(p)
    if todo:
        with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
            answers.update(zip(todo, pool.map(lambda p: check(Path(p)), todo)))
    if record is not None:   # entries of files this scan did not list are kept while the files exist
        listed = {name for name, _, _ in stats.values()}
        usable = {name: e for name, e in known.items() if name not in listed and os.path.exists(os.path.join(root, name))}
        usable |= {name: (size, mtime) for p, (name, size, mtime) in stats.items() if answers[p] is None}
        if usable != known:
            _save(record, started, usable)
    return {p: answers[p] for p in paths}
