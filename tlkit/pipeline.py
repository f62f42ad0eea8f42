"""Data-pipeline measurements: throughput meters, a contiguous (memmap) image store, a bottleneck report."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from .data import ImageList
from .env import threads


def store_transform(size: int) -> T.Compose:
    """The deterministic view every store holds: shorter side to `size`, centre crop, uint8 [3, size, size].

    Why uint8: 4x fewer bytes to read and to copy to the GPU than float32; convert and
    normalise on the device instead.
    """
    return T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.CenterCrop(size)])


def to_float(norm=((0.5,) * 3, (0.5,) * 3)) -> T.Compose:
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


def throughput_table(sources: dict[str, Dataset], workers=(0, 1, 2), **kwargs) -> pd.DataFrame:
    """`measure_throughput` for every source x num_workers; one row each."""
    rows = []
    for name, ds in sources.items():
        for w in workers:
            r = measure_throughput(ds, num_workers=w, **kwargs)
            rows.append({"source": name, "num_workers": w, **r})
    return pd.DataFrame(rows)


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

class TimedLoader:
    """Wraps a DataLoader and records how long each `next(batch)` blocked the training loop."""

    def __init__(self, loader):
        self.loader = loader
        self.waits: list[float] = []
        self.last_batch_at = time.perf_counter()

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        if name == "loader":  # not set yet (e.g. while unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.last_batch_at = time.perf_counter()
            self.waits.append(self.last_batch_at - start)
            yield batch


def bottleneck_report(learn, epochs: int = 1, lr=1e-3, **fit_kwargs) -> pd.DataFrame:
    """Train `learn` and time, per step, the data wait (loader) and the compute (copy, forward, backward, step).

    Returns one row per step: `data_s`, `compute_s`; see `bottleneck_summary` for the verdict.
    """
    timed = TimedLoader(learn.dls.train)
    computes: list[float] = []

    def on_batch(event, lrn):
        if event == "after_batch":
            if lrn.device.type == "cuda":
                torch.cuda.synchronize()
            computes.append(time.perf_counter() - timed.last_batch_at)

    original = learn.dls
    learn.dls = copy.copy(original)
    learn.dls.train = timed
    try:
        learn.fit(epochs, lr, callbacks=[on_batch, *fit_kwargs.pop("callbacks", [])], **fit_kwargs)
    finally:
        learn.dls = original
    return pd.DataFrame({"step": range(1, len(computes) + 1), "data_s": timed.waits[:len(computes)],
                         "compute_s": computes})


def bottleneck_summary(steps: pd.DataFrame) -> dict:
    """Which side limits training: 'data' if the loop waited on the loader more than it computed."""
    data, compute = float(steps.data_s.sum()), float(steps.compute_s.sum())
    return {"limited_by": "data" if data > compute else "compute",
            "data_fraction": data / (data + compute),
            "data_s_per_step": data / len(steps), "compute_s_per_step": compute / len(steps)}


def plot_bottleneck(reports: dict[str, pd.DataFrame], ax=None):
    """Stacked bars of mean data-wait and compute seconds per step, one bar per configuration."""
    import matplotlib.pyplot as plt
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    names = list(reports)
    data = [reports[n].data_s.mean() for n in names]
    compute = [reports[n].compute_s.mean() for n in names]
    ax.barh(names, data, label="waiting for data", color="tab:orange")
    ax.barh(names, compute, left=data, label="compute (forward, backward, step)", color="tab:blue")
    ax.set_xlabel("seconds per training step")
    ax.legend(loc="upper right", fontsize=8)
    return ax


# ---------------------------------------------------------------- the cost of each step, and verdicts

STAGES = ("decode", "resize", "collate", "copy")


def stage_timings(dataset: ImageList, store: MemmapImageStore, size: int, batch_size: int = 8, n_batches: int = 8,
                  device: str | torch.device = "cpu", seed: int = 0) -> pd.DataFrame:
    """Seconds per batch of each step of loading from JPEGs, and of reading the same images from the store.

    One row per batch: `decode` (open and decode the JPEGs), `resize` (resize + centre crop to uint8
    tensors), `collate` (stack into one batch tensor), `copy` (on a GPU: into pinned memory and to the
    device, synchronised; on a CPU, which has no device to copy to: the batch copied into a fresh
    host buffer, the memcpy a pinned transfer starts with), and `memmap` (read the same images from
    the contiguous store and stack them). Batches draw random images; the two sources alternate.
    Timed on one thread, as a DataLoader worker runs.
    """
    from torch.utils.data import default_collate
    device = torch.device(device)
    resize = T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.CenterCrop(size)])
    rng = np.random.default_rng(seed)
    with threads(1):  # as in a DataLoader worker; a shared machine's thread wake-ups would swamp the copy
        rows = [_time_one_batch(dataset, store, resize, default_collate, device,
                                rng.choice(len(dataset), batch_size, replace=False).tolist())
                for _ in range(n_batches)]
    return pd.DataFrame(rows)


def _time_one_batch(dataset, store, resize, collate, device, idx) -> dict:
    t0 = time.perf_counter()
    images = [dataset.image(i) for i in idx]
    t1 = time.perf_counter()
    tensors = [resize(img) for img in images]
    t2 = time.perf_counter()
    batch = collate(tensors)
    t3 = time.perf_counter()
    if device.type == "cuda":
        batch.pin_memory().to(device, non_blocking=True)
        torch.cuda.synchronize()
    else:
        torch.empty_like(batch).copy_(batch)
    t4 = time.perf_counter()
    collate([store[i][0] for i in idx])
    t5 = time.perf_counter()
    return {"decode": t1 - t0, "resize": t2 - t1, "collate": t3 - t2, "copy": t4 - t3, "memmap": t5 - t4}


def stage_ranking(stages: pd.DataFrame) -> pd.DataFrame:
    """The loading steps ranked by their mean cost in this run, with a t interval over batches."""
    from .claims import mean_interval
    rows = []
    for s in STAGES:
        mean, low, high = mean_interval(stages[s].to_numpy())
        rows.append({"step": s, "ms per batch": 1e3 * mean, "low": 1e3 * low, "high": 1e3 * high})
    table = pd.DataFrame(rows).sort_values("ms per batch", ascending=False).reset_index(drop=True)
    table.index = pd.RangeIndex(1, len(table) + 1, name="rank")
    table["share of the JPEG path"] = table["ms per batch"] / table["ms per batch"].sum()
    return table


def stage_prose(ranking: pd.DataFrame, device: str | torch.device = "cpu") -> str:
    """Markdown stating the run's ranking of the loading steps (generated, so it follows the run)."""
    steps = ranking["step"].tolist()
    top, copy_rank = steps[0], steps.index("copy") + 1
    share = ranking.set_index("step")["share of the JPEG path"]
    where = "to the GPU" if torch.device(device).type == "cuda" else "into a host buffer (no GPU here)"
    text = (f"In this run the steps rank {' > '.join(steps)}: **{top}** costs the most "
            f"({share[top]:.0%} of the JPEG path), and the copy {where} ranks **{copy_rank} of {len(steps)}** "
            f"({share['copy']:.1%}).")
    if top == "copy":
        text += " Here copying the batch is the most expensive step, as the notes say."
    else:
        text += (f" Removing the {top} step (pre-processing once into a contiguous file) buys more than "
                 "making the copy faster would.")
    return text


