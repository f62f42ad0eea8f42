"""Datasets: registry and resolution, folder datasets, stratified splits, transforms, loaders.

Resolution order for a registry name: `$TLKIT_DATA/<folder>`, then the user cache (`$TLKIT_CACHE` or
`~/.cache/tlkit`), then the embedded quick-preset pack shipped inside tlkit (when the image size asked
for fits its resolution), then a real download (never with `TLKIT_OFFLINE=1`). A path is used as given.
One line says which copy is used; not found: one error naming every place searched and the fix.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import urllib.error
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import make_dataset
from torchvision.transforms import v2 as T

from . import fetch, image_checks
from .env import cpu_cores
from .errors import ChecksumError, DatasetLayoutError, DatasetNotFoundError, ParameterError
from .validate import check_fraction, check_positive_int

__all__ = ["DataCopy", "DataLoaders", "DatasetInfo", "ImageList", "ScanResult", "Splits", "at_most_indices",
           "available_datasets", "cache_dir", "check_image", "dataloaders", "decode_size", "denormalize",
           "eval_resize", "eval_transform", "get_splits", "largest_image_size", "load_rgb", "locate",
           "loader_generators", "make_loader", "offline", "pack_index", "resolve", "scan_folder", "search_places",
           "size_at_hand", "stratified_indices", "stratified_split", "train_transform", "CROP_FRACTION",
           "DEFAULT_NORM", "IMAGE_FORMATS", "IMAGE_SUFFIXES", "PACK_ROOT", "REGISTRY", "in_memory"]

IMAGE_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "PPM", "MPO"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
DEFAULT_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CROP_FRACTION = 0.875   # evaluation resizes the shorter side to size / CROP_FRACTION, then centre-crops `size`
PACK_ROOT = Path(__file__).with_name("pack")


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry: where a dataset comes from and how to check it."""

    name: str
    folder: str
    description: str
    url: str | None = None
    content_sha256: str | None = None   # digest of the unpacked files, see `fetch.content_digest`
    similar_to_imagenet: bool = True
    fetcher: str = "archive"            # "archive" (zip at `url`), "dtd10" or "imagenette_subset"
    download_size: str = ""             # what a download costs, for messages

    def fetch(self, dest: Path) -> Path:
        """Download (and derive) this dataset into `dest/<folder>`."""
        if self.fetcher == "archive":
            return fetch.fetch_archive(self.url, self.folder, self.content_sha256, dest)
        return getattr(fetch, f"fetch_{self.fetcher}")(dest)


REGISTRY: dict[str, DatasetInfo] = {
    "hymenoptera": DatasetInfo(
        "hymenoptera", "hymenoptera_data",
        "ants vs bees, 2 classes, ~120 train images per class (the PyTorch transfer-learning tutorial)",
        url="https://download.pytorch.org/tutorial/hymenoptera_data.zip",
        # The tutorial publishes no archive checksum, so we check the unpacked files instead.
        content_sha256="b0e3506710bc375be5996e1c9b29818c80cdfc19bcc324e560091da6690149ec",
        download_size="a 47 MB zip"),
    "imagenette_subset": DatasetInfo(
        "imagenette_subset", "imagenette_subset",
        "10 ImageNet classes, 150 train + 50 val per class, 224 px (ImageNet models have seen them)",
        fetcher="imagenette_subset", download_size="Imagenette 320 px, a 341 MB archive (25 MB kept)"),
    "dtd10": DatasetInfo(
        "dtd10", "dtd10",
        "10 texture classes from DTD, 120 per class, no split (dissimilar to ImageNet)",
        similar_to_imagenet=False, fetcher="dtd10", download_size="DTD, a 625 MB archive (38 MB kept)"),
    "digits": DatasetInfo(
        "digits", "", "scikit-learn's 8x8 handwritten digits, 10 classes, embedded (no download)",
        similar_to_imagenet=False, fetcher="embedded"),
}


# ---------------------------------------------------------------- resolution

@dataclass(frozen=True)
class DataCopy:
    """One copy of a dataset: its folder, where it was found, and the shorter side of its images (None: full size)."""

    path: Path
    where: str
    shorter_side: int | None = None

    def fits(self, image_size: int | None) -> bool:
        """Whether an `image_size` view (resize to size / CROP_FRACTION, then crop) needs no upscaling here."""
        return self.shorter_side is None or image_size is None or decode_size(image_size) <= self.shorter_side

    def describe(self) -> str:
        """'the embedded quick pack (images 160 px, enough for image_size <= 139)' and the like."""
        if self.shorter_side is None:
            return f"{self.where} (full size)"
        return (f"{self.where} (images {self.shorter_side} px, enough for image_size <= "
                f"{largest_image_size(self.shorter_side)})")


