"""Test-time augmentation (TTA): predict on several views of each image and merge the predictions.

Views come from deterministic crops of a larger resize (centre, mirror, five-crop, ten-crop: torchvision's
`five_crop` / `ten_crop`) or from n random passes of the training augmentation, blended with the plain
prediction as fastai's `tta(beta=...)` does. Merging averages *probabilities* by default; logit averaging
and the geometric mean are there to compare.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils import benchmark
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from .data import CROP_FRACTION, DEFAULT_NORM, denormalize, eval_resize, make_loader
from .errors import ParameterError
from .models import eval_mode
from .validate import check_choice, check_fraction, check_positive_int, check_unit_interval

__all__ = ["VIEW_COUNTS", "TEN_CROP_NAMES", "TEN_CROP_SUBSETS", "MERGES", "crop_views", "CropViews",
           "AugViews", "view_transform", "aug_transform", "views_of", "view_panels", "predict_views",
           "merge", "blend", "tta_logits", "seconds_per_image", "timings", "cost_ratio", "model_device"]

VIEW_COUNTS = {"center": 1, "flip": 2, "five": 5, "ten": 10}
# torchvision's fixed ten-crop order: four corners and the centre, then the same five crops of the mirrored
# image (so "mirrored top-left" shows the original top-right corner, flipped).
TEN_CROP_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right", "centre",
                  "mirrored top-left", "mirrored top-right", "mirrored bottom-left", "mirrored bottom-right",
                  "mirrored centre")
# Every cheaper crop TTA is a subset of the ten-crop views, so one ten-crop pass prices all of them.
# ("flip" = views 4 and 9: torchvision mirrors the image before cropping, so view 9 is the exact mirror of
# the centre crop when the margin (resized side - size) is even and one pixel off when it is odd.)
TEN_CROP_SUBSETS = {"center": [4], "flip": [4, 9], "five": [0, 1, 2, 3, 4], "ten": list(range(10))}
MERGES = ("prob", "logit", "geo")


# ---------------------------------------------------------------- views

def crop_views(img: torch.Tensor, size: int, mode: str = "ten") -> torch.Tensor:
    """Stack the crop views of an image `[..., C, H, W]` into `[V, ..., C, size, size]`.

    Order: "center" -> [centre]; "flip" -> [centre, its exact mirror]; "five"/"ten" -> torchvision's
    order (`TEN_CROP_NAMES`), whose mirrored views are crops *of the mirrored image*.
    """
    check_positive_int("size", size, 224)
    check_choice("mode", mode, VIEW_COUNTS)
    if mode == "center":
        views = [TF.center_crop(img, [size, size])]
    elif mode == "flip":
        centre = TF.center_crop(img, [size, size])
        views = [centre, TF.horizontal_flip(centre)]
    elif mode == "five":
        views = list(TF.five_crop(img, [size, size]))
    else:
        views = list(TF.ten_crop(img, [size, size]))
    return torch.stack([v.as_subclass(torch.Tensor) for v in views])


class CropViews:
    """Transform: a resized, normalised image tensor -> its stacked crop views (picklable for workers)."""

    def __init__(self, size: int, mode: str = "ten"):
        self.size = check_positive_int("size", size, 224)
        self.mode = check_choice("mode", mode, VIEW_COUNTS)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return crop_views(img, self.size, self.mode)

    def __repr__(self) -> str:
        return f"CropViews(size={self.size}, mode={self.mode!r})"


def view_transform(size: int, norm=DEFAULT_NORM, mode: str = "ten", resize: int | None = None,
                   crop_pct: float = CROP_FRACTION) -> T.Compose:
    """PIL image -> `[V, C, size, size]`: resize the shorter side to `resize`, normalise, cut the views.

    With the default `resize = size / crop_pct`, the centre view is exactly `data.eval_transform`'s image,
    so TTA is compared with the plain prediction on the same pixels.
    Why normalise before cropping: it is pointwise, so the result is identical and done once, not V times.
    """
    check_positive_int("size", size, 224)
    check_fraction("crop_pct", crop_pct, CROP_FRACTION)
    resize = check_positive_int("resize", resize, 256) if resize is not None else eval_resize(size, crop_pct)
    if resize < size:
        raise ParameterError(f"resize={resize} must be at least the crop size {size}, "
                             f"e.g. resize={eval_resize(size)}.")
    return T.Compose([T.ToImage(), T.Resize(resize, antialias=True), T.ToDtype(torch.float32, scale=True),
                      T.Normalize(*norm), CropViews(size, mode)])


class AugViews:
    """Transform: PIL image -> `[1 + n, C, H, W]`, the plain view first, then n random augmented passes."""

    def __init__(self, plain: Callable, augment: Callable, n: int = 4):
        self.plain, self.augment, self.n = plain, augment, check_positive_int("n", n, 4)

    def __call__(self, img) -> torch.Tensor:
        return torch.stack([self.plain(img)] + [self.augment(img) for _ in range(self.n)])

    def __repr__(self) -> str:
        return f"AugViews(n={self.n}, augment={self.augment!r})"


def aug_transform(size: int, norm=DEFAULT_NORM, n: int = 4, augment: Callable | None = None,
                  crop_pct: float = CROP_FRACTION) -> AugViews:
    """The plain eval view plus `n` passes of the training augmentation (default: `data.train_transform`)."""
    from .data import eval_transform, train_transform
    check_positive_int("n", n, 4)
    return AugViews(eval_transform(size, norm, crop_pct), augment or train_transform(size, norm), n)


def views_of(images, i: int, transform: Callable, norm=DEFAULT_NORM) -> list[torch.Tensor]:
    """The views of image `i` of an `ImageList` as the model sees them, de-normalised for display."""
    return [denormalize(v, norm) for v in transform(images.image(i))]


def view_panels(images, indices: Sequence[int], transform: Callable, logits: torch.Tensor,
                names: Sequence[str] = TEN_CROP_NAMES, norm=DEFAULT_NORM) -> dict:
    """Keyword arguments for `plots.show_images`: every view of each image, titled with the view's name
    and its probability of the true class, green when that view alone is right, red when wrong."""
    pictures, titles, colors = [], [], []
    for i in indices:
        target = images.targets[i]
        probs = logits[i].softmax(-1)
        for v, (picture, p) in enumerate(zip(views_of(images, i, transform, norm), probs)):
            pictures.append(picture)
            titles.append(f"{names[v]}\np(true)={p[target]:.2f}")
            colors.append("green" if p.argmax().item() == target else "red")
    return {"images": pictures, "titles": titles, "title_colors": colors}


# ---------------------------------------------------------------- predicting and merging

def model_device(model: nn.Module) -> torch.device:
    """The device a model's parameters (or buffers) live on; CPU for a model with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict_views(model: nn.Module, loader, device: torch.device | str | None = None,
                  max_batch: int = 32, progress: bool = False,
                  channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `[N, V, K]` and targets `[N]` (on the CPU) for a loader of view stacks `[B, V, C, H, W]`.

    A loader of plain batches `[B, C, H, W]` gives V = 1. The B * V views of a batch go through the
    model in chunks of at most `max_batch` images (ten views multiply the activation memory by ten),
    in NHWC layout with `channels_last` (the model is converted too: the same logits up to rounding, faster).
    """
    from .progress import progress as progress_bar
    check_positive_int("max_batch", max_batch, 32)
    device = torch.device(device) if device is not None else model_device(model)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if not any(is_lazy(p) for p in model.parameters()):   # a lazy module gets its layout from its first input
        model.to(memory_format=layout)
    outs, ys = [], []
    with eval_mode(model):
        for x, y in progress_bar(loader, desc="views", disable=not progress, leave=False):
            if x.dim() == 4:
                x = x.unsqueeze(1)
            b, v = x.shape[:2]
            logits = torch.cat([model(chunk.to(device).contiguous(memory_format=layout)).float().cpu()
                                for chunk in x.flatten(0, 1).split(max_batch)])
            outs.append(logits.view(b, v, -1))
            ys.append(torch.as_tensor(y))
    return torch.cat(outs), torch.cat(ys)


def merge(logits: torch.Tensor, how: str = "prob", dim: int = 1) -> torch.Tensor:
    """Merge the predictions along `dim` of a logits tensor (e.g. `[N, V, K]`) into probabilities `[N, K]`.

    - "prob":  mean of the softmax probabilities (the default: each view's vote is bounded by 1/V);
    - "logit": softmax of the mean logits;
    - "geo":   geometric mean of the probabilities, renormalised to sum to 1. It equals "logit"
      (softmax's normaliser is a per-view constant), so one confident view can veto the others.
    """
    check_choice("how", how, MERGES)
    if how == "prob":
        return logits.softmax(-1).mean(dim)
    if how == "logit":
        return logits.mean(dim).softmax(-1)
    geo = logits.log_softmax(-1).mean(dim).exp()
    return geo / geo.sum(-1, keepdim=True)


def blend(plain_probs: torch.Tensor, aug_probs: torch.Tensor, beta: float = 0.25) -> torch.Tensor:
    """fastai's TTA blend: `(1 - beta) * mean augmented prediction + beta * plain prediction`."""
    check_unit_interval("beta", beta, 0.25)
    return torch.lerp(aug_probs, plain_probs, beta)


def tta_logits(model: nn.Module, images, transform: Callable, batch_size: int = 16,
               device: torch.device | str | None = None, num_workers: int = 0, decode_size: int | None = None,
               max_batch: int = 32, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `[N, V, K]` of every view `transform` makes of each image of an `ImageList`.

    `decode_size` (default: the list's own) must match the plain pipeline's, e.g. `dls.val.dataset`'s:
    JPEGs decoded at a reduced scale differ slightly in their pixels.
    """
    check_positive_int("batch_size", batch_size, 16)
    check_positive_int("num_workers", num_workers, 0, allow_zero=True)
    check_positive_int("max_batch", max_batch, 32)
    loader = make_loader(images.with_transform(transform, decode_size), batch_size, shuffle=False,
                         num_workers=num_workers)
    return predict_views(model, loader, device, max_batch, progress)


# ---------------------------------------------------------------- cost

@torch.no_grad()
def timings(models: nn.Module | Sequence[nn.Module], batch: torch.Tensor, views: int = 1, repeats: int = 3,
            max_batch: int | None = None) -> list[float]:
    """Wall time per *image* of each of `repeats` runs of every model on `views` copies of each image in `batch`.

    Each run is a `torch.utils.benchmark.Timer` measurement on this process's threads (one untimed call
    first, then one timed; CUDA is synchronised). Only the network's work is timed (the views are built
    once beforehand), which is what grows with TTA's k and the ensemble's M; decoding and resizing the
    image are paid once either way. The views go through in forward passes of `max_batch` images
    (default: `len(batch)`), so k views cost k passes of the same size as the single prediction's.
    """
    check_positive_int("views", views, 10)
    check_positive_int("repeats", repeats, 3)
    if max_batch is not None:
        check_positive_int("max_batch", max_batch, 32)
    models = [models] if isinstance(models, nn.Module) else list(models)
    max_batch = max_batch or len(batch)
    stacked = batch.repeat_interleave(views, dim=0) if views > 1 else batch
    inputs = [stacked.to(model_device(m)) for m in models]

    def run():
        for m, x in zip(models, inputs):
            for chunk in x.split(max_batch):
                m(chunk)

    timer = benchmark.Timer("run()", globals={"run": run}, num_threads=torch.get_num_threads())
    with eval_mode(*models):
        return [timer.blocked_autorange(min_run_time=0).median / len(batch) for _ in range(repeats)]


def seconds_per_image(models: nn.Module | Sequence[nn.Module], batch: torch.Tensor, views: int = 1,
                      repeats: int = 3, max_batch: int | None = None) -> float:
    """Median of `timings`: wall time per image to run every model on `views` copies of each image."""
    return float(np.median(timings(models, batch, views, repeats, max_batch)))


def cost_ratio(slow: nn.Module | Sequence[nn.Module], fast: nn.Module, batch: torch.Tensor, views: int = 1,
               repeats: int = 5) -> dict:
    """How many times one prediction of `slow` (on `views` views) costs one plain prediction of `fast`.

    The two are timed in alternation, `repeats` times each, so a machine that slows down for a while
    slows both; the interval is a bootstrap over the repeated timings (`metrics.ratio_interval`).
    """
    from .metrics import ratio_interval
    slow_t, fast_t = [], []
    for _ in range(repeats):
        fast_t += timings(fast, batch, 1, repeats=1)
        slow_t += timings(slow, batch, views, repeats=1)
    ratio, low, high = ratio_interval(slow_t, fast_t)
    return {"ratio": ratio, "low": low, "high": high, "slow_s": slow_t, "fast_s": fast_t, "n": repeats}


