"""Seed augmentations as torchvision ``transforms.v2`` transforms, incl. AlexNet's PCA colour augmentation.

Torchvision already has mirroring, cropping, rotation, shearing and elastic warping; this module
reuses those and writes by hand only what it lacks: per-channel colour shift and PCA colour
augmentation (Krizhevsky et al. 2012, section 4.1). All work on PIL images, uint8 and float tensors
``[..., 3, H, W]`` (so batches on the GPU too) and leave labels, boxes and masks alone.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .data import DEFAULT_NORM

__all__ = ["ColorPCA", "ColorShift", "PCAColor", "color_shift", "pca_color", "to_float01", "sample_pixels",
           "pca_from_pixels", "fit_pca_color", "AUGMENTATIONS", "make_transform", "make_pipeline",
           "augmented_transform"]

# Colour transforms touch images only: boxes, masks and labels pass through untouched.
_IMAGE_TYPES = (PIL.Image.Image, tv_tensors.Image, tv_tensors.Video, TF.is_pure_tensor)


# ---------------------------------------------------------------- colour kernels (plain functions)

def to_float01(image: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] tensor -> float32 in [0, 1]."""
    return image.float() / 255 if image.dtype == torch.uint8 else image.float()


def _from_float01(image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Clamp to the valid range and cast back to `like`'s dtype (rounding for uint8)."""
    image = image.clamp(0, 1)
    if like.dtype == torch.uint8:
        return (image * 255).round().to(torch.uint8)
    return image.to(like.dtype)


def _add_rgb(image: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Add an RGB offset ``[3]`` (or ``[B, 3]`` for a batch ``[B, 3, H, W]``) to every pixel."""
    if image.shape[-3] != 3:
        raise ValueError(f"colour augmentation needs RGB images [..., 3, H, W], got shape {tuple(image.shape)}")
    x = to_float01(image)
    delta = delta.to(device=x.device, dtype=x.dtype)
    return _from_float01(x + delta[..., :, None, None], image)


def _apply_to(image: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Run a tensor kernel on a tensor, tv_tensor or PIL image, returning the same kind."""
    if isinstance(image, PIL.Image.Image):
        return TF.to_pil_image(fn(TF.pil_to_tensor(image.convert("RGB"))))
    out = fn(image.as_subclass(torch.Tensor))
    return tv_tensors.wrap(out, like=image) if isinstance(image, tv_tensors.TVTensor) else out


def color_shift(image: Any, shift: torch.Tensor) -> Any:
    """Add per-channel offsets `shift` (in [0, 1] units) to an RGB image; clamps to the valid range."""
    return _apply_to(image, lambda x: _add_rgb(x, torch.as_tensor(shift)))


def pca_color(image: Any, eigvals: torch.Tensor, eigvecs: torch.Tensor, alpha: torch.Tensor) -> Any:
    """AlexNet's PCA colour shift: add ``eigvecs @ (alpha * eigvals)`` to every pixel.

    `eigvecs` holds the principal axes as columns; `alpha` is ``[3]`` or ``[B, 3]`` (one per image).
    """
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    delta = (alpha * eigvals.to(alpha.device)) @ eigvecs.to(alpha.device).T  # row form of eigvecs @ (a*l)
    return _apply_to(image, lambda x: _add_rgb(x, delta))


# ---------------------------------------------------------------- v2 transforms

class _ColorTransform(v2.Transform):
    """Shared plumbing: images only, one random draw per call (or per image when `per_image`)."""

    _transformed_types = _IMAGE_TYPES

    def __init__(self, sigma: float, per_image: bool = False):
        super().__init__()
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.per_image = per_image

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # per_image on a batch [B, 3, H, W]: B independent draws, so a GPU batch is augmented in one call.
        first = flat_inputs[0] if flat_inputs else None
        batch = first.shape[:-3] if self.per_image and torch.is_tensor(first) else ()
        return {"noise": torch.randn(*batch, 3) * self.sigma}


class ColorShift(_ColorTransform):
    """Per-channel colour shift: add an RGB offset drawn from N(0, sigma^2) (in [0, 1] units) to every pixel.

    Models a change of illuminant colour (a photo taken under a warmer or bluer light).
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return color_shift(inpt, params["noise"])


class PCAColor(_ColorTransform):
    """PCA colour augmentation (AlexNet): add ``eigvecs @ (alpha * eigvals)``, ``alpha ~ N(0, sigma^2)``.

    The shift moves colours along the principal axes of the training set's RGB cloud, so it mimics
    the colour variation the data already has (mostly overall brightness, then warm/cold tints).
    `eigvals`/`eigvecs` come from :func:`fit_pca_color` (pixels in [0, 1]); pass ``eigvals.sqrt()``
    instead to draw shifts with covariance ``sigma^2 * Cov`` (the variant many re-implementations use).
    """

    def __init__(self, eigvals: Sequence[float] | torch.Tensor, eigvecs: Sequence[Sequence[float]] | torch.Tensor,
                 sigma: float = 0.1, per_image: bool = False):
        super().__init__(sigma, per_image)
        self.eigvals = torch.as_tensor(eigvals, dtype=torch.float32).reshape(3)
        self.eigvecs = torch.as_tensor(eigvecs, dtype=torch.float32).reshape(3, 3)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return pca_color(inpt, self.eigvals, self.eigvecs, params["noise"])


# ---------------------------------------------------------------- fitting the colour PCA

class ColorPCA(NamedTuple):
    """Principal axes of the RGB cloud: `eigvals` [3] descending, `eigvecs` [3, 3] with axes as columns."""
    eigvals: torch.Tensor
    eigvecs: torch.Tensor


def _images_of(source: Any) -> tuple[int, Callable[[int], Any]]:
    """(count, getter) over an ImageList (``.image(i)``), a ``(img, label)`` dataset or a list of images."""
    if hasattr(source, "image"):
        return len(source), source.image
    items = source if hasattr(source, "__getitem__") else list(source)
    first = items[0]
    if isinstance(first, tuple):
        return len(items), lambda i: items[i][0]
    return len(items), lambda i: items[i]


def _as_float_chw(image: Any) -> torch.Tensor:
    """PIL / ndarray HWC / tensor CHW -> float [3, H, W] in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        return to_float01(TF.pil_to_tensor(image.convert("RGB")))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return to_float01(image.as_subclass(torch.Tensor))


def sample_pixels(source: Any, n_pixels: int = 20_000, seed: int = 0, max_images: int | None = 200) -> torch.Tensor:
    """Draw `n_pixels` RGB pixels in [0, 1] from (up to `max_images` of) the images in `source`.

    Seeded, spread evenly over the chosen images; the full training set is not needed for a 3x3 covariance.
    """
    gen = torch.Generator().manual_seed(seed)
    count, get = _images_of(source)
    chosen = torch.randperm(count, generator=gen)[: max_images or count].tolist()
    per_image = -(-n_pixels // len(chosen))
    chunks = []
    for i in chosen:
        pixels = _as_float_chw(get(i)).reshape(3, -1)
        idx = torch.randint(pixels.shape[1], (per_image,), generator=gen)
        chunks.append(pixels[:, idx].T)
    return torch.cat(chunks)[:n_pixels]


def pca_from_pixels(pixels: torch.Tensor) -> ColorPCA:
    """Eigen-decomposition of the 3x3 covariance of `pixels` [N, 3]; axes signed so their sum is positive."""
    cov = torch.cov(pixels.double().T)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    eigvals, eigvecs = eigvals.flip(0).clamp_min(0), eigvecs.flip(1)
    eigvecs = eigvecs * torch.where(eigvecs.sum(0) < 0, -1.0, 1.0)  # eigh's sign is arbitrary: fix it
    return ColorPCA(eigvals.float(), eigvecs.float())


def fit_pca_color(source: Any, n_pixels: int = 20_000, seed: int = 0, max_images: int | None = 200) -> ColorPCA:
    """Fit AlexNet's colour PCA on a training set (ImageList, dataset or list of images)."""
    return pca_from_pixels(sample_pixels(source, n_pixels, seed, max_images))


# ---------------------------------------------------------------- the gallery's catalogue

def _image_hw(image: Any) -> tuple[int, int]:
    """(height, width) of a PIL image or a [..., H, W] tensor."""
    return (image.height, image.width) if isinstance(image, PIL.Image.Image) else tuple(image.shape[-2:])


def _random_crop(magnitude: float, size: tuple[int, int], **_: Any) -> v2.Transform:
    """Crop a random part (down to 8% of the area at magnitude 1) and resize it back to `size`."""
    aspect = size[1] / size[0]
    ratio = (aspect * (3 / 4) ** magnitude, aspect * (4 / 3) ** magnitude)
    return v2.RandomResizedCrop(size, scale=(1 - 0.92 * magnitude, 1.0), ratio=ratio, antialias=True)


def _pca_color(magnitude: float, pca: ColorPCA | None = None, **_: Any) -> v2.Transform:
    """PCA colour augmentation; magnitude 1 is sigma = 2 (AlexNet used 0.1 on 0-255 pixels)."""
    if pca is None:
        raise ValueError("pca_color needs the colour PCA: pass pca=fit_pca_color(train_set)")
    return PCAColor(pca.eigvals, pca.eigvecs, sigma=2.0 * magnitude)


# name -> (factory(magnitude in [0, 1], size=(H, W), pca=ColorPCA) -> transform, what the magnitude sets)
AUGMENTATIONS: dict[str, tuple[Callable[..., v2.Transform], str]] = {
    "mirror": (lambda m, **_: v2.RandomHorizontalFlip(p=m), "flip probability = m"),
    "random_crop": (_random_crop, "crop area down to 1 - 0.92 m"),
    "rotation": (lambda m, **_: v2.RandomRotation(degrees=45 * m), "angle in +-45 m degrees"),
    "shear": (lambda m, **_: v2.RandomAffine(degrees=0, shear=(-30 * m, 30 * m, -30 * m, 30 * m)),
              "shear in +-30 m degrees"),
    "elastic": (lambda m, **_: v2.ElasticTransform(alpha=150.0 * m, sigma=6.0), "displacement alpha = 150 m"),
    "color_shift": (lambda m, **_: ColorShift(sigma=0.15 * m), "RGB offset sigma = 0.15 m"),
    "pca_color": (_pca_color, "alpha sigma = 2 m"),
}


def make_transform(name: str, magnitude: float, image: Any = None, size: tuple[int, int] | None = None,
                   pca: ColorPCA | None = None) -> v2.Transform:
    """One catalogue augmentation at `magnitude` in [0, 1] (0 = identity) for images of `size` (or like `image`)."""
    if name not in AUGMENTATIONS:
        raise KeyError(f"unknown augmentation {name!r}; choose from {sorted(AUGMENTATIONS)}")
    if not 0 <= magnitude <= 1:
        raise ValueError(f"magnitude must be in [0, 1], got {magnitude}")
    size = size or (_image_hw(image) if image is not None else (224, 224))
    return AUGMENTATIONS[name][0](float(magnitude), size=tuple(size), pca=pca)


def make_pipeline(names: Iterable[str], magnitude: float | dict[str, float], image: Any = None,
                  size: tuple[int, int] | None = None, pca: ColorPCA | None = None) -> v2.Compose:
    """Compose several catalogue augmentations (one magnitude for all, or one per name)."""
    mags = magnitude if isinstance(magnitude, dict) else {n: magnitude for n in names}
    return v2.Compose([make_transform(n, mags[n], image, size, pca) for n in names])


def augmented_transform(size: int, norm=DEFAULT_NORM, pca: ColorPCA | None = None,
                        crop_scale: tuple[float, float] = (0.35, 1.0), degrees: float = 10.0,
                        shift_sigma: float = 0.05, pca_sigma: float = 0.5, elastic_alpha: float = 0.0) -> v2.Compose:
    """A training pipeline of the seed augmentations: PIL -> normalised float tensor of `size` x `size`.

    Crop and mirror (the big wins), a small rotation, colour shift and PCA colour (when `pca` is given),
    optional elastic warping (costly on the CPU: use it to make the data pipeline the bottleneck).
    """
    steps = [v2.ToImage(), v2.RandomResizedCrop(size, scale=crop_scale, antialias=True), v2.RandomHorizontalFlip()]
    steps += [v2.RandomRotation(degrees)] if degrees else []
    steps += [v2.ElasticTransform(alpha=elastic_alpha)] if elastic_alpha else []
    steps += [ColorShift(shift_sigma)] if shift_sigma else []
    steps += [PCAColor(pca.eigvals, pca.eigvecs, pca_sigma)] if pca is not None and pca_sigma else []
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(*norm)])


# ---------------------------------------------------------------- "does it help?" measurements


