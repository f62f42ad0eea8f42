"""The folder-check record: unchanged files are not decoded again, changed ones are, a damaged record is rebuilt,
and two processes checking one folder leave one good record."""
import json
import os
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
    assert asked == [] and again == first


def test_a_changed_file_is_checked_again(tmp_path):
    paths, cache = folder(tmp_path), tmp_path / "cache"
    run(paths, tmp_path, cache)
    good1 = tmp_path / "photos" / "good1.jpg"
    good1.write_bytes(good1.read_bytes()[:80])    # truncated: another size
    age(good1, 5)
    notes = tmp_path / "photos" / "notes.txt"
    age(notes, 7)                                  # only touched: another modification time
    answers, asked = run(paths, tmp_path, cache)
    assert asked == ["good1.jpg", "notes.txt"]
    assert answers == truth(paths) and answers[str(good1)]


def test_a_file_written_within_the_clock_tick_is_not_trusted(tmp_path):
    """A file modified just before its record was written might change again unseen within the same tick."""
    paths, cache = folder(tmp_path), tmp_path / "cache"
    fresh = tmp_path / "photos" / "good2.jpg"
    os.utime(fresh)                                 # modified now, as the record is written
    run(paths, tmp_path, cache)
    _, asked = run(paths, tmp_path, cache)
    assert asked == ["good2.jpg"]


def test_without_a_cache_every_file_is_checked_each_time(tmp_path):
    paths = folder(tmp_path)
    for _ in range(2):
        answers, asked = run(paths, tmp_path, None)
        assert len(asked) == len(paths) and answers == truth(paths)


@pytest.mark.parametrize("damage", [b"{\"written_ns\": 1, \"files\": {", b"[]", b"\x00\xff garbage",
                                    b'{"written_ns": "late", "files": {}}',
                                    b'{"written_ns": 1, "files": {"good0.jpg": [1]}}',
                                    b'{"written_ns": 1, "files": ["good0.jpg"]}'])
def test_a_damaged_record_is_rebuilt_not_served(tmp_path, damage):
    paths, cache = folder(tmp_path), tmp_path / "cache"
    record = image_checks.record_path(tmp_path / "photos", cache, RULE)
    record.parent.mkdir(parents=True)
    record.write_bytes(damage)
    answers, asked = run(paths, tmp_path, cache)
    assert len(asked) == len(paths) and answers == truth(paths)
    assert set(json.loads(record.read_text())["files"]) == {Path(p).name for p in paths}
    _, asked = run(paths, tmp_path, cache)
    assert asked == []


def test_a_record_of_another_folder_or_rule_is_not_used(tmp_path):
    paths, cache = folder(tmp_path), tmp_path / "cache"
    run(paths, tmp_path, cache)
    assert image_checks.record_path(tmp_path / "photos", cache, "another rule") != \
        image_checks.record_path(tmp_path / "photos", cache, RULE)
    check = CountingCheck()
    image_checks.checked(paths, tmp_path / "photos", check, "another rule", cache)
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
    assert set(json.loads(records[0].read_text())["files"]) == {Path(p).name for p in paths}
    answers, asked = run(paths, tmp_path, cache)
    assert asked == [] and answers == truth(paths)


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
    assert len(check.asked) == 5              # the first scan decoded every file, the second none
    assert results[0] == results[1] and len(results[0].samples) == 4
