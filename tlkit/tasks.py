"""A `Task`: one dataset at one image size, decoded once into memory, with the settings its runs share.

Lessons 01 and 05 compare training strategies on the same pixels and the same seeded, stratified subsets.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import data, features, models
from .train import Learner

__all__ = ["Task", "make_task"]


@dataclass
class Task:
    """One dataset at one image size with the settings every strategy shares."""

    name: str
    train: data.ImageList   # untransformed, in memory
    val: data.ImageList
    image_size: int
    backbone: str = "efficientnet_lite0"
    batch_size: int = 32
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_dir: Path | None = None
    norm: tuple = data.DEFAULT_NORM
    channels_last: bool = True  # faster convolutions on CPUs and GPUs; the numbers stay the same
    micro_batch: int | None = None  # images per forward/backward piece of a batch (`Learner`'s micro_batch)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def transform(self, augment: bool = False):
        """The training-time view (random crop + flip with `augment`) or the deterministic eval view."""
        if augment:
            return data.train_transform(self.image_size, self.norm, augment=True)
        return data.eval_transform(self.image_size, self.norm)

    def train_images(self, fraction: float = 1.0, augment: bool = False) -> data.ImageList:
        """A seeded, stratified fraction of the training images with its transform."""
        images = self.train if fraction == 1 else self.train.subset(float(fraction), self.seed)
        return images.with_transform(self.transform(augment))

    def val_images(self) -> data.ImageList:
        return self.val.with_transform(self.transform(False))

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch at every training fraction: what the whole training set takes."""
        return max(1, len(self.train) // self.batch_size)

    def batch_for(self, fraction: float) -> int:
        """The batch shrinks with the training fraction (never below 2 images: BatchNorm needs two)."""
        return self.batch_size if fraction == 1 else max(2, round(self.batch_size * fraction))

    def train_loader(self, images, fraction: float = 1.0) -> torch.utils.data.DataLoader:
        """Seeded batches of `batch_for(fraction)`, exactly `steps_per_epoch` of them at every fraction.

        Why: with a fixed batch, 10 % of the data would also mean 10 % of the optimizer steps, and a
        small training set would be confused with a short training run. A smaller batch keeps the cost
        low; where rounding leaves too few images for the steps, the sampler starts a new shuffled pass.
        """
        batch = self.batch_for(fraction)
        generator = torch.Generator().manual_seed(self.seed)
        sampler = torch.utils.data.RandomSampler(images, num_samples=self.steps_per_epoch * batch, generator=generator)
        return data.make_loader(images, batch, shuffle=False, sampler=sampler, drop_last=True)

    def loaders(self, fraction: float = 1.0, augment: bool = False) -> data.DataLoaders:
        """Image loaders; the training order is seeded, so two strategies see the same batches."""
        return data.DataLoaders(self.train_loader(self.train_images(fraction, augment), fraction),
                                       data.make_loader(self.val_images(), self.batch_size, shuffle=False),
                                       self.classes)

    def learner(self, net: torch.nn.Module, dls, **kwargs) -> Learner:
        """A `Learner` with the device, memory layout and micro-batches every run of this task shares."""
        return Learner(net, dls, device=self.device, channels_last=self.channels_last, micro_batch=self.micro_batch,
                       **kwargs)

    def net(self, pretrained: bool = True, hidden: int | None = None) -> models.Net:
        """A fresh network; seeding first gives every strategy the same new head."""
        torch.manual_seed(self.seed)
        net = models.create(self.backbone, len(self.classes), pretrained=pretrained, hidden=hidden)
        return net.to(self.device)

    def features(self, net: models.Net, progress: bool | None = None) -> tuple[features.FeatureSet, features.FeatureSet]:
        """Training and validation features of `net`'s frozen body (from the disk cache when present)."""
        pre = dict(cache_dir=self.cache_dir, batch_size=self.batch_size, progress=progress,
                   channels_last=self.channels_last)
        return (features.precompute(net, self.train_images(), **pre),
                features.precompute(net, self.val_images(), **pre))

    def activations(self, net: models.Net, group: int,
                    progress: bool | None = None) -> tuple[features.FeatureSet, features.FeatureSet]:
        """Training and validation outputs of `net`'s layer groups before `group` (from the disk cache when present)."""
        prefix, _ = models.split_body(net, group)
        front = models.Net(prefix, torch.nn.Identity(), [prefix, torch.nn.Identity()], 0, net.norm,
                           f"{net.name}-to-group{group}", net.pretrained)
        return self.features(front, progress)

    def with_seed(self, seed: int) -> "Task":
        """The same data with another seed: its own subsets, initial heads and batch order."""
        return dataclasses.replace(self, seed=seed)


def make_task(dataset: str = "hymenoptera", image_size: int = 96, backbone: str = "efficientnet_lite0",
              batch_size: int = 32, seed: int = 0, device: torch.device | str = "cpu",
              cache_dir: str | Path | None = None, val_fraction: float = 0.2, max_train: int | None = None,
              max_val: int | None = None, fraction: float = 1.0, micro_batch: int | None = None) -> Task:
    """Load a dataset's splits and decode them once at the size `image_size` needs.

    `max_train` / `max_val` keep at most that many images (seeded, stratified), chosen before decoding:
    memory follows the limits, not the folder. `fraction` then keeps a seeded, stratified fraction of the
    training images kept. `micro_batch` runs each batch through the network in pieces of at most that many
    images (`Learner`): less activation memory, the same optimizer steps.
    """
    splits = data.get_splits(dataset, seed=seed, val_fraction=val_fraction, image_size=image_size,
                             max_train=max_train, max_val=max_val)
    short_side = data.eval_resize(image_size)  # what eval_transform resizes to before its centre crop
    norm = models.NORMS[models.check_backbone(backbone)]   # what `Net.norm` of this backbone will be
    task = Task(str(dataset), data.in_memory(splits.train, short_side), data.in_memory(splits.val, short_side),
                image_size, backbone, batch_size, seed, torch.device(device), Path(cache_dir) if cache_dir else None,
                norm, micro_batch=micro_batch)
    if fraction < 1:
        task = dataclasses.replace(task, train=task.train.subset(float(fraction), seed))
    return task
