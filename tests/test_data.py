"""Dataset resolution, download verification, corrupt files, splits and transforms."""
import os
import shutil
import urllib.error
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
from PIL import Image

from tlkit import data, fetch

from support import FULL_DATA


def make_folder(root: Path, classes=("a", "b"), per_class=6, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.jpg")
    return root


@pytest.fixture
def registry_entry(monkeypatch, tmp_path):
    """A registry entry 'toy' whose official URL is a local zip (the real download code, no network)."""
    src = make_folder(tmp_path / "src" / "toy_data")
    archive = tmp_path / "toy_data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src.parent).as_posix())
    info = data.DatasetInfo("toy", "toy_data", "a toy", url=archive.as_uri(), content_sha256=fetch.content_digest(src))
    monkeypatch.setitem(data.REGISTRY, "toy", info)
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TLKIT_OFFLINE", raising=False)
    monkeypatch.setenv("TLKIT_DATA", str(tmp_path / "nowhere"))
    return info, src, archive


def test_resolution_order_explicit_then_env_then_cache(registry_entry, tmp_path, monkeypatch):
    info, src, _ = registry_entry
    explicit = make_folder(tmp_path / "mine")
    assert data.resolve(explicit) == explicit
    env_root = tmp_path / "envdata"
    shutil.copytree(src, env_root / "toy_data")
    cached = tmp_path / "cache" / "toy_data"
    shutil.copytree(src, cached)
    monkeypatch.setenv("TLKIT_DATA", str(env_root))
    assert data.resolve("toy") == env_root / "toy_data"          # $TLKIT_DATA wins over the cache
    monkeypatch.setenv("TLKIT_DATA", str(tmp_path / "nowhere"))
    assert data.resolve("toy") == cached                          # then the cache


def test_download_verifies_and_unpacks(registry_entry, tmp_path):
    info, src, _ = registry_entry
    root = data.resolve("toy")
    assert root == tmp_path / "cache" / "toy_data"
    assert fetch.content_digest(root) == info.content_sha256
    assert len(data.get_splits("toy", val_fraction=0.5).train) == 6


def test_download_with_wrong_content_leaves_nothing(registry_entry, tmp_path, monkeypatch):
    info, _, _ = registry_entry
    monkeypatch.setitem(data.REGISTRY, "toy", data.DatasetInfo("toy", "toy_data", "", url=info.url,
                                                               content_sha256="0" * 64))
    with pytest.raises(data.DatasetNotFoundError, match="differ from the expected content"):
        data.resolve("toy")
    assert not any((tmp_path / "cache").glob("*toy*"))


def test_offline_error_names_every_place(registry_entry, tmp_path, monkeypatch):
    info, _, _ = registry_entry
    monkeypatch.setitem(data.REGISTRY, "toy", data.DatasetInfo("toy", "toy_data", "", url="https://example.invalid/toy.zip"))
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.resolve("toy")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "toy_data") in msg
    assert str(tmp_path / "cache" / "toy_data") in msg
    assert "https://example.invalid/toy.zip" in msg and "TLKIT_DATA" in msg


def test_unknown_name_or_missing_path():
    with pytest.raises(data.DatasetNotFoundError, match="neither a registry name"):
        data.resolve("no_such_dataset_here")


@pytest.mark.skipif(not (FULL_DATA and (FULL_DATA / "hymenoptera_data").is_dir()),
                    reason="needs a full-size hymenoptera_data in TLKIT_DATA (the pack holds downscaled copies)")
def test_hymenoptera_digest_matches_registry():
    """The registered content digest is the one of the official archive's files."""
    root = FULL_DATA / "hymenoptera_data"
    assert fetch.content_digest(root) == data.REGISTRY["hymenoptera"].content_sha256


def test_hymenoptera_skips_placeholder_gif_with_warning():
    data.scan_folder.cache_clear()
    with pytest.warns(UserWarning, match=r"skipped 1 file.*imageNotFound\.gif"):
        splits = data.get_splits("hymenoptera")
    assert (len(splits.train), len(splits.val)) == (244, 153)
    assert splits.classes == ["ants", "bees"]
    assert not any(str(p).endswith(".gif") for p in splits.train.items)


def test_corrupt_and_foreign_files_are_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "ds", per_class=4)
    (root / "a" / "garbage.jpg").write_bytes(b"not an image at all")
    good = (root / "a" / "0.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "b" / "notes.txt").write_text("hello")
    Image.new("RGB", (8, 8)).save(root / "b" / "anim.gif")
    data.scan_folder.cache_clear()
    with pytest.warns(UserWarning, match="skipped 4 file"):
        scan = data.scan_folder(str(root))
    assert len(scan.samples) == 8
    reasons = {Path(p).name: why for p, why in scan.skipped}
    assert "corrupt" in reasons["garbage.jpg"] and "corrupt" in reasons["truncated.jpg"]
    assert set(reasons) == {"garbage.jpg", "truncated.jpg", "notes.txt", "anim.gif"}


def test_layout_errors_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DatasetLayoutError, match="no class sub-folders"):
        data.get_splits(tmp_path / "empty")
    half = make_folder(tmp_path / "half" / "train")
    assert half.exists()
    with pytest.raises(data.DatasetLayoutError, match="only one of train/ and val/"):
        data.get_splits(tmp_path / "half")


