"""Datasets: registry and resolution, folder datasets, stratified splits, transforms, loaders.

Resolution order for a registry name: `$TLKIT_DATA/<folder>`, then the user cache
(`$TLKIT_CACHE` or `~/.cache/tlkit`), then a download from the dataset's official URL,
verified by checksum (never with `TLKIT_OFFLINE=1`). A path is used as given. Offline and not found: one error naming
every place searched and the fix.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

IMAGE_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "PPM", "MPO"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
METADATA_FILES = {"MANIFEST.sha256", "PROVENANCE.txt"}
DEFAULT_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is in none of the places searched and could not be downloaded."""


class DatasetLayoutError(ValueError):
    """A folder does not have the class-folder layout a dataset needs."""


class ChecksumError(RuntimeError):
    """A downloaded dataset does not match its published checksum."""


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry: where a dataset comes from and how to check it."""

    name: str
    folder: str
    description: str
    url: str | None = None
    archive_sha256: str | None = None
    content_sha256: str | None = None   # digest of the unpacked files, see `content_digest`
    similar_to_imagenet: bool = True


REGISTRY: dict[str, DatasetInfo] = {
    "hymenoptera": DatasetInfo(
        "hymenoptera", "hymenoptera_data",
        "ants vs bees, 2 classes, ~120 train images per class (the PyTorch transfer-learning tutorial)",
        url="https://download.pytorch.org/tutorial/hymenoptera_data.zip",
        # The tutorial publishes no archive checksum, so we check the unpacked files instead.
        content_sha256="b0e3506710bc375be5996e1c9b29818c80cdfc19bcc324e560091da6690149ec"),
    "imagenette_subset": DatasetInfo(
        "imagenette_subset", "imagenette_subset",
        "10 ImageNet classes, 150 train + 50 val per class, 224 px (ImageNet models have seen them)"),
    "dtd10": DatasetInfo(
        "dtd10", "dtd10",
        "10 texture classes from DTD, 120 per class, no split (dissimilar to ImageNet)",
        similar_to_imagenet=False),
    "digits": DatasetInfo(
        "digits", "", "scikit-learn's 8x8 handwritten digits, 10 classes, embedded (no download)",
        similar_to_imagenet=False),
}


# ---------------------------------------------------------------- resolution

def cache_dir() -> Path:
    """The user cache for downloaded datasets and features."""
    return Path(os.environ.get("TLKIT_CACHE", Path.home() / ".cache" / "tlkit")).expanduser()


def search_places(info: DatasetInfo) -> list[Path]:
    """Where a registry dataset is looked for, in order."""
    places = []
    if os.environ.get("TLKIT_DATA"):
        places.append(Path(os.environ["TLKIT_DATA"]).expanduser() / info.folder)
    places.append(cache_dir() / info.folder)
    return places


def resolve(name_or_path: str | os.PathLike, download: bool = True) -> Path:
    """Return the folder of a registry dataset or of a user path, downloading if needed."""
    if isinstance(name_or_path, os.PathLike) or str(name_or_path) not in REGISTRY:
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            return path
        known = ", ".join(sorted(REGISTRY))
        raise DatasetNotFoundError(
            f"dataset {str(name_or_path)!r} is neither a registry name ({known}) nor an existing folder.")
    info = REGISTRY[str(name_or_path)]
    if info.name == "digits":
        raise ValueError("'digits' is embedded in scikit-learn and has no folder; use get_splits('digits').")
    places = search_places(info)
    for place in places:
        if place.is_dir():
            return place
    errors = []
    if os.environ.get("TLKIT_OFFLINE") == "1":
        download = False
        errors.append("TLKIT_OFFLINE=1, so no download was tried")
    if download and info.url:
        try:
            return download_dataset(info, cache_dir())
        except (urllib.error.URLError, OSError, ChecksumError) as exc:
            errors.append(f"download from {info.url} failed: {exc}")
    elif not info.url:
        errors.append("it has no download URL (a derived subset): copy it from the course's shared datasets")
    lines = "\n".join(f"  - {p}" for p in places)
    raise DatasetNotFoundError(
        f"dataset {info.name!r} was not found. Searched:\n{lines}\n"
        + "".join(f"  - {e}\n" for e in errors)
        + f"Fix: point TLKIT_DATA at a folder that holds '{info.folder}/' "
          f"(e.g. TLKIT_DATA=../shared/datasets), pass its path directly, or go online "
          f"so it can be downloaded into {cache_dir()}.")


def content_digest(root: Path) -> str:
    """sha256 over the sorted `sha256  relpath` lines of every file below `root`."""
    lines = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in METADATA_FILES:
            continue
        lines.append(f"{_sha256(path)}  {rel}\n")
    return hashlib.sha256("".join(sorted(lines, key=lambda s: s.split("  ", 1)[1])).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_dataset(info: DatasetInfo, dest: Path, timeout: float = 30) -> Path:
    """Download, verify and unpack `info` into `dest/info.folder`; nothing is left behind on failure."""
    from tqdm.auto import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=f".{info.folder}-") as tmp:
        archive = Path(tmp) / "archive.zip"
        with urllib.request.urlopen(info.url, timeout=timeout) as resp, open(archive, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {info.name}") as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        if info.archive_sha256 and _sha256(archive) != info.archive_sha256:
            raise ChecksumError(f"{info.url}: archive sha256 differs from the published one")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(unpacked)
        root = unpacked / info.folder
        if not root.is_dir():
            raise DatasetLayoutError(f"{info.url} did not unpack to a '{info.folder}/' folder")
        if info.content_sha256 and content_digest(root) != info.content_sha256:
            raise ChecksumError(f"{info.url}: unpacked files differ from the expected content")
        final = dest / info.folder
        shutil.move(str(root), str(final))
    return final


# ---------------------------------------------------------------- folders and samples

@dataclass(frozen=True)
class ScanResult:
    """Valid (path, label) samples of a class-folder tree and what was skipped."""

    samples: tuple[tuple[str, int], ...]
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()


def check_image(path: Path) -> str | None:
    """Return why `path` is not a usable photo, or None if it decodes."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not a supported image type"
    try:
        with Image.open(path) as im:
            if im.format not in IMAGE_FORMATS:
                return f"{im.format} is not a photo format"
            im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 size; catches truncation cheaply
            im.load()
    except Exception as exc:  # PIL raises many types for broken files
        return f"corrupt ({type(exc).__name__}: {exc})"
    return None