def eval_resize(image_size: int, crop_pct: float = CROP_FRACTION) -> int:
    """The shorter side the evaluation view resizes to before its centre crop of `image_size`."""
    return int(round(image_size / crop_pct))


def decode_size(image_size: int, crop_pct: float = CROP_FRACTION) -> int:
    """The shorter side to decode an image at for an `image_size` view (covers the evaluation resize)."""
    return int(image_size / crop_pct) + 1


def largest_image_size(shorter_side: int) -> int:
    """The largest image size whose `decode_size` fits images with this shorter side."""
    return math.ceil(shorter_side * CROP_FRACTION) - 1


def cache_dir() -> Path:
    """The user cache for downloaded datasets and features."""
    return Path(os.environ.get("TLKIT_CACHE", Path.home() / ".cache" / "tlkit")).expanduser()


def offline() -> bool:
    """`TLKIT_OFFLINE=1` forbids every download."""
    return os.environ.get("TLKIT_OFFLINE") == "1"


@lru_cache(maxsize=1)
def pack_index() -> dict:
    """The embedded pack's index (`tlkit/pack/PACK.json`): folder -> shorter side and image counts."""
    index = PACK_ROOT / "PACK.json"
    return json.loads(index.read_text())["datasets"] if index.is_file() else {}


def search_places(info: DatasetInfo) -> list[DataCopy]:
    """Where a registry dataset is looked for, in order (existing or not)."""
    places = []
    if os.environ.get("TLKIT_DATA"):
        places.append(DataCopy(Path(os.environ["TLKIT_DATA"]).expanduser() / info.folder, "$TLKIT_DATA"))
    places.append(DataCopy(cache_dir() / info.folder, "the user cache"))
    if info.folder in pack_index():
        places.append(DataCopy(PACK_ROOT / info.folder, "the embedded quick pack",
                               pack_index()[info.folder]["shorter_side"]))
    return places


_VERIFIED: set[Path] = set()


def _intact(copy: DataCopy) -> str | None:
    """Why a folder with a manifest no longer matches it (None if it does, or has no manifest)."""
    if copy.path in _VERIFIED or not (copy.path / fetch.MANIFEST).is_file():
        return None
    problems = fetch.manifest_problems(copy.path)
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        return f"{copy.path} does not match its {fetch.MANIFEST}: {'; '.join(problems[:3])}{more}"
    _VERIFIED.add(copy.path)
    return None


_ANNOUNCED: set[tuple[str, Path]] = set()


def _announce(name: str, copy: DataCopy) -> None:
    """Print once per process which copy of a registry dataset is used."""
    if (name, copy.path) not in _ANNOUNCED:
        _ANNOUNCED.add((name, copy.path))
        print(f"tlkit: dataset {name!r} from {copy.describe()}: {copy.path}")


def locate(name_or_path: str | os.PathLike, image_size: int | None = None, download: bool = True) -> DataCopy:
    """Find (or download) the copy of a dataset to use for images of `image_size` (None: any size)."""
    if isinstance(name_or_path, os.PathLike) or str(name_or_path) not in REGISTRY:
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            return DataCopy(path, "your folder")
        known = ", ".join(sorted(REGISTRY))
        raise DatasetNotFoundError(
            f"dataset {str(name_or_path)!r} is neither a registry name ({known}) nor an existing folder.")
    info = REGISTRY[str(name_or_path)]
    if info.fetcher == "embedded":
        raise ValueError(f"{info.name!r} is embedded in scikit-learn and has no folder; use get_splits({info.name!r}).")
    notes = []
    places = search_places(info)
    for place in places:
        if not place.path.is_dir():
            continue
        damage = _intact(place)
        if damage:
            notes.append(damage + " (delete it to download it again)")
        elif not place.fits(image_size):
            notes.append(f"{place.path} holds {place.describe()}, too small for image_size={image_size}")
        else:
            _announce(info.name, place)
            return place
    if offline():
        notes.append("TLKIT_OFFLINE=1, so no download was tried")
    elif download:
        try:
            copy = DataCopy(info.fetch(cache_dir()), "a download into the user cache")
            _announce(info.name, copy)
            return copy
        except (urllib.error.URLError, OSError, ChecksumError, RuntimeError, DatasetLayoutError) as exc:
            notes.append(f"download ({info.download_size}) failed: {type(exc).__name__}: {exc}")
    lines = "".join(f"  - {p.path} ({p.where})\n" for p in places)
    source = info.url or f"torchvision.datasets ({info.download_size})"
    raise DatasetNotFoundError(
        f"dataset {info.name!r} was not found"
        + (f" at the resolution image_size={image_size} needs" if image_size else "") + ". Searched:\n" + lines
        + "".join(f"  - {n}\n" for n in notes)
        + f"Fix: go online (unset TLKIT_OFFLINE) so tlkit downloads it from {source} into {cache_dir()}, "
          f"or point TLKIT_DATA at a folder that holds a full-size '{info.folder}/', or pass a folder path.")


