"""The data pipeline: a contiguous (memmap) image store, resized copies of a folder, throughput and copy meters."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from .data import DEFAULT_NORM, ImageList

__all__ = ["MemmapImageStore", "folder_bytes", "h2d_bandwidth", "measure_throughput", "store_transform",
           "to_float", "write_resized_folder"]


def store_transform(size: int) -> T.Compose:
    """The deterministic view every store holds: shorter side to `size`, centre crop, uint8 [3, size, size].

    Why uint8: 4x fewer bytes to read and to copy to the GPU than float32; convert and
    normalise on the device instead.
    """
    return T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.CenterCrop(size)])


def to_float(norm=DEFAULT_NORM) -> T.Compose:
    """uint8 image tensors -> normalised float32, the step that follows reading a store."""
    return T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(*norm)])


class MemmapImageStore(Dataset):
    """All images of a dataset in one contiguous uint8 file [N, 3, H, W], read through numpy's memmap.

    Why: one big file read sequentially beats opening, seeking and decoding thousands of
    small JPEGs every epoch; the decode and resize are paid once, in `write`.
    """

    def __init__(self, path: str | Path, transform=None):
        self.path = Path(path)
        meta = json.loads((self.path / "meta.json").read_text())
        self.classes, self.size = meta["classes"], meta["size"]
        self.targets = np.load(self.path / "targets.npy").tolist()
        self.transform = transform
        self._images = None  # opened lazily, so DataLoader workers each map the file themselves

    @classmethod
    def write(cls, dataset: ImageList, path: str | Path, size: int, transform=None) -> "MemmapImageStore":
        """Decode, resize and crop every image of `dataset` once and write them into `path/`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        source = dataset.with_transform(store_transform(size))
        images = np.lib.format.open_memmap(path / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(source), 3, size, size))
        for i in range(len(source)):
            images[i] = source[i][0].numpy()
        images.flush()
        del images
        np.save(path / "targets.npy", np.asarray(source.targets, dtype=np.int64))
        (path / "meta.json").write_text(json.dumps({"classes": list(source.classes), "size": size}))
        return cls(path, transform)

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.path / "images.npy", mmap_mode="r")
        return self._images

    def __getstate__(self):
        return {**self.__dict__, "_images": None}  # never pickle the mapped array into workers

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.array(self.images[i]))  # copy out of the read-only map
        return (self.transform(img) if self.transform else img), self.targets[i]

    def with_transform(self, transform) -> "MemmapImageStore":
        """The same store with another transform (e.g. `to_float()` or tensor augmentations)."""
        new = copy.copy(self)
        new.transform = transform
        return new

    def nbytes(self) -> int:
        return (self.path / "images.npy").stat().st_size


def write_resized_folder(dataset: ImageList, root: str | Path, size: int, quality: int = 90) -> ImageList:
    """Save a `size` x `size` JPEG copy of every image under `root/<class>/`; returns them as an ImageList."""
    root = Path(root)
    tf = T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size)])
    paths = []
    for i in range(len(dataset)):
        folder = root / dataset.classes[dataset.targets[i]]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.jpg"
        tf(dataset.image(i)).save(path, quality=quality)
        paths.append(str(path))
    return ImageList(paths, dataset.targets, dataset.classes, transform=T.ToImage())


def folder_bytes(dataset: ImageList) -> int:
    """Total size on disk of the files an ImageList reads."""
    return sum(Path(p).stat().st_size for p in dataset.items)


def measure_throughput(dataset: Dataset, batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False,
                       device: str | torch.device = "cpu", non_blocking: bool = False, epochs: int = 1,
                       max_batches: int | None = None) -> dict:
    """Images per second a DataLoader delivers onto `device` (worker start-up included, as in training)."""
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        pin_memory=pin_memory and device.type == "cuda",
                        generator=torch.Generator().manual_seed(0))
    images, start = 0, time.perf_counter()
    for _ in range(epochs):
        for b, (x, _) in enumerate(loader):
            x = x.to(device, non_blocking=non_blocking)
            images += x.shape[0]
            if max_batches and b + 1 >= max_batches:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds}


def h2d_bandwidth(mb: int = 256, repeats: int = 5) -> dict | None:
    """Host-to-GPU copy bandwidth in GB/s from pageable and from pinned memory (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    out = {}
    for name, pinned in [("pageable", False), ("pinned", True)]:
        host = torch.empty(mb * 2**20, dtype=torch.uint8, pin_memory=pinned)
        dev = torch.empty_like(host, device="cuda")
        dev.copy_(host, non_blocking=pinned)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            dev.copy_(host, non_blocking=pinned)
        torch.cuda.synchronize()
        out[name] = repeats * host.numel() / (time.perf_counter() - start) / 1e9
    out["pinned_speedup"] = out["pinned"] / out["pageable"]
    return out


# ---------------------------------------------------------------- bottleneck report

# ---------------------------------------------------------------- the cost of each step, and verdicts