@lru_cache(maxsize=32)
def scan_folder(root: str, classes: tuple[str, ...] | None = None) -> ScanResult:
    """List class sub-folders of `root` and their valid images, skipping broken files with a warning."""
    base = Path(root)
    found = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes or tuple(found)
    if not classes:
        raise DatasetLayoutError(
            f"{base} has no class sub-folders. Expected {base}/<class>/<image>.jpg "
            f"(or {base}/train/<class>/... and {base}/val/<class>/...).")
    samples, skipped = [], []
    for label, cls in enumerate(classes):
        folder = base / cls
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            problem = check_image(path)
            if problem:
                skipped.append((str(path), problem))
            else:
                samples.append((str(path), label))
    if skipped:
        names = ", ".join(f"{Path(p).name} ({why})" for p, why in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"{base}: skipped {len(skipped)} file(s) that are not usable images: {names}{more}",
                      stacklevel=2)
    if not samples:
        raise DatasetLayoutError(f"{base} has class folders {list(classes)} but no readable images in them.")
    return ScanResult(tuple(samples), tuple(classes), tuple(skipped))


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
            raise OSError(f"cannot read image {item}: {exc}") from exc

    def __getitem__(self, i: int):
        img = self.image(i)
        return (self.transform(img) if self.transform else img), self.targets[i]

    def _copy(self, idx: Sequence[int] | None = None, **changes) -> "ImageList":
        idx = range(len(self)) if idx is None else idx
        new = ImageList([self.items[i] for i in idx], [self.targets[i] for i in idx], self.classes,
                        self.transform, self.decode_size)
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
        """A short digest of which files/labels this list holds (used by feature caches)."""
        h = hashlib.sha256()
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