def size_at_hand(name_or_path: str | os.PathLike, image_size: int) -> int:
    """`image_size`, or less when the only copy found without downloading is too small for it.

    Why: a quick run should not start a download of hundreds of MB for a few more pixels; the embedded
    pack holds dtd10 at 160 px, so a quick preset asking 192 px gets 139 px there (and says so).
    """
    if str(name_or_path) in REGISTRY and REGISTRY[str(name_or_path)].fetcher == "embedded":
        return image_size
    try:
        copy = locate(name_or_path, None, download=False)
    except DatasetNotFoundError:
        return image_size      # nothing local: the download that follows serves any size
    if copy.fits(image_size):
        return image_size
    size = largest_image_size(copy.shorter_side)
    print(f"tlkit: image_size {image_size} -> {size}: the copy at hand, {copy.describe()}, serves no more "
          f"(a full-size copy would be downloaded for {image_size}; pass image_size={image_size} to get it)")
    return size


def resolve(name_or_path: str | os.PathLike, download: bool = True, image_size: int | None = None) -> Path:
    """Return the folder of a registry dataset or of a user path, downloading if needed (see `locate`)."""
    return locate(name_or_path, image_size, download).path


# ---------------------------------------------------------------- folders and samples

@dataclass(frozen=True)
class ScanResult:
    """Valid (path, label) samples of a class-folder tree and what was skipped."""

    samples: tuple[tuple[str, int], ...]
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()


_JPEG_END = b"\xff\xd9"   # end-of-image marker. Inside entropy-coded data every 0xFF is followed by 0x00 or a
# restart marker; only a header segment between a progressive JPEG's scans (a comment) could hold one by chance.


