"""Augmentation gallery: pick an image and a transform, drag its magnitude, resample N random draws.

Every callback is a plain function (``gallery_images``, ``pipeline_images``, ``pca_alpha_rows`` ...)
that returns PIL images; ``show_gallery`` only wires them to ipywidgets, so tests need no browser and
a notebook run without a widget front-end can draw the same pictures as static grids.
"""
from __future__ import annotations

import html
from typing import Any, Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
import torch

from ..augment import AUGMENTATIONS, ColorPCA, make_pipeline, make_transform, pca_color
from ..plots import show_images
from ._static import figure_png, show_error, show_static_in_headless, stack_pngs

__all__ = ["PHOTOS", "square_thumbnail", "skimage_photos", "dataset_samples", "demo_images",
           "gallery_images", "pipeline_images", "pipeline_view", "gallery_rows", "pca_alpha_rows",
           "show_gallery", "NOTHING_SELECTED"]

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # shipped inside scikit-image: no download


def square_thumbnail(image: PIL.Image.Image, size: int = 160) -> PIL.Image.Image:
    """Centre-crop to a square and resize to `size` px: small images keep the gallery responsive."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), PIL.Image.BILINEAR)


def skimage_photos(names: Iterable[str] = PHOTOS, size: int = 160) -> dict[str, PIL.Image.Image]:
    """Real photos bundled with scikit-image (offline), as square thumbnails."""
    import skimage.data
    return {n: square_thumbnail(PIL.Image.fromarray(getattr(skimage.data, n)()), size) for n in names}


def dataset_samples(images: Any, n: int = 4, seed: int = 0, size: int = 160) -> dict[str, PIL.Image.Image]:
    """`n` seeded samples of an ImageList, named by class, as square thumbnails."""
    idx = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    return {f"{images.classes[images.targets[i]]} #{i}": square_thumbnail(images.image(int(i)), size)
            for i in sorted(idx)}


def demo_images(images: Any = None, n: int = 4, seed: int = 0, size: int = 160) -> dict[str, PIL.Image.Image]:
    """The gallery's choices: dataset samples (when given) then the scikit-image photos."""
    samples = dataset_samples(images, n, seed, size) if images is not None else {}
    return {**samples, **skimage_photos(size=size)}


