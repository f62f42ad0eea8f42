"""Image grids draw large photos shrunk, small ones and tensors as given."""
import matplotlib

matplotlib.use("Agg")
import numpy as np
import torch
from PIL import Image

from tlkit import plots


def drawn(fig):
    return [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]


def test_a_large_photo_is_drawn_at_most_shown_side_and_keeps_its_aspect():
    y, x = np.mgrid[0:1500, 0:2000]
    big = Image.fromarray(np.stack([x * 255 // 1999, y * 255 // 1499, (x + y) % 256], -1).astype(np.uint8))
    small = Image.fromarray(np.full((40, 30, 3), 200, dtype=np.uint8))
    fig = plots.show_images([big, small, torch.rand(3, 16, 24)], ["big", "small", "tensor"])
    shapes = [a.shape for a in drawn(fig)]
    assert shapes[0] == (plots.SHOWN_SIDE * 3 // 4, plots.SHOWN_SIDE, 3)
    assert shapes[1] == (40, 30, 3) and shapes[2] == (16, 24, 3)
    assert big.size == (2000, 1500)                      # the caller's image is not changed
    expected = np.asarray(big.resize((plots.SHOWN_SIDE, plots.SHOWN_SIDE * 3 // 4), Image.Resampling.BICUBIC))
    assert np.abs(drawn(fig)[0][..., :2].astype(int) - expected[..., :2].astype(int)).max() <= 2   # the whole picture