def _jpeg_scan_start(f) -> int | None:
    """The offset of a JPEG's compressed data (just past its first start-of-scan header), found by walking the
    header segments from the start; None when the header ends first or holds stray bytes (then `check_image`
    decodes the file: libjpeg skips such bytes with a warning)."""
    f.seek(2)                                             # past start-of-image
    while True:
        head = f.read(2)
        if len(head) < 2 or head[0] != 0xFF:
            return None
        marker = head[1]
        while marker == 0xFF:                             # fill bytes before a marker
            more = f.read(1)
            if not more:
                return None
            marker = more[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:     # markers without a length
            continue
        if marker == 0xD9:                                # the end, before any scan
            return None
        size = f.read(2)
        if len(size) < 2 or int.from_bytes(size, "big") < 2:
            return None
        if marker == 0xDA:
            return f.tell() + int.from_bytes(size, "big") - 2
        f.seek(int.from_bytes(size, "big") - 2, os.SEEK_CUR)


def _jpeg_has_end(path: Path) -> bool:
    """Whether an end-of-image marker follows the compressed data: the last 64 KiB first, as it usually ends the
    file, then everything after the scan header (a motion photo appends a video after it)."""
    with open(path, "rb") as f:
        start = _jpeg_scan_start(f)
        if start is None:
            return False
        size = f.seek(0, os.SEEK_END)
        f.seek(max(start, size - 65536))
        if _JPEG_END in f.read():
            return True
        f.seek(start)
        return _JPEG_END in f.read()


def _riff_complete(path: Path) -> bool:
    """Whether a RIFF file (WebP) is as long as its header says."""
    with open(path, "rb") as f:
        head = f.read(12)
        return len(head) == 12 and f.seek(0, os.SEEK_END) >= int.from_bytes(head[4:8], "little") + 8


def _structure_is_whole(im: Image.Image, path: Path) -> bool:
    """Whether an opened image's file looks whole without decoding it (False: cannot tell, or it does not)."""
    if im.format in ("JPEG", "MPO"):
        return _jpeg_has_end(path)
    if im.format == "PNG":
        try:
            im.verify()      # every chunk's checksum, up to the end chunk, without inflating the pixels
        except Exception:    # PIL raises many types for broken files
            return False
        return True
    if im.format == "WEBP":
        return _riff_complete(path)
    return False


def check_image(path: Path) -> str | None:
    """Return why `path` is not a usable photo, or None if it is one.

    A JPEG is first checked by its structure (the header parses, an end-of-image marker follows the compressed
    data), a PNG by its chunks' checksums, a WebP by its length; a file that fails that, and every other format,
    is decoded, so a file that decodes is never refused. Why: the structure catches the usual damage, a cut-off
    download, at a few percent of the cost of decoding (a 12-megapixel JPEG takes 19 ms even at 1/8 scale, a
    2000 x 1500 PNG 62 ms, the WebP 54 ms). Damage inside whole-looking compressed data passes; a lesson that
    decodes such a file stops with an error naming it.
    """
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not a supported image type"
    try:
        with Image.open(path) as im:
            if im.format not in IMAGE_FORMATS:
                return f"{im.format} is not a photo format"
            if _structure_is_whole(im, path):
                return None
        with Image.open(path) as im:      # cannot tell from the structure: decode, as a lesson would
            im.draft("RGB", (64, 64))     # JPEG: decode at 1/8 size
            im.load()
    except Exception as exc:  # PIL raises many types for broken files
        return f"corrupt ({type(exc).__name__}: {exc})"
    return None


def _check_rule() -> str:
    """Everything `check_image`'s answer depends on besides the file, for the folder-check record's key."""
    import PIL
    from PIL import ImageFile
    return (f"check_image 3: {sorted(IMAGE_SUFFIXES)} {sorted(IMAGE_FORMATS)}; JPEG header and end marker, PNG verify,"
            f" WebP length, else (or failing those) draft 64 load; Pillow {PIL.__version__},"
            f" max_pixels {Image.MAX_IMAGE_PIXELS}, truncated_ok {ImageFile.LOAD_TRUNCATED_IMAGES}")


@lru_cache(maxsize=32)
def scan_folder(root: str, classes: tuple[str, ...] | None = None) -> ScanResult:
    """List class sub-folders of `root` and their valid images, skipping broken files with a warning.

    Each file is checked once (`check_image`: its structure, or a decode); `image_checks` remembers the usable
    ones while they are unchanged.
    """
    base = Path(root)
    given = classes
    found = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes or tuple(found)
    if not classes:
        raise DatasetLayoutError(
            f"{base} has no class sub-folders. Expected {base}/<class>/<image>.jpg "
            f"(or {base}/train/<class>/... and {base}/val/<class>/...).")
    present = {cls: label for label, cls in enumerate(classes) if (base / cls).is_dir()}
    listed = make_dataset(str(base), present, is_valid_file=lambda p: not Path(p).name.startswith("."),
                          allow_empty=True)   # torchvision's walk lists; the checks and the skip report are ours
    problems = image_checks.checked([p for p, _ in listed], base, check_image, _check_rule(), cache_dir(),
                                    cpu_cores())
    skipped = [(p, problems[p]) for p, _ in listed if problems[p]]
    samples = [(p, t) for p, t in listed if not problems[p]]
    if skipped:
        names = ", ".join(f"{Path(p).name} ({why})" for p, why in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"{base}: skipped {len(skipped)} file(s) that are not usable images: {names}{more}",
                      stacklevel=2)
    if not samples:
        raise DatasetLayoutError(f"{base} has class folders {list(classes)} but no readable images in them.")
    if given is None:
        samples, classes = _drop_empty_classes(base, samples, classes)
    return ScanResult(tuple(samples), tuple(classes), tuple(skipped))


def _drop_empty_classes(base: Path, samples: list, classes: Sequence[str]) -> tuple[list, tuple[str, ...]]:
    """Drop class folders without a usable image (a warning names them); fewer than two classes is an error.

    Why: an empty class would become an output that no image ever trains, and one class is no classifier.
    """
    used = sorted({label for _, label in samples})
    empty = [c for i, c in enumerate(classes) if i not in used]
    if empty:
        warnings.warn(f"{base}: ignored {len(empty)} class folder(s) with no usable image: {', '.join(empty)}",
                      stacklevel=3)
    if len(used) < 2:
        raise DatasetLayoutError(
            f"{base} has {len(used)} class folder with usable images ({', '.join(classes[i] for i in used)}); "
            f"a classifier needs at least two, e.g. {base}/ants/*.jpg and {base}/bees/*.jpg.")
    relabel = {old: new for new, old in enumerate(used)}
    return [(p, relabel[t]) for p, t in samples], tuple(classes[i] for i in used)


def load_rgb(path: str, min_size: int | None = None) -> Image.Image:
    """Open an image as RGB; with `min_size`, JPEGs decode at a reduced scale that still covers it.

    Why: decoding a 500x375 JPEG at 1/2 or 1/4 scale is several times faster and the result is
    resized down anyway.
    """
    with Image.open(path) as im:
        if min_size and im.format == "JPEG":
            im.draft("RGB", (min_size, min_size))
        return im.convert("RGB")


class ImageList(Dataset):
    """Images (paths or arrays) with integer labels and one transform; the unit every lesson uses."""

    def __init__(self, items: Sequence[Any], targets: Sequence[int], classes: Sequence[str],
                 transform: Callable | None = None, decode_size: int | None = None):
        if len(items) != len(targets):
            raise ValueError("items and targets differ in length")
        self.items = list(items)
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.transform = transform
        self.decode_size = decode_size
        self.source_digest: str | None = None   # set by `in_memory`: names the pixels without reading them

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> Image.Image:
        """The i-th image as an RGB PIL image, before any transform."""
        item = self.items[i]
        if isinstance(item, np.ndarray):
            return Image.fromarray(item).convert("RGB")
        try:
            return load_rgb(item, self.decode_size)
        except Exception as exc:
            raise OSError(f"cannot read image {item}: {exc} (remove or replace the file)") from exc

    def __getitem__(self, i: int):
        img = self.image(i)
        return (self.transform(img) if self.transform else img), self.targets[i]

    def _copy(self, idx: Sequence[int] | None = None, **changes) -> "ImageList":
        idx = range(len(self)) if idx is None else idx
        new = ImageList([self.items[i] for i in idx], [self.targets[i] for i in idx], self.classes,
                        self.transform, self.decode_size)
        if isinstance(idx, range) and idx == range(len(self)):   # the same pixels: the same name
            new.source_digest = self.source_digest
        for k, v in changes.items():
            setattr(new, k, v)
        return new

    def with_transform(self, transform: Callable | None, decode_size: int | None = None) -> "ImageList":
        """The same images with another transform (and JPEG decode size)."""
        return self._copy(transform=transform, decode_size=decode_size or self.decode_size)

    def take(self, indices: Sequence[int]) -> "ImageList":
        """The images at `indices`, in that order."""
        return self._copy(list(indices))

    def subset(self, fraction_or_count: float | int, seed: int = 0) -> "ImageList":
        """A seeded, stratified subset: a fraction in (0, 1] or a number of images."""
        return self.take(stratified_indices(self.targets, fraction_or_count, seed))

    def class_counts(self) -> dict[str, int]:
        """Images per class name."""
        counts = Counter(self.targets)
        return {c: counts.get(i, 0) for i, c in enumerate(self.classes)}

    def fingerprint(self) -> str:
        """A short digest of which files/labels this list holds (used by feature caches).

        Arrays are hashed byte by byte, unless `in_memory` named their source: then the name stands for
        them, so a feature-cache hit does not page in every pixel of a memory-mapped entry.
        """
        h = hashlib.sha256()
        if self.source_digest is not None:
            h.update(f"decoded:{self.source_digest}|{self.targets}".encode())
            return h.hexdigest()[:16]
        for item, t in zip(self.items, self.targets):
            if isinstance(item, np.ndarray):
                h.update(item.tobytes())
            else:
                st = os.stat(item)
                h.update(f"{os.path.abspath(item)}|{st.st_size}|{st.st_mtime_ns}".encode())
            h.update(f"|{t}\n".encode())
        return h.hexdigest()[:16]


def stratified_indices(targets: Sequence[int], fraction_or_count: float | int, seed: int = 0) -> list[int]:
    """Seeded indices keeping every class's share (at least one image per class)."""
    targets = np.asarray(targets)
    n = len(targets)
    if isinstance(fraction_or_count, float) or fraction_or_count == 1:
        if not 0 < fraction_or_count <= 1:
            raise ValueError(f"fraction {fraction_or_count} must be in (0, 1]")
        if fraction_or_count == 1:
            return list(range(n))
        want = fraction_or_count * n
    else:
        if not 0 < fraction_or_count <= n:
            raise ValueError(f"count {fraction_or_count} must be in 1..{n}")
        want = float(fraction_or_count)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        k = max(1, int(round(want * len(members) / n)))
        chosen.extend(rng.choice(members, size=min(k, len(members)), replace=False).tolist())
    return sorted(chosen)


def at_most_indices(targets: Sequence[int], count: int, seed: int = 0) -> list[int]:
    """Exactly `count` seeded indices (all when there are fewer), every class at its share of them.

    Shares are apportioned by largest remainder with one image per class as a floor, so the total is
    exact (`stratified_indices` rounds each class on its own and can miss by a few).
    """
    targets = np.asarray(targets)
    if count >= len(targets):
        return list(range(len(targets)))
    classes, sizes = np.unique(targets, return_counts=True)
    if count < len(classes):
        raise ValueError(f"count {count} is fewer than the {len(classes)} classes: every class needs an image")
    quota = count * sizes / len(targets)
    take = np.minimum(sizes, np.maximum(1, np.floor(quota))).astype(int)
    while take.sum() < count:   # the class furthest below its share (with images left) gets one more
        room = np.where(take < sizes, quota - take, -np.inf)
        take[int(np.argmax(room))] += 1
    while take.sum() > count:   # only when the one-image floor overshoots: the class furthest above gives one
        over = np.where(take > 1, take - quota, -np.inf)
        take[int(np.argmax(over))] -= 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(targets == c), size=k, replace=False) for c, k in zip(classes, take)]
    return sorted(int(i) for part in chosen for i in part)