def test_split_is_stratified_reproducible_and_disjoint():
    a = data.get_splits("dtd10", seed=0)
    b = data.get_splits("dtd10", seed=0)
    c = data.get_splits("dtd10", seed=1)
    assert a.train.items == b.train.items and a.val.items == b.val.items
    assert a.val.items != c.val.items
    assert not set(a.train.items) & set(a.val.items)
    assert set(a.val.class_counts().values()) == {24}          # 20 % of 120 per class
    assert set(a.train.class_counts().values()) == {96}


def test_subset_keeps_class_shares():
    train = data.get_splits("dtd10").train
    sub = train.subset(0.25, seed=3)
    assert set(sub.class_counts().values()) == {24}
    assert sub.items == train.subset(0.25, seed=3).items
    assert len(train.subset(10, seed=0)) == 10
    with pytest.raises(ValueError):
        train.subset(1.5)


def test_user_folder_without_split(tmp_path):
    root = make_folder(tmp_path / "mine", classes=("cats", "dogs", "owls"), per_class=10)
    splits = data.get_splits(root, val_fraction=0.2)
    assert splits.classes == ["cats", "dogs", "owls"]
    assert set(splits.val.class_counts().values()) == {2}


def test_digits_is_embedded():
    splits = data.get_splits("digits")
    img = splits.train.image(0)
    assert img.size == (32, 32) and img.mode == "RGB"
    assert len(splits.classes) == 10 and len(splits.train) + len(splits.val) == 1797


def test_transforms_shapes_and_denormalize():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    norm = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = data.eval_transform(64, norm)(img)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert data.train_transform(48, norm)(img).shape == (3, 48, 48)
    plain = data.eval_transform(64, ((0, 0, 0), (1, 1, 1)))(img)
    assert torch.allclose(data.denormalize(x, norm), plain, atol=1e-5)


def test_dataloaders_batches():
    dls = data.dataloaders("hymenoptera", image_size=64, batch_size=16, fraction=0.5)
    x, y = next(iter(dls.train))
    assert x.shape == (16, 3, 64, 64) and y.dtype == torch.int64
    assert dls.num_classes == 2 and len(dls.train.dataset) == 122


def test_fingerprint_changes_with_files(tmp_path):
    root = make_folder(tmp_path / "fp")
    a = data.get_splits(root, val_fraction=0.5).train
    before = a.fingerprint()
    assert before == data.get_splits(root, val_fraction=0.5).train.fingerprint()
    Image.new("RGB", (41, 30)).save(a.items[0])
    os.utime(a.items[0], ns=(1, 1))
    assert a.fingerprint() != before


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.data())
def test_at_most_indices_keeps_exactly_count_with_every_class_near_its_share(sizes, draw):
    targets = [c for c, size in enumerate(sizes) for _ in range(size)]
    count = draw.draw(st.integers(len(sizes), len(targets)))
    seed = draw.draw(st.integers(0, 3))
    kept = data.at_most_indices(targets, count, seed)
    assert kept == sorted(set(kept)) and len(kept) == count
    per_class = np.bincount(np.asarray(targets)[kept], minlength=len(sizes))
    share = count * np.asarray(sizes) / len(targets)
    # every class is kept, and none takes more than one image over its share (one is every class's floor)
    assert (per_class >= 1).all() and (per_class <= np.maximum(1, share + 1) + 1e-9).all()
    assert kept == data.at_most_indices(targets, count, seed)   # seeded: the same images again
    if len(sizes) > 1:
        with pytest.raises(ValueError, match="every class needs an image"):
            data.at_most_indices(targets, len(sizes) - 1, seed)


def test_splits_at_most_cuts_only_what_is_over_and_says_so(capsys):
    splits = data.get_splits("digits", seed=0)            # 1,437 training / 360 validation images, 10 classes
    same = splits.at_most(5000, None)
    assert (len(same.train), len(same.val)) == (len(splits.train), len(splits.val)) and capsys.readouterr().out == ""
    small = data.get_splits("digits", seed=0, max_train=250, max_val=100)
    assert (len(small.train), len(small.val)) == (250, 100)
    assert set(small.train.targets) == set(range(10)) and "using a seeded, stratified 250 / 100" in capsys.readouterr().out
    for bad in (0, 5, 2.5, "250"):                        # 5 < 10 classes: every class needs an image
        with pytest.raises(data.ParameterError, match="max_train"):
            splits.at_most(max_train=bad)


def _photo_jpeg(path: Path, seed: int = 0, **save) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", **save)
    return path.read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), progressive=st.booleans())