def stratified_split(targets: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded stratified (train, val) index lists, as scikit-learn's `train_test_split` makes them."""
    from sklearn.model_selection import train_test_split
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

    def __repr__(self) -> str:
        return (f"Splits({self.name or self.root}: {len(self.classes)} classes, "
                f"train {len(self.train)}, val {len(self.val)})")


def get_splits(name_or_path: str | os.PathLike = "hymenoptera", seed: int = 0, val_fraction: float = 0.2,
               download: bool = True) -> Splits:
    """Load a dataset's train/val images; a folder without `train/` and `val/` is split (seeded, stratified)."""
    if str(name_or_path) == "digits":
        return _digits_splits(seed, val_fraction)
    root = resolve(name_or_path, download=download)
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
    return Splits(train, val, classes, root, name, skipped)


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
        if name == "digits":
            found[name] = "embedded (scikit-learn)"
            continue
        place = next((p for p in search_places(info) if p.is_dir()), None)
        found[name] = str(place) if place else ("downloadable" if info.url else "not found")
    return found


# ---------------------------------------------------------------- transforms and loaders

def train_transform(size: int, norm=DEFAULT_NORM, augment: bool = True) -> T.Compose:
    """Random-resized crop + mirror (or a plain resize) then normalise: the standard training view."""
    geometric = ([T.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), T.RandomHorizontalFlip()]
                 if augment else [T.Resize(size, antialias=True), T.CenterCrop(size)])
    return T.Compose([T.ToImage(), *geometric, T.ToDtype(torch.float32, scale=True), T.Normalize(*norm)])


def eval_transform(size: int, norm=DEFAULT_NORM, crop_pct: float = 0.875) -> T.Compose:
    """Resize the shorter side to size/crop_pct, centre-crop `size`, normalise."""
    return T.Compose([T.ToImage(), T.Resize(int(round(size / crop_pct)), antialias=True), T.CenterCrop(size),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(*norm)])


def denormalize(x: torch.Tensor, norm=DEFAULT_NORM) -> torch.Tensor:
    """Undo `Normalize` so a tensor can be shown as an image (values clamped to [0, 1])."""
    mean = torch.tensor(norm[0], device=x.device).view(-1, 1, 1)
    std = torch.tensor(norm[1], device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)


@dataclass
class DataLoaders:
    """A training and a validation loader plus what they were built from."""

    train: DataLoader
    val: DataLoader
    classes: list[str]
    splits: Splits

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0,
                seed: int | None = None, **kwargs) -> DataLoader:
    """A DataLoader with sensible defaults (persistent workers, seeded shuffling when asked)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      persistent_workers=num_workers > 0, generator=generator, **kwargs)


def dataloaders(dataset: str | os.PathLike | Splits = "hymenoptera", image_size: int = 128, norm=DEFAULT_NORM,
                batch_size: int = 32, augment: bool = True, fraction: float = 1.0, seed: int = 0,
                num_workers: int = 0, train_tfm: Callable | None = None, val_tfm: Callable | None = None,
                val_fraction: float = 0.2) -> DataLoaders:
    """Training/validation loaders for a dataset name, folder or `Splits`, at one image size."""
    splits = dataset if isinstance(dataset, Splits) else get_splits(dataset, seed=seed, val_fraction=val_fraction)
    train = splits.train if fraction == 1 else splits.train.subset(float(fraction), seed)
    decode = int(image_size / 0.875) + 1
    train = train.with_transform(train_tfm or train_transform(image_size, norm, augment), decode)
    val = splits.val.with_transform(val_tfm or eval_transform(image_size, norm), decode)
    return DataLoaders(make_loader(train, batch_size, True, num_workers),
                       make_loader(val, batch_size * 2, False, num_workers),
                       splits.classes, splits)