def stratified_split(targets: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded stratified (train, val) index lists, as scikit-learn's `train_test_split` makes them."""
    from sklearn.model_selection import train_test_split
    check_fraction("val_fraction", val_fraction, 0.2, include_one=False)
    counts = Counter(int(t) for t in targets)
    n_val, n_classes = math.ceil(val_fraction * len(targets)), len(counts)
    if min(counts.values()) < 2 or not n_classes <= n_val <= len(targets) - n_classes:
        raise DatasetLayoutError(
            f"cannot split {len(targets)} images of {n_classes} classes (smallest class: {min(counts.values())}) "
            f"with val_fraction={val_fraction}: every class needs an image on each side. Add images, or give "
            f"the folder train/ and val/ sub-folders, or change val_fraction (e.g. val_fraction=0.5).")
    idx = np.arange(len(targets))
    train, val = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=np.asarray(targets))
    return sorted(train.tolist()), sorted(val.tolist())


@dataclass
class Splits:
    """Training and validation images of one dataset."""

    train: ImageList
    val: ImageList
    classes: list[str]
    root: Path | None = None
    name: str = ""
    skipped: list = field(default_factory=list)
    shorter_side: int | None = None   # of the copy's images; None: full size (see `DataCopy`)

    def check_image_size(self, image_size: int) -> None:
        """Refuse an image size this copy cannot serve without upscaling (the embedded pack is small)."""
        check_positive_int("image_size", image_size, 128)
        if self.shorter_side and decode_size(image_size) > self.shorter_side:
            raise DatasetNotFoundError(
                f"{self.name}: this copy ({self.root}) holds images of {self.shorter_side} px, enough for "
                f"image_size <= {largest_image_size(self.shorter_side)}, not image_size={image_size}. "
                f"Load it with data.get_splits({self.name!r}, image_size={image_size}) to get a full-size copy "
                f"(downloaded when online).")

    def at_most(self, max_train: int | None = None, max_val: int | None = None, seed: int = 0) -> "Splits":
        """At most `max_train` training and `max_val` validation images (seeded, stratified); None keeps all.

        Why: a quick preset's time and memory must not grow with the folder a learner points it at. It
        prints what it kept when a limit cuts, so a notebook always says what it used.
        """
        limits = {"max_train": max_train, "max_val": max_val}
        for key, value in limits.items():
            if value is not None and check_positive_int(key, value, 250) < len(self.classes):
                raise ParameterError(f"{key}={value} keeps fewer images than {self.name or 'the dataset'} has "
                                     f"classes ({len(self.classes)}); use at least {2 * len(self.classes)}.")
        train, val = (part if cap is None or len(part) <= cap else part.take(at_most_indices(part.targets, cap, seed))
                      for part, cap in ((self.train, max_train), (self.val, max_val)))
        if (len(train), len(val)) != (len(self.train), len(self.val)):
            print(f"tlkit: {self.name or self.root} has {len(self.train):,} training / {len(self.val):,} validation "
                  f"images; using a seeded, stratified {len(train):,} / {len(val):,} (max_train={max_train}, "
                  f"max_val={max_val}: the preset's limits, so the run's cost does not grow with the folder; "
                  "raise them to use more)")
        return replace(self, train=train, val=val)

    def pooled(self) -> ImageList:
        """Every training and validation image in one list, training first (for k-fold cross-fitting).

        It carries the validation list's transform and decode size. Lists that `in_memory` named keep a name
        (so a feature-cache lookup does not hash every pixel).
        """
        pool = ImageList(self.train.items + self.val.items, self.train.targets + self.val.targets, self.classes,
                         self.val.transform, self.val.decode_size)
        if self.train.source_digest and self.val.source_digest:
            pool.source_digest = hashlib.sha256(f"{self.train.source_digest}+{self.val.source_digest}".encode()
                                                ).hexdigest()[:16]
        return pool

    def __repr__(self) -> str:
        return (f"Splits({self.name or self.root}: {len(self.classes)} classes, "
                f"train {len(self.train)}, val {len(self.val)})")


