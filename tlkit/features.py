"""Precomputed activations: run a frozen backbone once, cache the features on disk, train heads on them.

Why: with the body frozen, every epoch of "frozen backbone + new head" recomputes exactly the same
features. Computing them once turns each later epoch into a few matrix multiplications. The cache
is keyed by everything the features depend on (backbone, its weights, the images, the transform,
the decode size, the input shape), so changing any of them computes fresh features instead of
reusing stale ones.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from . import data, models
from .progress import progress as progress_bar
from .storage import atomic_save

__all__ = ["FeatureSet", "attach_head", "cache_meta", "compute_features", "default_cache_dir",
           "feature_key", "feature_loaders", "head_learner", "input_shape", "key_parts", "load_features",
           "precompute", "save_features", "transform_is_random", "FORMAT_VERSION", "precompute_splits"]

FORMAT_VERSION = 1


class FeatureSet(TensorDataset):
    """Cached backbone outputs `x [N, D]` (or activations `[N, C, H, W]`, float32) with labels `y [N]`.

    `compute_seconds` is what computing them cost the first time (kept in the cache file), and
    `from_cache` says whether this object was read from disk instead of computed.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, key: str = "", classes: Sequence[str] = (),
                 compute_seconds: float = float("nan"), from_cache: bool = False, path: Path | None = None):
        if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
            raise ValueError(f"features must be [N, D] (or [N, C, H, W]) with labels [N]; got {tuple(x.shape)} and {tuple(y.shape)}")
        super().__init__(x.float(), y.long())
        self.key, self.classes = key, list(classes)
        self.compute_seconds, self.from_cache, self.path = compute_seconds, from_cache, path

    @property
    def x(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def y(self) -> torch.Tensor:
        return self.tensors[1]

    @property
    def feature_dim(self) -> int:
        return self.x.shape[1]

    @property
    def targets(self) -> list[int]:
        return self.y.tolist()

    def take(self, indices: Sequence[int]) -> "FeatureSet":
        """The rows at `indices` (in memory: no recomputation)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return FeatureSet(self.x[idx], self.y[idx], f"{self.key}[{len(idx)}]", self.classes, self.compute_seconds,
                          self.from_cache)

    def subset(self, fraction_or_count: float | int, seed: int = 0) -> "FeatureSet":
        """A seeded, stratified subset, chosen exactly as `ImageList.subset` chooses images."""
        return self.take(data.stratified_indices(self.targets, fraction_or_count, seed))

    def __repr__(self) -> str:
        origin = "cache" if self.from_cache else "computed"
        return f"FeatureSet({len(self)} x {self.feature_dim}, {len(self.classes)} classes, {origin}, key={self.key})"


# ---------------------------------------------------------------- cache keys

def default_cache_dir() -> Path:
    """Where features are cached unless told otherwise: `<tlkit cache>/features`."""
    return data.cache_dir() / "features"


def input_shape(images: data.ImageList) -> tuple[int, ...]:
    """Shape of one transformed image (C, H, W): the image size the backbone sees."""
    if len(images) == 0:
        raise ValueError("cannot compute features of an empty image list")
    x, _ = images[0]
    if not isinstance(x, torch.Tensor):
        raise TypeError("precompute needs images whose transform returns tensors: "
                        "use images.with_transform(tlkit.data.eval_transform(size, net.norm)).")
    return tuple(x.shape)


def key_parts(net: nn.Module, images: data.ImageList) -> dict:
    """Everything the features depend on, as a JSON-able dict (shown to learners, hashed into the key)."""
    return {"format": FORMAT_VERSION, "backbone": net.name, "weights": net.weights_id(),
            "data": images.fingerprint(), "transform": repr(images.transform),
            "decode_size": images.decode_size, "input_shape": list(input_shape(images))}


def feature_key(net: nn.Module, images: data.ImageList) -> str:
    """`<backbone>-<digest>`: a different backbone, weights, data, transform or size gives a different key."""
    parts = key_parts(net, images)
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    return f"{net.name}-{digest}"


# ---------------------------------------------------------------- computing

def transform_is_random(images: data.ImageList, index: int = 0) -> bool:
    """True if transforming the same image twice gives different tensors (augmentation).

    The global RNG is left as it was, so checking does not change a seeded run.
    """
    with torch.random.fork_rng(devices=[]):
        first, _ = images[index]
        second, _ = images[index]
    return not torch.equal(first, second)


@torch.no_grad()
def compute_features(net: nn.Module, images: data.ImageList, batch_size: int = 64,
                     device: torch.device | str | None = None, progress: bool | None = None,
                     num_workers: int = 0, channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `net.body` in eval mode over `images` once; returns (features [N, D] on CPU, labels [N]).

    Every module's train/eval flag is restored afterwards, so a half-frozen net keeps its modes, and so is
    its memory layout: what the body computes next is then the same whether the features were computed here or
    read back from the cache (the layouts differ in rounding).
    `channels_last` runs the body in NHWC layout (the same features up to rounding; EfficientNet-Lite0
    at 112 px: about 1.5x faster on a 2-core CPU).
    """
    from .train import progress_enabled
    body = net.body
    home = next(body.parameters()).device
    home_layout = torch.channels_last if any(p.dim() == 4 and not p.is_contiguous()
                                             and p.is_contiguous(memory_format=torch.channels_last)
                                             for p in body.parameters()) else torch.contiguous_format
    device = torch.device(device) if device is not None else home
    loader = data.make_loader(images, batch_size, shuffle=False, num_workers=num_workers)
    show = progress_enabled() if progress is None else progress
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # fork_rng: iterating a loader draws from the global RNG, and reading the cache instead must leave the
    # same random state behind (the fits that follow, and their fit-cache keys, depend on it)
    with models.eval_mode(body), torch.random.fork_rng(devices=[]):
        try:
            body.to(device, memory_format=layout)
            chunks = [body(x.to(device, memory_format=layout)).float().cpu()
                      for x, _ in progress_bar(loader, desc="precompute", disable=not show, leave=False)]
        finally:
            body.to(home, memory_format=home_layout)
    return torch.cat(chunks), torch.tensor(images.targets, dtype=torch.long)


def precompute(net: nn.Module, images: data.ImageList, cache_dir: str | os.PathLike | None = None,
               batch_size: int = 64, device: torch.device | str | None = None, progress: bool | None = None,
               num_workers: int = 0, refresh: bool = False, channels_last: bool = True) -> FeatureSet:
    """Features of `images` under the frozen `net.body`, read from the disk cache or computed once and saved.

    `images` must already carry the (deterministic) eval transform. A random transform triggers a
    warning: the cache would freeze one random view of each image, so augmentation would do nothing.
    """
    key = feature_key(net, images)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{key}.pt"
    if path.exists() and not refresh:
        cached = load_features(path)   # served only if it is this entry, whole: else it is rebuilt
        if cached is not None and cached.key == key and len(cached.y) == len(images) == len(cached.x) \
                and cached.y.tolist() == list(images.targets):
            return cached
    if transform_is_random(images):
        warnings.warn("precompute: the transform is random (augmentation). The cache keeps ONE random view of "
                      "each image and every epoch sees that same view, so augmentation has no effect here; "
                      "use an eval transform, or train with the backbone in the loop.", stacklevel=2)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # so a cached and an uncached run leave the same RNG behind
        x, y = compute_features(net, images, batch_size, device, progress, num_workers, channels_last)
    fs = FeatureSet(x, y, key, images.classes, time.perf_counter() - start, from_cache=False, path=path)
    save_features(fs, path, key_parts(net, images))
    return fs


# ---------------------------------------------------------------- disk

def save_features(fs: FeatureSet, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write `fs` atomically: a temporary file in the same folder, then a rename.

    Why: a run interrupted mid-write (or two runs writing at once) must never leave a truncated
    file that a later run would load as valid features.
    """
    state = {"format": FORMAT_VERSION, "key": fs.key, "x": fs.x, "y": fs.y, "classes": fs.classes,
             "compute_seconds": float(fs.compute_seconds), "meta": json.dumps(meta or {})}
    return atomic_save(state, path)


def load_features(path: str | os.PathLike) -> FeatureSet | None:
    """Read a cached FeatureSet; None (with a warning) if the file is unreadable or of another format."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT_VERSION:
            return None
        return FeatureSet(state["x"], state["y"], state["key"], state["classes"], state["compute_seconds"],
                          from_cache=True, path=path)
    except Exception as exc:  # a damaged file is recomputed, not trusted
        warnings.warn(f"ignoring unreadable feature cache {path} ({type(exc).__name__}: {exc}); recomputing",
                      stacklevel=2)
        return None


def cache_meta(fs: FeatureSet) -> dict:
    """What a cached FeatureSet was computed from (backbone, weights id, data, transform, size)."""
    if fs.path is None or not Path(fs.path).exists():
        return {}
    return json.loads(torch.load(fs.path, map_location="cpu", weights_only=True)["meta"])


# ---------------------------------------------------------------- training heads on features

def feature_loaders(train_fs: FeatureSet, val_fs: FeatureSet, batch_size: int = 32,
                    seed: int | None = None, drop_last: bool = False) -> data.DataLoaders:
    """Shuffled training and ordered validation loaders over features (seeded shuffling with `seed`)."""
    if train_fs.feature_dim != val_fs.feature_dim:
        raise ValueError(f"train features have {train_fs.feature_dim} dims, validation {val_fs.feature_dim}: "
                         "they come from different backbones")
    return data.DataLoaders(data.make_loader(train_fs, batch_size, shuffle=True, seed=seed, drop_last=drop_last),
                          data.make_loader(val_fs, batch_size * 2, shuffle=False),
                          train_fs.classes or val_fs.classes)


def head_learner(net: nn.Module, train_fs: FeatureSet, val_fs: FeatureSet, batch_size: int = 32,
                 seed: int | None = None, drop_last: bool = False, train_loader=None, **learner_kwargs):
    """A `tlkit.Learner` that trains a head alone on features: `net.head` of a `Net`, or `net` itself.

    The head is the Net's own module, so training it updates the Net in place: afterwards
    `net(images)` uses the trained head with no copying. `train_loader` replaces the seeded, shuffled
    training batches (e.g. a `Task`'s, batched exactly like its images).
    """
    from .train import Learner
    head = getattr(net, "head", net)
    learner_kwargs.setdefault("device", next(head.parameters()).device)
    loaders = feature_loaders(train_fs, val_fs, batch_size, seed, drop_last)
    if train_loader is not None:
        loaders = dataclasses.replace(loaders, train=train_loader)
    return Learner(head, loaders, **learner_kwargs)


def precompute_splits(net: nn.Module, splits: data.Splits, image_size: int, fraction: float = 1.0, seed: int = 0,
                      **precompute_kwargs) -> tuple[FeatureSet, FeatureSet]:
    """Training and validation features of `net`'s frozen body, both under the deterministic eval view.

    The step every head-on-features lesson starts with; `fraction` keeps a seeded, stratified share of the
    training images, as `data.dataloaders` does. The images go through `data.in_memory`, the decode a `Task`
    uses, so lessons at the same size share one decoded-image entry and one feature entry.
    """
    train = splits.train if fraction == 1 else splits.train.subset(float(fraction), seed)
    view, short_side = data.eval_transform(image_size, net.norm), data.eval_resize(image_size)
    return (precompute(net, data.in_memory(train, short_side).with_transform(view), **precompute_kwargs),
            precompute(net, data.in_memory(splits.val, short_side).with_transform(view), **precompute_kwargs))


def attach_head(net: nn.Module, head: nn.Module) -> nn.Module:
    """Put a head trained elsewhere (e.g. a copy trained on features) into `net`, on the body's device."""
    device = next(net.body.parameters()).device
    net.head = head.to(device)
    return net
