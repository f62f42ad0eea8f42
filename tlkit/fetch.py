"""Real downloads of the registry datasets, and the derivations that turn them into the course's folders.

Every folder lands in the cache atomically (built beside it, then renamed into place) with a
`MANIFEST.sha256`, which `manifest_problems` checks again whenever the folder is read. The embedded
quick-preset pack (`tools/make_data_pack.py`) is made with the same `downscale` and manifest code.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from PIL import Image

from .errors import ChecksumError, DatasetLayoutError

__all__ = ["DTD10_CLASSES", "IMAGENETTE_PER_CLASS", "MANIFEST", "METADATA_FILES", "content_digest",
           "downscale", "fetch_archive", "fetch_dtd10", "fetch_imagenette_subset", "install_atomically",
           "manifest_problems", "sha256_file", "write_manifest", "DTD10_PROVENANCE", "IMAGENETTE_PROVENANCE"]

MANIFEST = "MANIFEST.sha256"
METADATA_FILES = {MANIFEST, "PROVENANCE.txt"}
DTD10_CLASSES = 10                 # the first 10 DTD classes in alphabetical order
IMAGENETTE_PER_CLASS = (150, 50)   # seeded train / val images per class in imagenette_subset


# ---------------------------------------------------------------- digests and manifests

def sha256_file(path: Path) -> str:
    """The sha256 hex digest of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _data_files(root: Path) -> list[Path]:
    """Every file below `root` except the metadata files at its top, sorted by relative path."""
    files = [p for p in Path(root).rglob("*") if p.is_file()]
    return sorted((p for p in files if p.relative_to(root).as_posix() not in METADATA_FILES),
                  key=lambda p: p.relative_to(root).as_posix())


def content_digest(root: Path) -> str:
    """sha256 over the sorted `sha256  relpath` lines of every data file below `root`."""
    lines = "".join(f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in _data_files(root))
    return hashlib.sha256(lines.encode()).hexdigest()


def write_manifest(root: Path) -> Path:
    """Write `root/MANIFEST.sha256`: one `sha256  ./relpath` line per data file."""
    root = Path(root)
    lines = "".join(f"{sha256_file(p)}  ./{p.relative_to(root).as_posix()}\n" for p in _data_files(root))
    (root / MANIFEST).write_text(lines)
    return root / MANIFEST


def manifest_problems(root: Path) -> list[str]:
    """What differs between `root` and its manifest: missing, changed and unlisted files (empty if intact)."""
    root = Path(root)
    listed = {}
    for line in (root / MANIFEST).read_text().splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel.removeprefix("./")] = digest
    present = {p.relative_to(root).as_posix(): p for p in _data_files(root)}
    problems = [f"missing {rel}" for rel in sorted(set(listed) - set(present))]
    problems += [f"not in the manifest: {rel}" for rel in sorted(set(present) - set(listed))]
    problems += [f"changed {rel}" for rel in sorted(set(listed) & set(present))
                 if sha256_file(present[rel]) != listed[rel]]
    return problems


# ---------------------------------------------------------------- building folders

def downscale(src: Path, dst: Path, shorter_side: int, quality: int, square: bool = False) -> None:
    """Save `src` as an RGB JPEG whose shorter side is at most `shorter_side` (Lanczos, never upscaled).

    With `square`, the centre square of that size is kept (imagenette_subset's 224x224 images).
    """
    with Image.open(src) as im:
        im = im.convert("RGB")
    scale = shorter_side / min(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    if square:
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side))
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, "JPEG", quality=quality)


def install_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder with `build(tmp)` beside `final`, write its manifest, then rename it into place.

    Why: an interrupted download or a second process never leaves a half-written dataset where a
    reader looks. If another process installed an intact copy first, that copy is kept.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-building-"))
    try:
        build(tmp)
        write_manifest(tmp)
        if final.exists():
            if (final / MANIFEST).is_file() and not manifest_problems(final):
                return final                                    # someone else finished first
            final.rename(final.with_name(f".{final.name}-damaged-{time.time_ns()}"))
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in final.parent.glob(f".{final.name}-damaged-*"):
        shutil.rmtree(old, ignore_errors=True)
    return final


def fetch_archive(url: str, folder: str, content_sha256: str | None, dest: Path, timeout: float = 30) -> Path:
    """Download a zip that unpacks to `folder/`, check its files' digest, install it into `dest/folder`."""
    from .progress import progress

    def build(tmp: Path) -> None:
        archive = tmp.parent / f"{tmp.name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(archive, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with progress(total=total, unit="B", unit_scale=True, desc=f"download {folder}") as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
            unpacked = tmp / ".unpacked"
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpacked)
        finally:
            archive.unlink(missing_ok=True)
        root = unpacked / folder
        if not root.is_dir():
            raise DatasetLayoutError(f"{url} did not unpack to a '{folder}/' folder")
        if content_sha256 and content_digest(root) != content_sha256:
            raise ChecksumError(f"{url}: unpacked files differ from the expected content")
        for item in root.iterdir():
            item.rename(tmp / item.name)
        shutil.rmtree(unpacked)

    return install_atomically(Path(dest) / folder, build)