def test_a_jpeg_cut_off_anywhere_is_skipped_and_a_whole_one_kept(tmp_path_factory, cut, progressive):
    """The JPEG check reads structure, not pixels: every cut that loses the end-of-image marker is reported."""
    folder = tmp_path_factory.mktemp("cut")
    whole = _photo_jpeg(folder / "whole.jpg", progressive=progressive)
    assert data.check_image(folder / "whole.jpg") is None
    end = len(whole) - 2                                       # the marker's position: the file's last two bytes
    assert whole[end:] == b"\xff\xd9"
    (folder / "cut.jpg").write_bytes(whole[: int(cut * end)])
    assert data.check_image(folder / "cut.jpg").startswith("corrupt")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_a_png_cut_off_within_its_pixels_is_skipped(tmp_path_factory, cut):
    folder = tmp_path_factory.mktemp("png")
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "whole.png")
    whole = (folder / "whole.png").read_bytes()
    assert data.check_image(folder / "whole.png") is None
    data_start = whole.index(b"IDAT") + 4
    end = data_start + int.from_bytes(whole[data_start - 8: data_start - 4], "big") - 4   # the pixels' last byte
    (folder / "cut.png").write_bytes(whole[: int(cut * end)])   # cut within the pixels: cannot decode
    assert data.check_image(folder / "cut.png").startswith("corrupt")


def test_a_file_whose_structure_looks_wrong_but_decodes_is_kept(tmp_path):
    """The structural check only saves decoding: where it objects, the file is decoded, and kept if that works."""
    whole = _photo_jpeg(tmp_path / "a.jpg")
    dqt = whole.index(b"\xff\xdb")
    (tmp_path / "stray.jpg").write_bytes(whole[:dqt] + b"\x00" + whole[dqt:])   # a stray byte libjpeg skips
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    png = (tmp_path / "a.png").read_bytes()
    end = png.index(b"IEND") - 4
    text = b"tEXtnote\x00hello"
    chunk = (len(text) - 4).to_bytes(4, "big") + text + b"\x00\x00\x00\x00"      # a wrong checksum
    (tmp_path / "bad_note.png").write_bytes(png[:end] + chunk + png[end:])
    for name in ("stray.jpg", "bad_note.png"):
        assert data.check_image(tmp_path / name) is None
        assert data.load_rgb(str(tmp_path / name)).size == (64, 48)


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_a_webp_cut_off_is_skipped(tmp_path, keep):
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.webp")
    whole = (tmp_path / "whole.webp").read_bytes()
    assert data.check_image(tmp_path / "whole.webp") is None
    (tmp_path / "cut.webp").write_bytes(whole[: int(keep * len(whole))])
    assert data.check_image(tmp_path / "cut.webp").startswith("corrupt")


def test_a_marker_before_the_compressed_data_does_not_hide_a_cut(tmp_path):
    """An end marker inside a header segment (an EXIF thumbnail carries one) is not the image's end."""
    whole = _photo_jpeg(tmp_path / "a.jpg")
    payload = b"thumb\xff\xd8\xff\xd9"
    app = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload      # an APP1 segment after SOI
    with_thumb = whole[:2] + app + whole[2:]
    (tmp_path / "thumb.jpg").write_bytes(with_thumb)
    assert data.check_image(tmp_path / "thumb.jpg") is None
    (tmp_path / "thumb_cut.jpg").write_bytes(with_thumb[: len(with_thumb) // 2 + len(app)])
    assert data.check_image(tmp_path / "thumb_cut.jpg").startswith("corrupt")


def test_a_motion_photo_with_a_video_after_the_image_is_kept_and_decodes(tmp_path):
    whole = _photo_jpeg(tmp_path / "a.jpg")
    video = bytes(np.random.default_rng(1).integers(0, 255, 200_000, dtype=np.uint8)).replace(b"\xff\xd9", b"\xff\x00")
    (tmp_path / "motion.jpg").write_bytes(whole + video)
    assert data.check_image(tmp_path / "motion.jpg") is None
    assert data.load_rgb(str(tmp_path / "motion.jpg")).size == (64, 48)


def test_a_jpeg_that_passes_the_check_but_cannot_be_decoded_names_itself(tmp_path):
    """Damage inside the compressed data passes the structural check (its limit); decoding says which file."""
    whole = _photo_jpeg(tmp_path / "a.jpg")
    start = whole.index(b"\xff\xda")                          # start of scan
    broken = whole[: start + 5] + b"\x77" + whole[start + 6:]   # the scan names Huffman tables that do not exist
    (tmp_path / "bad.jpg").write_bytes(broken)
    assert data.check_image(tmp_path / "bad.jpg") is None
    images = data.ImageList([str(tmp_path / "bad.jpg")], [0], ["a"])
    with pytest.raises(OSError, match=r"cannot read image .*bad\.jpg.*remove or replace"):
        images.image(0)
