"""`python -m tlkit bench`: the quick course run twice, on an empty cache and then on the cache it filled.

Each run is the lesson runner's (`run_lessons`): every lesson in its own process, with its wall time,
CPU time and peak memory. The two runs share one fresh `$TLKIT_CACHE` inside the bench folder, so the
first is cold (features computed, datasets read from the embedded pack or `$TLKIT_DATA`) and the second
warm. `bench.json` holds both, the warm/cold ratio, each lesson's share of the course and the cache entries
(decoded images, features, finished fits: `tlkit.fit_cache`) each lesson built, so course-wide reuse shows; given a
previous `bench.json`, a table compares the two. Only ratios within one run are worth comparing across
machines: absolute seconds depend on the machine.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

from . import fit_cache, image_cache
from .errors import ParameterError
from .cli import REPO, LessonResult, run_lessons

__all__ = ["bench", "summarise", "compare_table", "slowest_cells", "cells_table", "PHASES", "cache_at",
           "cache_entries", "EntryCounter"]

PHASES = ("cold", "warm")


@contextlib.contextmanager
def cache_at(path: Path) -> Iterator[None]:
    """Within the block, `$TLKIT_CACHE` (read by every lesson process) points at `path`."""
    before = os.environ.get("TLKIT_CACHE")
    os.environ["TLKIT_CACHE"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TLKIT_CACHE", None)
        else:
            os.environ["TLKIT_CACHE"] = before


KINDS = ("decoded", "features", "fits")


def cache_entries(cache: Path) -> set[str]:
    """The finished entries of a tlkit cache: decoded-image folders, feature files and finished fits (temporary
    ones excluded)."""
    decoded = {f"decoded/{p.name}" for p in (Path(cache) / image_cache.FOLDER).glob("*")
               if p.is_dir() and p.name[0] != "."}
    files = {f"{kind}/{p.name}" for kind in ("features", fit_cache.FOLDER)
             for p in (Path(cache) / kind).glob("*.pt") if p.name[0] != "."}
    return decoded | files


class EntryCounter:
    """After each lesson (`run_lessons(after_each=...)`), how many decoded-image, feature and fit entries it built.

    Why: a warm run should build none, and a cold run shows which lessons reuse an earlier lesson's entries.
    """

    def __init__(self, cache: Path):
        self.cache, self.seen, self.built = Path(cache), cache_entries(cache), {}

    def __call__(self, result: LessonResult) -> None:
        now = cache_entries(self.cache)
        new = now - self.seen
        self.built[result.lesson] = {kind: sum(e.startswith(kind + "/") for e in new) for kind in KINDS}
        self.seen = now


def slowest_cells(folder: Path, k: int = 10) -> list[dict]:
    """The `k` longest-running code cells of the executed notebooks in `folder` (papermill's per-cell duration).

    Each row: notebook, cell index, seconds and the cell's first line, to say where a profile should look first.
    """
    rows = []
    for path in sorted(Path(folder).glob("*.ipynb")):
        try:
            cells = json.loads(path.read_text())["cells"]
        except (OSError, ValueError, KeyError):
            continue   # a lesson that failed before writing its notebook has no cells to rank
        for index, cell in enumerate(cells):
            seconds = cell.get("metadata", {}).get("papermill", {}).get("duration")
            if cell.get("cell_type") == "code" and seconds is not None:
                source = "".join(cell.get("source", "")).strip().splitlines() or [""]
                rows.append({"notebook": path.stem, "cell": index, "seconds": round(float(seconds), 2),
                             "first_line": source[0][:80]})
    return sorted(rows, key=lambda r: -r["seconds"])[:k]


def cells_table(rows: Sequence[dict]) -> str:
    """The slowest cells as aligned text lines."""
    lines = [f"{'notebook':28s} {'cell':>4s} {'s':>7s}  first line"]
    lines += [f"{r['notebook']:28s} {r['cell']:4d} {r['seconds']:7.1f}  {r['first_line']}" for r in rows]
    return "\n".join(lines)


def summarise(runs: dict[str, list[LessonResult]], preset: str, built: dict[str, dict] | None = None) -> dict:
    """bench.json's content: per phase and lesson wall/CPU seconds, peak MB and cache entries built (`built`
    [phase][lesson]); totals, warm/cold, shares."""
    built = built or {}
    phases = {phase: {r.lesson: {"status": r.status, "wall_s": round(r.wall_s, 2),
                                 "cpu_s": None if r.cpu_s is None else round(r.cpu_s, 2),
                                 "peak_mb": None if r.peak_mb is None else round(r.peak_mb),
                                 **({"built": built[phase][r.lesson]} if r.lesson in built.get(phase, {}) else {})}
                      for r in results} for phase, results in runs.items()}
    totals = {phase: round(sum(v["wall_s"] for v in lessons.values()), 2) for phase, lessons in phases.items()}
    summary = {"preset": preset, "created": dt.datetime.now().isoformat(timespec="seconds"), **phases,
               "total_wall_s": totals}
    if totals.get("cold"):
        summary["warm_over_cold"] = round(totals["warm"] / totals["cold"], 3) if "warm" in totals else None
        summary["share_of_cold"] = {lesson: round(v["wall_s"] / totals["cold"], 3)
                                    for lesson, v in phases["cold"].items()}
    return summary


def compare_table(new: dict, old: dict | None = None) -> str:
    """One line per lesson: cold and warm wall seconds and peak MB, and with `old` the new/old wall ratios."""
    head = f"{'lesson':28s} {'cold s':>7s} {'warm s':>7s} {'warm/cold':>9s} {'peak MB':>8s} {'built cold/warm':>15s}"
    if old:
        head += f" {'cold new/old':>12s} {'warm new/old':>12s}"
    lines = [head]
    for lesson, cold in new.get("cold", {}).items():
        warm = new.get("warm", {}).get(lesson, {})
        ratio = warm["wall_s"] / cold["wall_s"] if warm and cold["wall_s"] else float("nan")
        peak = max(p for p in (cold.get("peak_mb"), warm.get("peak_mb"), 0) if p is not None)
        built = "/".join(str(sum(p["built"].values())) if "built" in p else "-" for p in (cold, warm))
        line = (f"{lesson:28s} {cold['wall_s']:7.1f} {warm.get('wall_s', float('nan')):7.1f} {ratio:9.2f} "
                f"{peak:8.0f} {built:>15s}")
        if old:
            parts = []
            for phase, now in (("cold", cold), ("warm", warm)):
                before = old.get(phase, {}).get(lesson)
                parts.append(f"{now['wall_s'] / before['wall_s']:12.2f}" if now and before and before["wall_s"]
                             else f"{'-':>12s}")
            line += " " + " ".join(parts)
        lines.append(line)
    totals = new.get("total_wall_s", {})
    lines.append(f"{'total':28s} {totals.get('cold', float('nan')):7.1f} {totals.get('warm', float('nan')):7.1f} "
                 f"{new.get('warm_over_cold') or float('nan'):9.2f}")
    return "\n".join(lines)


def bench(ids: Sequence[str] = (), preset: str = "quick", out: Path | None = None,
          previous: Path | None = None, echo=print, params: dict | None = None) -> dict:
    """Run the lessons cold then warm into `out` (default runs/bench-<timestamp>); write and return bench.json.

    `params`: notebook parameters for both runs, as `lessons run -p` takes them (e.g. a user's folder).
    """
    old = None
    if previous is not None:
        try:
            old = json.loads(Path(previous).read_text())
        except (OSError, ValueError) as exc:
            raise ParameterError(f"--against {previous}: not a readable bench.json ({exc})") from None
    out = Path(out or REPO / "runs" / dt.datetime.now().strftime("bench-%Y%m%d-%H%M%S"))
    cache = out / "cache"
    shutil.rmtree(cache, ignore_errors=True)   # cold means empty
    cache.mkdir(parents=True)
    runs, built = {}, {}
    with cache_at(cache):
        for phase in PHASES:
            echo(f"== {phase} cache ==")
            counter = EntryCounter(cache)
            runs[phase] = run_lessons(ids, preset, out / phase, params, html_export=False, echo=echo, force=True,
                                      after_each=counter)
            built[phase] = counter.built
    summary = summarise(runs, preset, built)
    summary["params"] = {k: str(v) for k, v in (params or {}).items()}
    summary["slowest_cells"] = {phase: slowest_cells(out / phase) for phase in PHASES}
    (out / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    echo(compare_table(summary, old))
    echo("ten slowest cells, cold cache:\n" + cells_table(summary["slowest_cells"]["cold"]))
    echo(f"bench: {out / 'bench.json'}")
    return summary