def _with_download_dir(dest: Path, derive: Callable[[Path, Path], None]) -> Callable[[Path], None]:
    """A `build` that downloads into a scratch folder beside `dest`, derives from it, then deletes it."""
    def build(tmp: Path) -> None:
        scratch = Path(tempfile.mkdtemp(dir=dest, prefix=".download-"))
        try:
            derive(scratch, tmp)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return build


DTD10_PROVENANCE = """dtd10: the first {n} classes of the Describable Textures Dataset (DTD), all images of each
source: torchvision.datasets.DTD(download=True) -> {url} (md5 checked by torchvision)
derivation (tlkit.fetch.fetch_dtd10): the first {n} class folders of dtd/images in alphabetical order,
  every image of each; converted to RGB, shorter side resized to 256 px (Lanczos, never upscaled),
  saved as JPEG quality 90 (Pillow {pillow}). The downloaded archive is deleted afterwards.
classes: {classes}
licence: DTD is published by its authors for research purposes (see the DTD web page).
"""


def fetch_dtd10(dest: Path) -> Path:
    """Download DTD with torchvision and derive `dest/dtd10`: first 10 classes, shorter side 256."""
    from torchvision.datasets import DTD
    import PIL

    def derive(scratch: Path, out: Path) -> None:
        DTD(str(scratch), split="train", download=True)       # torchvision downloads and checks the md5
        images = scratch / "dtd" / "dtd" / "images"
        classes = sorted(d.name for d in images.iterdir() if d.is_dir())[:DTD10_CLASSES]
        for cls in classes:
            for src in sorted((images / cls).glob("*.jpg")):
                downscale(src, out / cls / src.name, 256, 90)
        (out / "PROVENANCE.txt").write_text(DTD10_PROVENANCE.format(
            n=DTD10_CLASSES, url=DTD._URL, pillow=PIL.__version__, classes=" ".join(classes)))

    return install_atomically(Path(dest) / "dtd10", _with_download_dir(Path(dest), derive))


IMAGENETTE_PROVENANCE = """imagenette_subset: 10 ImageNet classes (Imagenette), {n_train} train + {n_val} val images per class
source: torchvision.datasets.Imagenette(size="320px", download=True) -> {url} (md5 checked by torchvision)
derivation (tlkit.fetch.fetch_imagenette_subset): for each class (WordNet ids, sorted), the sorted file list
  of train/ then val/ is sampled with one random.Random(0): {n_train} train and {n_val} val files per class;
  each image converted to RGB, shorter side resized to 224 px (Lanczos), centre square 224x224 kept,
  saved as JPEG quality 90 (Pillow {pillow}). The downloaded archive is deleted afterwards.
licence: Imagenette (fast.ai) is a subset of ImageNet; ImageNet's terms of access apply.
note: ImageNet-pretrained models have seen these images.
"""


def fetch_imagenette_subset(dest: Path) -> Path:
    """Download Imagenette (320 px) with torchvision and derive `dest/imagenette_subset`: seeded 150 + 50 per class."""
    from torchvision.datasets import Imagenette
    import PIL

    n_train, n_val = IMAGENETTE_PER_CLASS

    def derive(scratch: Path, out: Path) -> None:
        train = Imagenette(str(scratch), split="train", size="320px", download=True)
        Imagenette(str(scratch), split="val", size="320px", download=True)   # same archive: no second download
        root = scratch / Path(Imagenette._ARCHIVES["320px"][0]).stem
        rng = random.Random(0)
        for wnid in sorted(train.wnids):
            for split, n in (("train", n_train), ("val", n_val)):
                files = sorted(p for p in (root / split / wnid).iterdir() if p.suffix.lower() == ".jpeg")
                if len(files) < n:
                    raise DatasetLayoutError(f"Imagenette {split}/{wnid} has {len(files)} images, fewer than {n}")
                for src in rng.sample(files, n):
                    downscale(src, out / split / wnid / src.name, 224, 90, square=True)
        (out / "PROVENANCE.txt").write_text(IMAGENETTE_PROVENANCE.format(
            n_train=n_train, n_val=n_val, url=Imagenette._ARCHIVES["320px"][0], pillow=PIL.__version__))

    return install_atomically(Path(dest) / "imagenette_subset", _with_download_dir(Path(dest), derive))