def bottleneck_prose(summary: dict) -> str:
    """Markdown that reads the bottleneck report of this run (which side limited each configuration)."""
    lines = [f"- **{name}**: limited by **{r['limited_by']}** ({r['data_fraction']:.0%} of the time waiting for "
             f"data; {1e3 * r['data_s_per_step']:.0f} ms data wait vs {1e3 * r['compute_s_per_step']:.0f} ms "
             "compute per step)" for name, r in summary.items()]
    jpeg, store = summary.get("JPEG, head only"), summary.get("memmap, head only")
    if jpeg and store:
        if jpeg["limited_by"] == "data":
            lines.append("\nWith the small head-only compute, decoding JPEGs **was** the limit in this run; "
                         f"the memmap store waited {1e3 * store['data_s_per_step']:.0f} ms per step instead of "
                         f"{1e3 * jpeg['data_s_per_step']:.0f} ms, and was limited by {store['limited_by']}.")
        else:
            lines.append("\nIn this run even the head-only fine-tune from JPEGs was limited by **compute**: "
                         "speeding up the data pipeline would not have made it faster here "
                         f"(data wait {1e3 * jpeg['data_s_per_step']:.0f} ms vs "
                         f"{1e3 * store['data_s_per_step']:.0f} ms from the store, per step).")
    return "\n".join(lines)


def verdict_copy_and_store(stages: pd.DataFrame):
    """Claim 27, both parts: the copy over the costliest other step, and JPEG loading over the memmap store."""
    from . import claims
    others = [s for s in STAGES if s != "copy"]
    top = max(others, key=lambda s: stages[s].mean())
    copy = claims.compare_speed(27, stages["copy"], stages[top],
                                f"cost of the copy over the costliest other step ({top}), per batch "
                                "(positive: the copy is the most expensive step)", unit="x (ratio)")
    jpeg = stages[others].sum(axis=1)
    store = claims.compare_speed(27, jpeg, stages["memmap"],
                                 "time to decode, resize and collate JPEGs over reading the same images from the "
                                 "contiguous memmap store, per batch", unit="x (ratio)")
    return claims.weakest_part(27, {"copy is the most expensive step": copy, "contiguous file": store})
