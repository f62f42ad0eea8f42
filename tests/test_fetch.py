"""Real download paths (torchvision's DTD and Imagenette, the hymenoptera zip) against local archives,
the embedded pack, manifests, and the resolution order that picks a copy."""
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import DTD, Imagenette

from tlkit import data, fetch

REPO = Path(__file__).resolve().parent.parent
WNIDS = sorted(Imagenette._WNID_TO_CLASS)


def jpeg(path: Path, size=(24, 18), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def tar_gz(src_dir: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src_dir, arcname=src_dir.name)
    return archive


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def online_cache(monkeypatch, tmp_path):
    """Downloads allowed (only file:// URLs can be opened in tests), an empty cache, no TLKIT_DATA."""
    monkeypatch.delenv("TLKIT_OFFLINE", raising=False)
    monkeypatch.delenv("TLKIT_DATA", raising=False)
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def dtd_archive(tmp_path, monkeypatch, local_server):
    """A DTD archive with the official layout (dtd/images/<class>/, dtd/labels/) served over HTTP on 127.0.0.1."""
    root = tmp_path / "src" / "dtd"
    classes = [f"class{c:02d}" for c in range(12)]           # 12 classes: the first 10 are kept
    for i, cls in enumerate(classes):
        for k in range(3):
            jpeg(root / "images" / cls / f"{cls}_{k:04d}.jpg", seed=10 * i + k)
    jpeg(root / "images" / "class00" / "class00_0099.jpg", size=(400, 300))   # a large one gets downscaled
    (root / "labels").mkdir()
    (root / "labels" / "train1.txt").write_text("".join(f"{c}/{c}_0000.jpg\n" for c in classes))
    archive = tar_gz(root, tmp_path / "dtd-r1.0.1.tar.gz")
    monkeypatch.setattr(DTD, "_URL", local_server(archive))
    monkeypatch.setattr(DTD, "_MD5", md5(archive))
    return classes


def test_dtd10_downloads_through_torchvision_and_derives_the_first_ten_classes(online_cache, dtd_archive, capsys):
    root = data.resolve("dtd10", image_size=224)     # too large for the pack: the download path
    assert root == online_cache / "dtd10"
    assert sorted(d.name for d in root.iterdir() if d.is_dir()) == dtd_archive[:10]
    assert len(list((root / "class00").glob("*.jpg"))) == 4 and len(list((root / "class05").glob("*.jpg"))) == 3
    with Image.open(root / "class00" / "class00_0099.jpg") as im:
        assert im.size == (341, 256)                 # shorter side 256, aspect kept
    with Image.open(root / "class01" / "class01_0000.jpg") as im:
        assert im.size == (24, 18)                   # never upscaled
    assert fetch.manifest_problems(root) == [] and "DTD" in (root / "PROVENANCE.txt").read_text()
    assert not [p for p in online_cache.iterdir() if p.name.startswith(".")]   # scratch and archive removed
    assert "a download into the user cache" in capsys.readouterr().out
    assert len(data.get_splits("dtd10", image_size=224, val_fraction=0.5).classes) == 10   # read back from the cache


def test_a_wrong_archive_checksum_installs_nothing(online_cache, dtd_archive, monkeypatch):
    monkeypatch.setattr(DTD, "_MD5", "0" * 32)
    with pytest.raises(data.DatasetNotFoundError, match="download .* failed"):
        data.resolve("dtd10", image_size=224)
    assert not (online_cache / "dtd10").exists()
    assert not [p for p in online_cache.iterdir() if p.name.startswith(".")]


@pytest.fixture
def imagenette_archive(tmp_path, monkeypatch, local_server):
    """An Imagenette 320 px archive (imagenette2-320/{train,val}/<wnid>/*.JPEG) served on 127.0.0.1, 6 + 3 per class."""
    root = tmp_path / "src" / "imagenette2-320"
    for i, wnid in enumerate(WNIDS):
        for split, n in (("train", 6), ("val", 3)):
            for k in range(n):
                jpeg(root / split / wnid / f"{wnid}_{split}_{k}.JPEG", size=(320, 240), seed=100 * i + k)
    archive = tar_gz(root, tmp_path / "imagenette2-320.tgz")
    monkeypatch.setitem(Imagenette._ARCHIVES, "320px", (local_server(archive), md5(archive)))
    monkeypatch.setattr(fetch, "IMAGENETTE_PER_CLASS", (4, 2))   # the real 150 + 50 need a real archive
    return root


def test_imagenette_subset_downloads_through_torchvision_seeded_and_square(online_cache, imagenette_archive):
    root = data.resolve("imagenette_subset", image_size=224)
    for split, n in (("train", 4), ("val", 2)):
        assert sorted(d.name for d in (root / split).iterdir()) == WNIDS
        assert all(len(list((root / split / w).iterdir())) == n for w in WNIDS)
    with Image.open(next((root / "train" / WNIDS[0]).iterdir())) as im:
        assert im.size == (224, 224)
    first = sorted(p.name for p in (root / "train" / WNIDS[0]).iterdir())
    again = fetch.fetch_imagenette_subset(online_cache / "again")      # same archive, same seed: same files
    assert sorted(p.name for p in (again / "train" / WNIDS[0]).iterdir()) == first
    assert fetch.manifest_problems(root) == []


def toy_zip(tmp_path: Path, serve) -> tuple[str, str]:
    """A hymenoptera-like zip (folder/train/<class>, folder/val/<class>) and its content digest."""
    src = tmp_path / "zipsrc" / "hymenoptera_data"
    for split in ("train", "val"):
        for c in ("ants", "bees"):
            for k in range(3):
                jpeg(src / split / c / f"{k}.jpg", seed=k)
    archive = tmp_path / "hymenoptera_data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src.parent).as_posix())
    return serve(archive), fetch.content_digest(src)


def test_hymenoptera_downloads_its_zip_checks_the_digest_and_writes_a_manifest(online_cache, tmp_path, monkeypatch,
                                                                               local_server):
    url, digest = toy_zip(tmp_path, local_server)
    info = data.REGISTRY["hymenoptera"]
    monkeypatch.setitem(data.REGISTRY, "hymenoptera", data.DatasetInfo(
        info.name, info.folder, info.description, url=url, content_sha256=digest))
    root = data.resolve("hymenoptera", image_size=224)
    assert root == online_cache / "hymenoptera_data" and fetch.manifest_problems(root) == []
    assert fetch.content_digest(root) == digest


def test_a_damaged_cache_entry_is_not_served(online_cache, dtd_archive, monkeypatch):
    root = data.resolve("dtd10", image_size=224)
    victim = next((root / "class03").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:50])                         # truncated after the download
    monkeypatch.setattr(data, "_VERIFIED", set())                        # a new process reads it again
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    with pytest.raises(data.DatasetNotFoundError, match=r"does not match its MANIFEST.*changed class03"):
        data.resolve("dtd10", image_size=224)
    monkeypatch.delenv("TLKIT_OFFLINE")
    assert data.resolve("dtd10", image_size=224) == root                 # online: downloaded again, intact
    assert fetch.manifest_problems(root) == []


