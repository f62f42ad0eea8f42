"""`python -m tlkit bench`: two runs of the lessons, the first on an empty cache, compared within the run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tlkit.bench import EntryCounter, cells_table, compare_table, slowest_cells, summarise
from tlkit.cli import LessonResult

REPO = Path(__file__).resolve().parent.parent


def result(lesson, wall, cpu=None, peak=1000.0, status="ok"):
    return LessonResult(lesson, status, wall, peak, cpu_s=cpu)


def test_summary_ratios_and_shares_come_from_the_per_lesson_numbers():
    runs = {"cold": [result("01_a", 30.0, 50.0), result("02_b", 10.0, 12.0, 1500.0)],
            "warm": [result("01_a", 12.0, 20.0), result("02_b", 8.0, 9.0)]}
    s = summarise(runs, "quick")
    assert s["total_wall_s"] == {"cold": 40.0, "warm": 20.0} and s["warm_over_cold"] == 0.5
    assert s["share_of_cold"] == {"01_a": 0.75, "02_b": 0.25}
    assert s["cold"]["02_b"] == {"status": "ok", "wall_s": 10.0, "cpu_s": 12.0, "peak_mb": 1500}
    table = compare_table(s).splitlines()
    assert table[1].split()[:4] == ["01_a", "30.0", "12.0", "0.40"]
    old = summarise({"cold": [result("01_a", 60.0), result("02_b", 10.0)], "warm": [result("01_a", 24.0)]}, "quick")
    versus = compare_table(s, old).splitlines()
    assert versus[1].split()[-2:] == ["0.50", "0.50"] and versus[2].split()[-2:] == ["1.00", "-"]


def test_the_entry_counter_counts_what_each_lesson_built_and_ignores_unfinished_entries(tmp_path):
    from tlkit import image_cache
    import numpy as np
    counter = EntryCounter(tmp_path)                       # an empty cache: nothing seen yet
    image_cache.cached_arrays({"data": "a"}, 1, lambda i: np.zeros((2, 2, 3), np.uint8), tmp_path / "decoded")
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "net-1.pt").write_bytes(b"x")
    (tmp_path / "features" / ".net-2.pt-tmp.tmp").write_bytes(b"half")   # a write still in progress
    (tmp_path / "decoded" / ".abc-building-1").mkdir()
    counter(result("01_a", 1.0))
    image_cache.cached_arrays({"data": "a"}, 1, lambda i: np.zeros((2, 2, 3), np.uint8), tmp_path / "decoded")
    counter(result("06_b", 1.0))                            # served the same entry: built nothing
    (tmp_path / "features" / "net-3.pt").write_bytes(b"x")
    (tmp_path / "fits").mkdir()
    (tmp_path / "fits" / "0a1b.pt").write_bytes(b"x")
    (tmp_path / "fits" / ".0a1c.pt-x.tmp").write_bytes(b"half")
    counter(result("03_c", 1.0))
    assert counter.built == {"01_a": {"decoded": 1, "features": 1, "fits": 0},
                             "06_b": {"decoded": 0, "features": 0, "fits": 0},
                             "03_c": {"decoded": 0, "features": 1, "fits": 1}}
    s = summarise({"cold": [result("01_a", 2.0)], "warm": [result("01_a", 1.0)]}, "quick",
                  {"cold": {"01_a": {"decoded": 1, "features": 1}}, "warm": {"01_a": {"decoded": 0, "features": 0}}})
    assert s["cold"]["01_a"]["built"] == {"decoded": 1, "features": 1}
    assert compare_table(s).splitlines()[1].split()[-1] == "2/0"


def _executed(path, durations):
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# prose"}]
    cells += [{"cell_type": "code", "metadata": {"papermill": {"duration": d}}, "source": [f"step_{i}()\n", "more"]}
              for i, d in enumerate(durations)]
    path.write_text(json.dumps({"cells": cells}))


def test_slowest_cells_rank_the_code_cells_of_every_notebook_by_papermills_duration(tmp_path):
    _executed(tmp_path / "01_a.ipynb", [3.0, 40.5, 0.2])
    _executed(tmp_path / "02_b.ipynb", [12.0, 7.25])
    (tmp_path / "03_broken.ipynb").write_text("{not json")   # a lesson that failed early is skipped
    rows = slowest_cells(tmp_path, k=3)
    assert [(r["notebook"], r["cell"], r["seconds"]) for r in rows] == [("01_a", 2, 40.5), ("02_b", 1, 12.0),
                                                                       ("02_b", 2, 7.25)]
    assert rows[0]["first_line"] == "step_1()"
    assert cells_table(rows).splitlines()[1].split()[:3] == ["01_a", "2", "40.5"]


@pytest.mark.notebook
def test_bench_runs_cold_then_warm_in_its_own_cache_and_compares_with_a_previous_run(tmp_path):
    env = dict(os.environ, TLKIT_CACHE=str(tmp_path / "users_cache"), TLKIT_PROGRESS="0")
    first = subprocess.run([sys.executable, "-m", "tlkit", "bench", "00", "--out", str(tmp_path / "b1"),
                            "-p", "n_images", "4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((tmp_path / "b1" / "bench.json").read_text())
    assert summary["params"] == {"n_images": "4"}
    assert "n_images = 4" in (tmp_path / "b1" / "warm" / "00_welcome.ipynb").read_text()   # both runs got it
    for phase in ("cold", "warm"):
        lesson = summary[phase]["00_welcome"]
        assert lesson["status"] == "ok" and lesson["wall_s"] > 0 and lesson["cpu_s"] > 0 and lesson["peak_mb"] > 0
        assert (tmp_path / "b1" / phase / "00_welcome.ipynb").exists()
        assert summary["slowest_cells"][phase] and {r["notebook"] for r in summary["slowest_cells"][phase]} == {"00_welcome"}
    assert (tmp_path / "b1" / "cache").is_dir() and not (tmp_path / "users_cache").exists()   # the user's cache untouched
    again = subprocess.run([sys.executable, "-m", "tlkit", "bench", "00", "--out", str(tmp_path / "b2"),
                            "--against", str(tmp_path / "b1" / "bench.json")],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "cold new/old" in again.stdout and "00_welcome" in again.stdout
    bad = subprocess.run([sys.executable, "-m", "tlkit", "bench", "00", "--out", str(tmp_path / "b3"),
                          "--against", str(tmp_path / "nothing.json")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "not a readable bench.json" in bad.stderr
    unknown = subprocess.run([sys.executable, "-m", "tlkit", "bench", "00", "--out", str(tmp_path / "b4"),
                              "-p", "datset", "x"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "unknown parameter(s) 'datset'" in unknown.stderr
