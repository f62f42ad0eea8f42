"""Augmentation gallery callbacks (plain functions, no browser) and its figures."""
import matplotlib
import numpy as np
import PIL.Image
import pytest
import torch

from tlkit import augment as A
from tlkit import plots
from tlkit.widgets import augment_gallery as G
from tlkit.lessons import l02_augment as P

matplotlib.use("Agg")


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))


@pytest.fixture
def pca():
    return A.ColorPCA(torch.tensor([0.18, 0.03, 0.012]), torch.eye(3))


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", sorted(A.AUGMENTATIONS))
@pytest.mark.parametrize("n", [1, 5])
def test_gallery_images_returns_n_pil_images_of_the_input_size(name, n, image, pca):
    out = G.gallery_images(image, name, magnitude=0.8, n=n, seed=0, pca=pca)
    assert len(out) == n
    assert all(isinstance(im, PIL.Image.Image) and im.size == image.size for im in out)


def test_gallery_is_reproducible_per_seed_and_leaves_global_rng_alone(image):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = G.gallery_images(image, "rotation", 1.0, n=4, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = G.gallery_images(image, "rotation", 1.0, n=4, seed=7)
    c = G.gallery_images(image, "rotation", 1.0, n=4, seed=8)
    assert all(same(x, y) for x, y in zip(a, b))
    assert not all(same(x, y) for x, y in zip(a, c))
    assert not same(a[0], a[1])  # the draws differ from each other


def test_pipeline_images_compose_in_order(image, pca):
    out = G.pipeline_images(image, ["mirror", "color_shift", "pca_color"], 0.5, n=3, seed=1, pca=pca)
    assert len(out) == 3 and all(im.size == image.size for im in out)
    identity = G.pipeline_images(image, ["rotation", "color_shift"], 0.0, n=2)
    assert all(same(im, image) for im in identity)


def test_gallery_rows_cover_every_transform(image, pca):
    rows = G.gallery_rows(image, magnitude=0.5, n=3, pca=pca)
    assert list(rows) == ["original", *A.AUGMENTATIONS]
    assert all(len(v) == 3 for k, v in rows.items() if k != "original")
    assert "pca_color" not in G.gallery_rows(image, n=1)  # needs a fitted PCA


def test_pca_alpha_rows_shift_along_one_axis(pca):
    grey = PIL.Image.new("RGB", (4, 4), (128, 128, 128))
    rows = G.pca_alpha_rows(grey, pca, alphas=(-1, 0, 1))
    assert list(rows) == ["axis 1", "axis 2", "axis 3"] and all(len(r) == 3 for r in rows.values())
    assert same(rows["axis 2"][1], grey)  # alpha = 0
    shift = np.asarray(rows["axis 1"][2], dtype=float)[0, 0] - 128  # eigvecs = I: axis 1 is pure red
    np.testing.assert_allclose(shift, [0.18 * 255, 0, 0], atol=1)


class FakeImageList:
    """A minimal ImageList stand-in: classes, targets, image(i)."""

    classes, targets = ["ant", "bee"], [0, 1, 1]

    def __len__(self):
        return len(self.targets)

    def image(self, i):
        return PIL.Image.new("RGB", (30, 20), (i * 50, 0, 0))


def test_thumbnails_photos_and_samples():
    photos = G.skimage_photos(["chelsea"], size=64)
    assert photos["chelsea"].size == (64, 64) and photos["chelsea"].mode == "RGB"
    samples = G.dataset_samples(FakeImageList(), n=2, size=16)
    assert len(samples) == 2 and all(im.size == (16, 16) for im in samples.values())
    assert all(name.split(" #")[0] in FakeImageList.classes for name in samples)
    assert set(G.demo_images(FakeImageList(), n=3, size=16)) >= set(G.PHOTOS)


def test_show_gallery_builds_and_reacts_without_a_browser(image, pca):
    pytest.importorskip("ipywidgets")
    ui = G.show_gallery({"noise": image, "grey": image.convert("L").convert("RGB")}, pca=pca, n=3)
    state = ui.gallery_state
    assert len(state["single"]) == 3 and len(state["pipeline"]) == 3
    first = state["single"]
    resample = ui.children[0].children[3]
    resample.click()
    assert state["seed"] == 1 and not all(same(a, b) for a, b in zip(first, state["single"]))
    count = ui.children[0].children[2]
    count.value = 5
    assert len(state["single"]) == 5 and len(state["pipeline"]) == 5


def test_plots_draw_what_they_are_given(image, pca):
    rows = G.gallery_rows(image, names=["mirror", "rotation"], n=4)
    fig = plots.plot_image_rows(rows)
    assert len([ax for ax in fig.axes if ax.images]) == 1 + 2 * 4
    pixels = torch.rand(500, 3)
    ax = P.plot_rgb_cloud(pixels, A.pca_from_pixels(pixels), n_points=200)
    assert len(ax.lines) == 3
    ax = P.plot_eigvals(pca)
    assert [round(p.get_height(), 3) for p in ax.patches] == [0.18, 0.03, 0.012]
    import pandas as pd
    hist = pd.DataFrame({"epoch": [1, 2], "train_acc": [0.7, 0.9], "val_acc": [0.6, 0.7]})
    ax = P.plot_accuracy_curves({"a": hist, "b": hist})
    assert len(ax.lines) == 4
    ax = P.plot_step_timeline({"0 workers": {"events": [[0, 0.1, 0.3], [0.3, 0.35, 0.5]]}})
    assert len(ax.collections) == 2
    matplotlib.pyplot.close("all")