def _draws(transform, image: Any, n: int, seed: int) -> list[PIL.Image.Image]:
    """`n` random draws of `transform` on `image`, reproducible from `seed`, global RNG left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [transform(image) for _ in range(n)]


def gallery_images(image: PIL.Image.Image, transform_name: str, magnitude: float = 0.5, n: int = 8,
                   seed: int = 0, pca: ColorPCA | None = None) -> list[PIL.Image.Image]:
    """`n` random draws of one catalogue augmentation at `magnitude` (the gallery's main callback)."""
    return _draws(make_transform(transform_name, magnitude, image=image, pca=pca), image, n, seed)


def pipeline_images(image: PIL.Image.Image, transform_names: Sequence[str], magnitude: float | Mapping = 0.5,
                    n: int = 8, seed: int = 0, pca: ColorPCA | None = None) -> list[PIL.Image.Image]:
    """`n` random draws of several augmentations composed in the given order (the pipeline view).

    An empty selection composes nothing: the identity, so `n` copies of the original.
    """
    if not transform_names:
        return [image.copy() for _ in range(n)]
    return _draws(make_pipeline(transform_names, magnitude, image=image, pca=pca), image, n, seed)


NOTHING_SELECTED = "(nothing selected)"


def pipeline_view(image: PIL.Image.Image, transform_names: Sequence[str], magnitude: float | Mapping = 0.5,
                  n: int = 8, seed: int = 0, pca: ColorPCA | None = None) -> tuple[list[PIL.Image.Image], str]:
    """(images, title) of the pipeline tab: the draws and `a -> b -> c`, or the original and '(nothing selected)'."""
    if not transform_names:
        return [image], f"original {NOTHING_SELECTED}"
    return pipeline_images(image, transform_names, magnitude, n, seed, pca), " -> ".join(transform_names)


def gallery_rows(image: PIL.Image.Image, names: Sequence[str] | None = None, magnitude: float = 0.6, n: int = 6,
                 seed: int = 0, pca: ColorPCA | None = None) -> dict[str, list[PIL.Image.Image]]:
    """Static gallery: the original, then one row of `n` draws for every augmentation (no widgets needed)."""
    names = [k for k in AUGMENTATIONS if pca is not None or k != "pca_color"] if names is None else names
    rows = {"original": [image]}
    rows.update({name: gallery_images(image, name, magnitude, n, seed, pca) for name in names})
    return rows


def pca_alpha_rows(image: PIL.Image.Image, pca: ColorPCA,
                   alphas: Sequence[float] = (-2, -1, 0, 1, 2)) -> dict[str, list[PIL.Image.Image]]:
    """The image shifted along each principal axis alone: row k uses alpha = a * e_k for each a in `alphas`."""
    rows = {}
    for k in range(3):
        unit = torch.zeros(3)
        unit[k] = 1.0
        rows[f"axis {k + 1}"] = [pca_color(image, pca.eigvals, pca.eigvecs, a * unit) for a in alphas]
    return rows


def _render(out, images: list, title: str, ncols: int = 8) -> bytes:
    """Replace what `out` (an ipywidgets Output) shows with a grid of `images`; returns the grid as PNG."""
    from IPython.display import Image, display
    fig = show_images(images, ncols=ncols, suptitle=title)
    try:
        png = figure_png(fig)
    finally:
        plt.close(fig)
    with out:
        out.clear_output(wait=True)
        display(Image(png))
    return png


def show_gallery(images: Mapping[str, PIL.Image.Image], pca: ColorPCA | None = None, n: int = 8,
                 magnitude: float = 0.5, seed: int = 0):
    """The interactive gallery: a *single transform* tab and a *pipeline* tab; returns the widget.

    ``widget.gallery_state`` holds the last images drawn and their titles (handy in tests and for a
    closer look). An error in a callback is shown in the tab's output, never only in the Log Console.
    In a headless run the widget displays as a picture of its initial state (see ``_static``).
    """
    import ipywidgets as W

    names = [k for k in AUGMENTATIONS if pca is not None or k != "pca_color"]
    pick = W.Dropdown(options=list(images), description="image")
    which = W.Dropdown(options=names, description="transform")
    chain = W.SelectMultiple(options=names, value=tuple(names[:3]), description="pipeline", rows=len(names))
    mag = W.FloatSlider(value=magnitude, min=0, max=1, step=0.05, description="magnitude", continuous_update=False)
    count = W.IntSlider(value=n, min=1, max=16, description="draws", continuous_update=False)
    resample = W.Button(description="resample", icon="refresh")
    meaning = W.HTML()
    single_out, chain_out = W.Output(), W.Output()
    captions = {"single": W.HTML(), "pipeline": W.HTML()}  # the title as text too: readable, testable
    for widget, cls in ((single_out, "tlkit-gallery-single"), (chain_out, "tlkit-gallery-pipeline"),
                        (captions["single"], "tlkit-gallery-single-title"),
                        (captions["pipeline"], "tlkit-gallery-pipeline-title")):
        widget.add_class(cls)
    state = {"seed": seed, "single": [], "pipeline": [], "titles": {}, "png": {}, "errors": []}

    def draw_tab(tab: str, out, draw) -> None:
        try:
            state[tab], state["titles"][tab] = draw()
            state["png"][tab] = _render(out, state[tab], state["titles"][tab])
            captions[tab].value = f"<b>{html.escape(state['titles'][tab])}</b>"
        except Exception as exc:  # shown in the tab (stale pictures cleared), not only in the Log Console
            state["errors"].append(f"{tab}: {exc!r}")
            captions[tab].value = "<b>(error: see below)</b>"
            show_error(out, exc, f"the {tab} tab")

    def redraw(*_: Any) -> None:
        image = images[pick.value]
        meaning.value = f"<i>{which.value}: {AUGMENTATIONS[which.value][1]}</i>"
        draw_tab("single", single_out, lambda: (
            gallery_images(image, which.value, mag.value, count.value, state["seed"], pca),
            f"{which.value} @ magnitude {mag.value:.2f}"))
        order = [k for k in names if k in chain.value]  # catalogue order: geometry first, then colour
        draw_tab("pipeline", chain_out, lambda: pipeline_view(image, order, mag.value, count.value,
                                                              state["seed"], pca))

    def on_resample(_: Any) -> None:
        state["seed"] += 1
        redraw()

    for control in (pick, which, chain, mag, count):
        control.observe(redraw, names="value")
    resample.on_click(on_resample)
    tabs = W.Tab(children=[W.VBox([which, meaning, captions["single"], single_out]),
                           W.VBox([chain, captions["pipeline"], chain_out])])
    tabs.set_title(0, "single transform")
    tabs.set_title(1, "pipeline")
    ui = W.VBox([W.HBox([pick, mag, count, resample]), tabs])
    ui.add_class("tlkit-gallery")
    ui.gallery_state = state
    redraw()
    pictures = [state["png"][k] for k in ("single", "pipeline") if k in state["png"]]
    alt = f"augmentation gallery: {state['titles'].get('single', '')} | pipeline: {state['titles'].get('pipeline', '')}"
    return show_static_in_headless(ui, stack_pngs(pictures) if pictures else b"", alt)
