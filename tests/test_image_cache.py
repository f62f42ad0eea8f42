"""The decoded-image cache: exact pixels, one entry per key, damaged entries rebuilt, safe across processes."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tlkit import data, image_cache

REPO = Path(__file__).resolve().parent.parent


def jpeg_folder(root: Path, n: int = 12) -> data.ImageList:
    """`n` JPEGs of assorted shapes (portrait, landscape, one smaller than the short side) in two classes."""
    rng = np.random.default_rng(0)
    paths, targets = [], []
    for i in range(n):
        h, w = [(90, 140), (150, 100), (40, 60), (120, 120)][i % 4]
        path = root / f"c{i % 2}" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
        targets.append(i % 2)
    return data.ImageList(paths, targets, ["c0", "c1"])


def arrays_of(images: data.ImageList) -> list[np.ndarray]:
    return [np.asarray(a) for a in images.items]


def assert_same_pixels(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and np.array_equal(x, y)


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


class CountingDecode:
    """decode(i) for `cached_arrays`, counting calls (a cache hit decodes nothing)."""

    def __init__(self, arrays):
        self.arrays, self.calls = arrays, 0

    def __call__(self, i):
        self.calls += 1
        return self.arrays[i]


def test_cached_pixels_equal_a_fresh_decode_and_the_second_run_reads_them_back(tmp_path):
    images = jpeg_folder(tmp_path / "photos")
    reference = arrays_of(data.in_memory(images, 64, cache=False))
    assert {a.shape[:2] for a in reference} >= {(64, 99), (96, 64), (40, 60), (64, 64)}   # shrunk, never enlarged
    first = data.in_memory(images, 64, cache=tmp_path / "cache")
    second = data.in_memory(images, 64, cache=tmp_path / "cache")
    assert_same_pixels(arrays_of(first), reference)
    assert_same_pixels(arrays_of(second), reference)
    assert isinstance(second.items[0], np.memmap) and not second.items[0].flags.writeable
    assert second.targets == images.targets and second.classes == images.classes
    assert len(entries(tmp_path / "cache")) == 1
    tf = data.eval_transform(56, data.DEFAULT_NORM)   # eval_resize(56) == 64: the evaluation view of the files ...
    assert data.eval_resize(56) == 64
    from_files = images.with_transform(tf, data.decode_size(56))
    for i in range(len(images)):                      # ... is the view of the cached pixels, bit for bit
        assert np.array_equal(second.with_transform(tf)[i][0].numpy(), from_files[i][0].numpy())


def test_a_cached_list_is_named_by_its_entry_not_by_reading_its_pixels(tmp_path, monkeypatch):
    images = jpeg_folder(tmp_path / "photos")
    built = data.in_memory(images, 64, cache=tmp_path / "cache")
    served = data.in_memory(images, 64, cache=tmp_path / "cache")
    other_size = data.in_memory(images, 48, cache=tmp_path / "cache")
    assert built.fingerprint() == served.fingerprint() != other_size.fingerprint()
    assert served.with_transform(data.eval_transform(56)).fingerprint() == served.fingerprint()
    relabelled = data.in_memory(data.ImageList(images.items, [1 - t for t in images.targets], images.classes), 64,
                                cache=tmp_path / "cache")
    assert relabelled.fingerprint() != served.fingerprint()
    # a part of the list holds other pixels: it is hashed byte by byte, like any list of arrays
    part = served.take([0, 2])
    assert part.source_digest is None
    assert part.fingerprint() == data.ImageList([np.array(a) for a in part.items], part.targets, part.classes).fingerprint()
    # naming the list reads no pixel: the memmaps' bytes are never asked for
    assert isinstance(served.items[0], np.memmap)
    monkeypatch.setattr(np.memmap, "tobytes", lambda self, *a: pytest.fail("fingerprint read the pixels"))
    served.fingerprint()


def test_a_cache_hit_decodes_nothing(tmp_path):
    arrays = [np.full((3 + i, 5, 3), i, np.uint8) for i in range(6)]
    decode = CountingDecode(arrays)
    key = {"data": "six", "short_side": 5}
    got, built = image_cache.cached_arrays(key, 6, decode, tmp_path)
    assert built and decode.calls == 6
    got, built = image_cache.cached_arrays(key, 6, decode, tmp_path)
    assert not built and decode.calls == 6
    assert_same_pixels(got, arrays)


def test_every_input_of_the_key_gives_its_own_entry(tmp_path):
    images = jpeg_folder(tmp_path / "photos", n=4)
    cache = tmp_path / "cache"
    data.in_memory(images, 64, cache=cache)
    data.in_memory(images, 48, cache=cache)                                  # another size
    data.in_memory(images.take([0, 1]), 64, cache=cache)                     # other files
    relabelled = data.ImageList(images.items, [1 - t for t in images.targets], images.classes)
    data.in_memory(relabelled, 64, cache=cache)                              # other labels
    path = Path(images.items[0])
    Image.fromarray(np.zeros((90, 140, 3), np.uint8)).save(path)            # the file changed on disk
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = data.in_memory(images, 64, cache=cache)
    assert len(entries(cache)) == 5
    assert changed.items[0].max() == 0 and np.array_equal(changed.items[0], np.zeros((64, 99, 3), np.uint8))


def _damage(folder: Path, how: str, other: Path) -> None:
    if how == "truncated":
        pixels = folder / "pixels.bin"
        pixels.write_bytes(pixels.read_bytes()[: pixels.stat().st_size // 2])
    elif how == "a flipped byte":
        raw = bytearray((folder / "pixels.bin").read_bytes())
        raw[len(raw) // 3] ^= 0xFF
        (folder / "pixels.bin").write_bytes(bytes(raw))
    elif how == "another entry's contents":      # whole and valid, but written for another key
        for name in ("pixels.bin", "index.npy", "meta.json"):
            (folder / name).write_bytes((other / name).read_bytes())
    elif how == "unreadable meta":
        (folder / "meta.json").write_text("{not json")
    else:   # the index is gone
        (folder / "index.npy").unlink()


@pytest.mark.parametrize("how", ["truncated", "a flipped byte", "another entry's contents", "unreadable meta",
                                 "missing index"])
def test_a_damaged_or_foreign_entry_is_rebuilt_not_served(tmp_path, how):
    arrays = [np.full((4 + i, 6, 3), 10 * i, np.uint8) for i in range(5)]
    others = [np.full((4 + i, 6, 3), 200 - i, np.uint8) for i in range(5)]
    key, other_key = {"data": "mine"}, {"data": "other"}
    image_cache.cached_arrays(key, 5, CountingDecode(arrays), tmp_path)
    image_cache.cached_arrays(other_key, 5, CountingDecode(others), tmp_path)
    folder = tmp_path / image_cache.entry_digest(key)
    _damage(folder, how, tmp_path / image_cache.entry_digest(other_key))
    decode = CountingDecode(arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # a damaged file also warns; the point is what is served
        got, built = image_cache.cached_arrays(key, 5, decode, tmp_path)
    assert built and decode.calls == 5
    assert_same_pixels(got, arrays)
    assert not image_cache.cached_arrays(key, 5, CountingDecode(arrays), tmp_path)[1]   # rebuilt on disk
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []          # nothing left aside


def test_an_exception_mid_build_leaves_no_entry(tmp_path):
    arrays = [np.zeros((4, 4, 3), np.uint8)] * 4

    def failing(i):
        if i == 2:
            raise OSError("cannot read image 2")
        return arrays[i]

    with pytest.raises(OSError, match="cannot read image 2"):
        image_cache.cached_arrays({"data": "x"}, 4, failing, tmp_path)
    assert entries(tmp_path) == [] and not any(p.name.startswith(".") for p in tmp_path.iterdir())
    got, built = image_cache.cached_arrays({"data": "x"}, 4, CountingDecode(arrays), tmp_path)
    assert built and len(got) == 4


SLOW_BUILD = """
import sys, time, os, hashlib
import numpy as np
from tlkit import image_cache
ready = sys.argv[1]
open(ready + sys.argv[2], "w").close()
while not all(os.path.exists(ready + k) for k in sys.argv[3:]):   # start together
    time.sleep(0.005)