def get_splits(name_or_path: str | os.PathLike = "hymenoptera", seed: int = 0, val_fraction: float = 0.2,
               download: bool = True, image_size: int | None = None, max_train: int | None = None,
               max_val: int | None = None) -> Splits:
    """Load a dataset's train/val images; a folder without `train/` and `val/` is split (seeded, stratified).

    `image_size` is the largest size the caller will view the images at: a copy too small for it (the
    embedded pack) is passed over for a full-size one. None accepts any copy. `max_train` / `max_val`
    keep at most that many images of each split (`Splits.at_most`).
    """
    return _load_splits(name_or_path, seed, val_fraction, download, image_size).at_most(max_train, max_val, seed)


def _load_splits(name_or_path, seed: int, val_fraction: float, download: bool, image_size: int | None) -> Splits:
    check_fraction("val_fraction", val_fraction, 0.2, include_one=False)
    if image_size is not None:
        check_positive_int("image_size", image_size, 128)
    if str(name_or_path) == "digits":
        return _digits_splits(seed, val_fraction)
    copy = locate(name_or_path, image_size, download)
    root = copy.path
    name = str(name_or_path) if str(name_or_path) in REGISTRY else root.name
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_scan = scan_folder(str(root / "train"))
        val_scan = scan_folder(str(root / "val"), train_scan.classes)
        classes = list(train_scan.classes)
        train = ImageList([p for p, _ in train_scan.samples], [t for _, t in train_scan.samples], classes)
        val = ImageList([p for p, _ in val_scan.samples], [t for _, t in val_scan.samples], classes)
        skipped = list(train_scan.skipped + val_scan.skipped)
    else:
        if (root / "train").is_dir() != (root / "val").is_dir():
            raise DatasetLayoutError(f"{root} has only one of train/ and val/; add the other or remove both "
                                     "so tlkit makes a seeded, stratified split.")
        scan = scan_folder(str(root))
        classes = list(scan.classes)
        everything = ImageList([p for p, _ in scan.samples], [t for _, t in scan.samples], classes)
        tr, va = stratified_split(everything.targets, val_fraction, seed)
        train, val = everything.take(tr), everything.take(va)
        skipped = list(scan.skipped)
    return Splits(train, val, classes, root, name, skipped, copy.shorter_side)