def test_resolution_order_env_then_cache_then_pack(online_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "_ANNOUNCED", set())       # each copy is announced once per process
    assert data.locate("hymenoptera", image_size=96).where == "the embedded quick pack"
    cached = online_cache / "hymenoptera_data"
    (cached / "train" / "ants").mkdir(parents=True)
    assert data.locate("hymenoptera").path == cached                     # the cache before the pack
    env_copy = tmp_path / "env" / "hymenoptera_data"
    env_copy.mkdir(parents=True)
    monkeypatch.setenv("TLKIT_DATA", str(tmp_path / "env"))
    assert data.locate("hymenoptera").path == env_copy                   # $TLKIT_DATA first
    out = capsys.readouterr().out
    assert "from the embedded quick pack (images 224 px, enough for image_size <= 195)" in out
    assert f"from $TLKIT_DATA (full size): {env_copy}" in out


def test_offline_and_too_large_for_the_pack_names_the_download(online_cache, monkeypatch):
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.get_splits("dtd10", image_size=224)
    msg = str(err.value)
    assert "too small for image_size=224" in msg and "TLKIT_OFFLINE=1" in msg and "DTD, a 625 MB archive" in msg
    splits = data.get_splits("dtd10", image_size=128)                    # the pack serves the quick size
    with pytest.raises(data.DatasetNotFoundError, match="not image_size=224"):
        data.dataloaders(splits, image_size=224)


