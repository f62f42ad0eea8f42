"""Which files of a folder are usable images: each file checked once per (path, size, mtime), the answers kept in
the user cache, new files checked on every core.

Why: checking a file means decoding it (JPEG at 1/8 scale), about 19 ms for a 12-megapixel camera photo, so a
folder of 5,000 of them cost every lesson a minute and a half before any work began. The answer only changes
when the file does. A folder's record is one JSON file, written to a temporary file and renamed into place, so a
reader sees a whole old record or a whole new one; a record that does not parse, or holds entries of the wrong
shape, is ignored and rewritten. A file whose size or modification time differs from its entry is checked again,
and so is one modified less than `RACY_NS` before its record was written (as git does: a file rewritten within the
file system's clock tick keeps its modification time).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["FOLDER", "RACY_NS", "checked", "record_path"]

FOLDER = "checked"   # the records' folder inside the tlkit cache (`data.cache_dir()`)
RACY_NS = 2_000_000_000   # 2 s: coarser than any file system's modification-time tick (FAT's is 2 s)


def record_path(root: Path, cache: Path, rule: str) -> Path:
    """Where the record of folder `root` lives; `rule` names the check, so a changed check starts afresh."""
    digest = hashlib.sha256(f"{Path(root).resolve()}|{rule}".encode()).hexdigest()[:24]
    return Path(cache) / FOLDER / f"{digest}.json"


def _load(path: Path) -> dict[str, tuple[int, int, str | None]]:
    """The record's trusted entries (relative path -> size, mtime in ns, problem or None); {} when absent or
    damaged. Entries of files modified within `RACY_NS` of the record's writing are left out."""
    try:
        raw = json.loads(path.read_text())
        written, entries = int(raw["written_ns"]), raw["files"]
        known = {str(name): (int(size), int(mtime), None if why is None else str(why))
                 for name, (size, mtime, why) in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {name: e for name, e in known.items() if e[1] < written - RACY_NS}


def _save(path: Path, entries: dict[str, tuple[int, int, str | None]]) -> None:
    """Write the record atomically; a cache that cannot be written only means checking again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"written_ns": time.time_ns(), "files": {k: list(v) for k, v in entries.items()}}, f)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def checked(paths: Sequence[str], root: Path, check: Callable[[Path], str | None], rule: str,
            cache: Path | None, workers: int = 1) -> dict[str, str | None]:
    """Every path's problem (None: usable), from the record where the file is unchanged, else from `check`.

    `paths` lie under `root`; `rule` names what `check` tests; `cache=None` keeps no record. Files not yet known
    are checked on `workers` threads (decoding releases the GIL).
    """
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
        entry = known.get(name)
        if entry is not None and entry[:2] == (st.st_size, st.st_mtime_ns):
            answers[p] = entry[2]
        else:
            todo.append(p)
    if todo:
        with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
            answers.update(zip(todo, pool.map(lambda p: check(Path(p)), todo)))
        if record is not None:   # keep entries of files this scan did not list while they still exist
            kept = {name: e for name, e in known.items() if os.path.exists(os.path.join(root, name))}
            _save(record, kept | {name: (size, mtime, answers[p]) for p, (name, size, mtime) in stats.items()})
    return {p: answers[p] for p in paths}