def _digits_splits(seed: int, val_fraction: float) -> Splits:
    """scikit-learn's 8x8 digits as 32x32 grey images (a dissimilar domain with no download)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    pixels = (digits.images / 16.0 * 255).astype(np.uint8)
    images = [np.asarray(Image.fromarray(p).resize((32, 32), Image.NEAREST)) for p in pixels]
    classes = [str(i) for i in range(10)]
    everything = ImageList(images, digits.target.tolist(), classes)
    tr, va = stratified_split(everything.targets, val_fraction, seed)
    return Splits(everything.take(tr), everything.take(va), classes, None, "digits")


def available_datasets() -> dict[str, str]:
    """Registry names with where they were found (or why not)."""
    found = {}
    for name, info in REGISTRY.items():
        if info.fetcher == "embedded":
            found[name] = "embedded (scikit-learn)"
            continue
        place = next((p for p in search_places(info) if p.path.is_dir()), None)
        found[name] = (f"{place.describe()}: {place.path}" if place
                       else "not found (offline)" if offline() else f"downloadable ({info.download_size})")
    return found


# ---------------------------------------------------------------- transforms and loaders

def train_transform(size: int, norm=DEFAULT_NORM, augment: bool = True) -> T.Compose:
    """Random-resized crop + mirror (or a plain resize) then normalise: the standard training view."""
    geometric = ([T.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), T.RandomHorizontalFlip()]
                 if augment else [T.Resize(size, antialias=True), T.CenterCrop(size)])
    return T.Compose([T.ToImage(), *geometric, T.ToDtype(torch.float32, scale=True), T.Normalize(*norm)])


def eval_transform(size: int, norm=DEFAULT_NORM, crop_pct: float = CROP_FRACTION) -> T.Compose:
    """Resize the shorter side to size/crop_pct, centre-crop `size`, normalise."""
    return T.Compose([T.ToImage(), T.Resize(eval_resize(size, crop_pct), antialias=True), T.CenterCrop(size),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(*norm)])


def denormalize(x: torch.Tensor, norm=DEFAULT_NORM) -> torch.Tensor:
    """Undo `Normalize` so a tensor can be shown as an image (values clamped to [0, 1])."""
    mean = torch.tensor(norm[0], device=x.device).view(-1, 1, 1)
    std = torch.tensor(norm[1], device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)


@dataclass
class DataLoaders:
    """A training and a validation loader, the class names, and the `Splits` they were built from (None when
    they load features or tensors): the `dls` of a `tlkit.Learner`."""

    train: DataLoader
    val: DataLoader
    classes: list[str]
    splits: Splits | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0,
                seed: int | None = None, **kwargs) -> DataLoader:
    """A DataLoader with sensible defaults (persistent workers, seeded shuffling when asked).

    A shuffled (training) loader never yields a batch of one: BatchNorm cannot train on it, so a last
    batch of one image is dropped (that image is in another batch next epoch).
    """
    check_positive_int("batch_size", batch_size, 32)
    check_positive_int("num_workers", num_workers, 0, allow_zero=True)
    if shuffle and "drop_last" not in kwargs and len(ds) % batch_size == 1:
        if len(ds) == 1:
            raise DatasetLayoutError("a training set of one image cannot train a network with BatchNorm; "
                                     "use more images (e.g. fraction=1.0).")
        kwargs["drop_last"] = True
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      persistent_workers=num_workers > 0, generator=generator, **kwargs)


def loader_generators(loader) -> list[torch.Generator]:
    """The private random generators a loader draws from: its sampler's and its own (the global one aside)."""
    found = [getattr(getattr(loader, "sampler", None), "generator", None), getattr(loader, "generator", None)]
    return [g for g in found if isinstance(g, torch.Generator)]


