"""The folder-check record: unchanged files are not decoded again, changed ones are, a damaged record is rebuilt,
and two processes checking one folder leave one good record."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from tlkit import data, image_checks

RULE = "test rule"


def write_image(path: Path, seed: int, fmt: str = "JPEG") -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def age(path: Path, seconds: float) -> None:
    """Set the file's modification time `seconds` into the past (older than the record's clock-tick margin)."""
    t = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(t, t))


class CountingCheck:
    """`data.check_image`, counting the files it is asked about."""

    def __init__(self):
        self.asked, self.real = [], data.check_image

    def __call__(self, path: Path):
        self.asked.append(path.name)
        return self.real(path)


def folder(tmp_path: Path) -> list[str]:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        write_image(root / f"good{i}.jpg", i)
    (root / "broken.jpg").write_bytes((root / "good0.jpg").read_bytes()[:60])   # truncated download
    (root / "notes.txt").write_text("not an image")
    paths = sorted(str(p) for p in root.iterdir())
    for p in paths:
        age(Path(p), 10)
    return paths


def run(paths, tmp_path, cache, workers=1):
    check = CountingCheck()
    answers = image_checks.checked(paths, tmp_path / "photos", check, RULE, cache, workers)
    return answers, sorted(check.asked)


def truth(paths):
    return {p: data.check_image(Path(p)) for p in paths}


def test_unchanged_files_are_not_decoded_again(tmp_path):
    paths, cache = folder(tmp_path), tmp_path / "cache"
    first, asked = run(paths, tmp_path, cache)
    assert asked == sorted(Path(p).name for p in paths)
    assert first == truth(paths)
    assert {Path(p).name for p, why in first.items() if why} == {"broken.jpg", "notes.txt"}
    again, asked = run(paths, tmp_path, cache, workers=2)
    assert asked == ["broken.jpg", "notes.txt"] and again == first   # failures are never taken from the record


def test_a_changed_file_is_checked_again(tmp_path):
    paths, cache = folder(tmp_path), tmp_path / "cache"
    run(paths, tmp_path, cache)
    good1 = tmp_path / "photos" / "good1.jpg"
    good1.write_bytes(good1.read_bytes()[:80])    # truncated: another size
    age(good1, 5)
    good2 = tmp_path / "photos" / "good2.jpg"
    age(good2, 7)                                  # only touched: another modification time
    answers, asked = run(paths, tmp_path, cache)
    assert asked == ["broken.jpg", "good1.jpg", "good2.jpg", "notes.txt"]
    assert answers == truth(paths) and answers[str(good1)]


def test_a_file_written_within_the_clock_tick_is_not_trusted(tmp_path):
    """A file modified just before its record was written might change again unseen within the same tick."""
    paths, cache = folder(tmp_path), tmp_path / "cache"
    fresh = tmp_path / "photos" / "good2.jpg"
    os.utime(fresh)                                 # modified now, as the record is written
    run(paths, tmp_path, cache)
    _, asked = run(paths, tmp_path, cache)
    assert asked == ["broken.jpg", "good2.jpg", "notes.txt"]


def test_without_a_cache_every_file_is_checked_each_time(tmp_path):
    paths = folder(tmp_path)
    for _ in range(2):
        answers, asked = run(paths, tmp_path, None)
        assert len(asked) == len(paths) and answers == truth(paths)


def test_broken_files_are_checked_on_every_scan(tmp_path):
    """Only usable files are recorded: a failure may be passing (permissions, a network drive), so it is not kept."""
    paths, cache = folder(tmp_path), tmp_path / "cache"
    run(paths, tmp_path, cache)
    answers, asked = run(paths, tmp_path, cache)
    assert asked == ["broken.jpg", "notes.txt"] and answers == truth(paths)
    broken = tmp_path / "photos" / "broken.jpg"
    good = (tmp_path / "photos" / "good0.jpg").read_bytes()
    broken.write_bytes(good)                        # the download finished
    age(broken, 5)
    answers, _ = run(paths, tmp_path, cache)
    assert answers[str(broken)] is None


def test_a_file_changed_during_a_slow_scan_is_checked_again(tmp_path, monkeypatch):
    """Overwritten after it was checked, with the same size and modification time (a coarse clock): not trusted."""
    paths, cache = folder(tmp_path), tmp_path / "cache"
    target = tmp_path / "photos" / "good2.jpg"
    os.utime(target)                                 # modified as the scan starts
    stamp, size = target.stat().st_mtime_ns, target.stat().st_size

    def slow_check(path):
        time.sleep(0.5 if path.name == "good2.jpg" else 0.0)
        return data.check_image(path)

    monkeypatch.setattr(image_checks, "RACY_NS", 300_000_000)   # a 0.3 s tick, which the scan (0.5 s) outlasts
    image_checks.checked(paths, tmp_path / "photos", slow_check, RULE, cache)
    target.write_bytes(b"\0" * size)                            # garbage of the same size ...
    os.utime(target, ns=(stamp, stamp))                         # ... and the same modification time
    answers, asked = run(paths, tmp_path, cache)
    assert "good2.jpg" in asked and answers == truth(paths) and answers[str(target)]


def _now_ns() -> int:
    return time.time_ns()


@pytest.mark.parametrize("damage", ['{"started_ns": 1, "usable": {', "[]", "\u0000\u00ff garbage",
                                    '{"started_ns": "late", "usable": {}}',
                                    '{"started_ns": NOW, "usable": {"good0.jpg": [1]}}',
                                    '{"started_ns": NOW, "usable": ["good0.jpg"]}',
                                    '{"started_ns": NOW, "usable": {"good0.jpg": ["big", "late"]}}',
                                    '{"started_ns": NOW, "files": {}}'])
def test_a_damaged_record_is_rebuilt_not_served(tmp_path, damage):
    paths, cache = folder(tmp_path), tmp_path / "cache"
    record = image_checks.record_path(tmp_path / "photos", cache, RULE)
    record.parent.mkdir(parents=True)
    record.write_text(damage.replace("NOW", str(_now_ns())))
    answers, asked = run(paths, tmp_path, cache)
    assert len(asked) == len(paths) and answers == truth(paths)
    assert set(json.loads(record.read_text())["usable"]) == {Path(p).name for p in paths if not truth(paths)[p]}
    _, asked = run(paths, tmp_path, cache)
    assert asked == ["broken.jpg", "notes.txt"]


def test_a_record_of_another_folder_or_rule_is_not_used(tmp_path):
    paths, cache = folder(tmp_path), tmp_path / "cache"
    run(paths, tmp_path, cache)
    for root, rule in ((tmp_path / "photos", "another rule"), (tmp_path / "copy", RULE)):
        if root.name == "copy":
            shutil.copytree(tmp_path / "photos", root, copy_function=shutil.copy2)   # same sizes and times
        check = CountingCheck()
        moved = [str(root / Path(p).name) for p in paths]
        assert image_checks.checked(moved, root, check, rule, cache) == truth(moved)
        assert len(check.asked) == len(paths)


_CHILD = """
import sys
from pathlib import Path
from tlkit import data, image_checks
root, cache = Path(sys.argv[1]), Path(sys.argv[2])
paths = sorted(str(p) for p in root.iterdir())
for _ in range(15):
    got = image_checks.checked(paths, root, data.check_image, "test rule", cache, 2)
    assert got == {p: data.check_image(Path(p)) for p in paths}