def decode(i):
    time.sleep(0.01)
    return np.full((8, 5 + i % 7, 3), i % 251, np.uint8)
arrays, built = image_cache.cached_arrays({{"data": "shared"}}, 60, decode, {root!r})
digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()
print("built" if built else "served", digest)
"""


def expected_digest() -> str:
    import hashlib
    return hashlib.sha256(b"".join(np.full((8, 5 + i % 7, 3), i % 251, np.uint8).tobytes()
                                   for i in range(60))).hexdigest()


def start(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_processes_filling_the_same_entry_leave_one_good_entry(tmp_path):
    root, ready = tmp_path / "cache", str(tmp_path / "ready-")
    code = SLOW_BUILD.format(root=str(root))
    procs = [start(code, ready, str(i), "0", "1") for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    said = sorted(out.split()[0] for out, _ in outs)
    assert said == ["built", "served"]                            # one built it, the other waited and read it
    assert {out.split()[1] for out, _ in outs} == {expected_digest()}
    assert [p.name for p in entries(root)] == [image_cache.entry_digest({"data": "shared"})]
    assert not any(p.name.startswith(".") for p in root.iterdir())   # no temporary folder left behind


def test_a_build_killed_by_sigkill_is_never_served_and_the_next_run_rebuilds(tmp_path):
    root, ready = tmp_path / "cache", str(tmp_path / "ready-")
    proc = start(SLOW_BUILD.format(root=str(root)), ready, "0", "0")
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".") for p in root.glob("*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)                          # some images written, far from all 60
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert entries(root) == [] and any(p.name.startswith(".") for p in root.iterdir())   # only the partial build
    arrays = [np.full((8, 5 + i % 7, 3), i % 251, np.uint8) for i in range(60)]
    got, built = image_cache.cached_arrays({"data": "shared"}, 60, CountingDecode(arrays), root)  # lock was freed
    assert built
    assert_same_pixels(got, arrays)
    assert not any(p.name.startswith(".") for p in root.iterdir())


def test_an_unwritable_cache_falls_back_to_memory_with_a_warning(tmp_path):
    images = jpeg_folder(tmp_path / "photos", n=4)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.warns(UserWarning, match="not writable"):
        got = data.in_memory(images, 64, cache=blocked / "decoded")
    assert_same_pixels(arrays_of(got), arrays_of(data.in_memory(images, 64, cache=False)))


def test_arrays_in_memory_are_not_cached(tmp_path):
    arrays = [np.full((50, 70, 3), 7, np.uint8)] * 3
    got = data.in_memory(data.ImageList(arrays, [0, 1, 0], ["a", "b"]), 32, cache=tmp_path)
    assert list(tmp_path.iterdir()) == [] and got.items[0].shape == (32, 44, 3)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 17), st.integers(1, 17), st.sampled_from([1, 3])), max_size=12),
       st.integers(0, 2**32 - 1))
def test_any_list_of_shapes_round_trips_exactly(tmp_path_factory, shapes, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    folder = tmp_path_factory.mktemp("entry")
    key = {"data": seed, "shapes": [list(s) for s in shapes]}
    image_cache.write_entry(folder, key, arrays)
    assert_same_pixels(image_cache.load_entry(folder, key, len(arrays)), arrays)
    assert image_cache.load_entry(folder, {**key, "data": -1}, len(arrays)) is None
    assert json.loads((folder / "meta.json").read_text())["count"] == len(arrays)