def dataloaders(dataset: str | os.PathLike | Splits = "hymenoptera", image_size: int = 128, norm=DEFAULT_NORM,
                batch_size: int = 32, augment: bool = True, fraction: float = 1.0, seed: int = 0,
                num_workers: int = 0, train_tfm: Callable | None = None, val_tfm: Callable | None = None,
                val_fraction: float = 0.2, decoded: bool = False) -> DataLoaders:
    """Training/validation loaders for a dataset name, folder or `Splits`, at one image size.

    With `decoded`, the images are decoded once (`in_memory`, through the course-wide cache) and stored with their
    shorter side at `eval_resize(image_size)`; every batch reads those pixels. The evaluation view is then the
    same, bit for bit; training views are resized from the stored copy, so a small random crop is a little softer
    than one cut from a fresh decode. Why: a batch of camera photos costs 19 ms an image to decode even at reduced
    scale, more than the network's step at quick-preset sizes.
    """
    check_positive_int("image_size", image_size, 128)
    check_fraction("fraction", fraction, 0.5)
    splits = dataset if isinstance(dataset, Splits) else get_splits(dataset, seed=seed, val_fraction=val_fraction,
                                                                     image_size=image_size)
    splits.check_image_size(image_size)
    train = splits.train if fraction == 1 else splits.train.subset(float(fraction), seed)
    decode = decode_size(image_size)
    val = splits.val
    if decoded:   # at the evaluation view's shorter side: the entry `features.precompute_splits` decodes too
        train, val = in_memory(train, eval_resize(image_size)), in_memory(val, eval_resize(image_size))
    train = train.with_transform(train_tfm or train_transform(image_size, norm, augment), decode)
    val = val.with_transform(val_tfm or eval_transform(image_size, norm), decode)
    return DataLoaders(make_loader(train, batch_size, True, num_workers),
                       make_loader(val, batch_size * 2, False, num_workers),
                       splits.classes, splits)


def _shrunk_array(source: ImageList, i: int, short_side: int) -> np.ndarray:
    """Image `i` as uint8 H x W x 3, shrunk (never enlarged) so its shorter side is `short_side`.

    The shrink is `eval_transform`'s own resize (torchvision, on the uint8 tensor), so the evaluation view of a
    shrunk image equals the one of the file, bit for bit: cached and uncached features are the same.
    """
    img = source.image(i)
    if min(img.size) <= short_side:
        return np.asarray(img)
    return T.Resize(short_side, antialias=True)(T.ToImage()(img)).permute(1, 2, 0).numpy()


_SHRINK_RULE = "PIL decode (draft) at short_side, RGB, torchvision v2 Resize(short_side, antialias) on uint8 tensors"


def in_memory(images: ImageList, short_side: int, cache: bool | str | os.PathLike = True) -> ImageList:
    """Decode every image once, shrunk so its shorter side is `short_side`, and keep the pixels at hand.

    Why: lessons that train on a few hundred photos pass over them dozens of times; decoding a JPEG
    each time would cost more than the small network at these image sizes. Images read from files are
    kept in the course-wide decoded-image cache (`tlkit.image_cache`, `<cache>/decoded`; `cache` may name
    another folder, or be False): the next lesson or run at the same size reads them back instead.
    """
    from . import image_cache
    from .progress import progress

    source = images.with_transform(None, decode_size=short_side)
    if cache is False or not any(isinstance(item, (str, os.PathLike)) for item in images.items):
        return ImageList([_shrunk_array(source, i, short_side) for i in range(len(source))],
                         images.targets, images.classes)
    root = Path(cache) if not isinstance(cache, bool) else cache_dir() / image_cache.FOLDER
    try:
        root.mkdir(parents=True, exist_ok=True)
        usable = os.access(root, os.W_OK | os.X_OK)
    except OSError:
        usable = False
    if not usable:
        warnings.warn(f"the decoded-image cache {root} is not writable: decoding in memory only", stacklevel=2)
        return in_memory(images, short_side, cache=False)
    key = {"data": images.fingerprint(), "short_side": int(short_side), "rule": _SHRINK_RULE}
    arrays, _ = image_cache.cached_arrays(
        key, len(source), lambda i: _shrunk_array(source, i, short_side), root,
        progress=lambda it: progress(it, desc=f"decode {len(source)} images at {short_side} px", leave=False))
    decoded = ImageList(arrays, images.targets, images.classes)
    decoded.source_digest = image_cache.entry_digest(key)   # the entry's key covers the files and the decode
    return decoded