"""


def test_two_processes_checking_one_folder_leave_one_good_record(tmp_path):
    paths, cache = folder(tmp_path), tmp_path / "cache"
    for i in range(40):
        p = tmp_path / "photos" / f"more{i}.png"
        write_image(p, 100 + i, "PNG")
        age(p, 10)
    paths = sorted(str(p) for p in (tmp_path / "photos").iterdir())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "photos"), str(cache)], env=env,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    records = list((cache / image_checks.FOLDER).iterdir())
    assert [r.name for r in records] == [image_checks.record_path(tmp_path / "photos", cache, RULE).name]
    usable = {Path(p).name for p, why in truth(paths).items() if why is None}
    assert set(json.loads(records[0].read_text())["usable"]) == usable and len(usable) == 43
    answers, asked = run(paths, tmp_path, cache)
    assert asked == ["broken.jpg", "notes.txt"] and answers == truth(paths)


_ACTIONS = st.lists(st.tuples(st.sampled_from(["good", "truncate", "text", "delete", "touch", "scan"]),
                              st.integers(0, 3)), min_size=1, max_size=12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=_ACTIONS, workers=st.integers(1, 3))
def test_the_record_always_agrees_with_decoding_every_file(tmp_path_factory, actions, workers):
    """Whatever happens to the files between scans, the answers equal a fresh check of every file."""
    base = tmp_path_factory.mktemp("prop")
    root, cache = base / "photos", base / "cache"
    root.mkdir()
    clock = [100]

    def written(path):     # every change gets its own modification time, well in the past
        clock[0] += 3
        t = time.time_ns() - 10**12 + clock[0] * 10**9
        os.utime(path, ns=(t, t))

    for kind, i in actions + [("scan", 0)]:
        p = root / f"f{i}.jpg"
        if kind == "good":
            write_image(p, len(actions) + clock[0])
            written(p)
        elif kind == "truncate" and p.exists():
            p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)])
            written(p)
        elif kind == "text":
            p.write_text("x" * (i + 1))
            written(p)
        elif kind == "delete" and p.exists():
            p.unlink()
        elif kind == "touch" and p.exists():
            written(p)
        elif kind == "scan":
            paths = sorted(str(q) for q in root.iterdir())
            assert image_checks.checked(paths, root, data.check_image, RULE, cache, workers) == truth(paths)


def test_scan_folder_serves_its_skip_report_from_the_record(tmp_path, monkeypatch):
    root = tmp_path / "set"
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            write_image(root / cls / f"{i}.jpg", i + (10 if cls == "bees" else 0))
    (root / "bees" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    for p in root.rglob("*.jpg"):
        age(p, 10)
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    check = CountingCheck()
    monkeypatch.setattr(data, "check_image", check)
    results = []
    for _ in range(2):
        data.scan_folder.cache_clear()
        with pytest.warns(UserWarning, match=r"skipped 1 file.*broken\.jpg"):
            results.append(data.scan_folder(str(root)))
    data.scan_folder.cache_clear()
    assert len(check.asked) == 6              # the first scan decoded all 5 files, the second only the broken one
    assert results[0] == results[1] and len(results[0].samples) == 4