def test_the_pack_is_intact_small_and_described():
    index = json.loads((data.PACK_ROOT / "PACK.json").read_text())["datasets"]
    assert set(index) == {"hymenoptera_data", "dtd10", "imagenette_subset"}
    total = sum(p.stat().st_size for p in data.PACK_ROOT.rglob("*") if p.is_file())
    assert total <= 25e6
    for folder, entry in index.items():
        root = data.PACK_ROOT / folder
        assert fetch.manifest_problems(root) == []
        assert "tools/make_data_pack.py" in (root / "PROVENANCE.txt").read_text()
        photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        sides = [min(Image.open(p).size) for p in photos[::25]]
        assert max(sides) <= entry["shorter_side"] and min(sides) >= 0.9 * entry["shorter_side"]
    splits = data.get_splits("hymenoptera", image_size=128)
    assert (len(splits.train), len(splits.val)) == (244, 153)           # every photo of the official set
    assert sum(data.get_splits("dtd10").train.class_counts().values()) == 960


def test_a_wheel_carries_the_pack(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("tlkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("hymenoptera_data", "dtd10", "imagenette_subset"):
        assert f"tlkit/pack/{folder}/MANIFEST.sha256" in names and f"tlkit/pack/{folder}/PROVENANCE.txt" in names
    assert "tlkit/pack/PACK.json" in names
    assert sum(n.startswith("tlkit/pack/dtd10/") and n.endswith(".jpg") for n in names) == 1200


@pytest.mark.notebook
def test_a_bare_clone_runs_lesson_00_offline(tmp_path):
    """`git clone` of this repository with nothing beside it: lesson 00 runs with every download forbidden."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("TLKIT_DATA", "PYTHONPATH")}
    env.update(TLKIT_OFFLINE="1", TLKIT_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    run = subprocess.run([sys.executable, "-m", "tlkit", "lessons", "run", "0", "--preset", "quick",
                          "--out", str(tmp_path / "run")], cwd=clone, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lesson = json.loads((tmp_path / "run" / "metrics.json").read_text())["lessons"]["00_welcome"]
    assert lesson["status"] == "ok" and lesson["metrics"]["train_size"] == 244
    assert str(clone / "tlkit" / "pack") in (tmp_path / "run" / "00_welcome.ipynb").read_text()


def test_size_at_hand_never_starts_a_download_for_a_quick_run(online_cache, tmp_path, capsys):
    assert data.size_at_hand("dtd10", 192) == 139              # the pack holds dtd10 at 160 px
    assert "image_size 192 -> 139" in capsys.readouterr().out
    assert data.size_at_hand("hymenoptera", 192) == 192        # ... and hymenoptera at 224 px
    assert data.size_at_hand("digits", 192) == 192             # embedded arrays: any size
    (tmp_path / "mine" / "a").mkdir(parents=True)
    assert data.size_at_hand(tmp_path / "mine", 192) == 192    # a user's folder is full size
    assert not online_cache.exists() or not any(online_cache.iterdir())   # online, yet nothing was downloaded
