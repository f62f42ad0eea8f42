import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tlkit import pipeline as P
from tlkit.data import ImageList
from tlkit.train import Learner
from tlkit.lessons import l07_precision


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops with 2 threads on a busy 2-core box spend ~100 ms per op in thread hand-offs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def jpeg_list(tmp_path_factory):
    """Seven real JPEG files of different sizes and aspect ratios in two classes."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    paths, targets = [], []
    for i, (w, h) in enumerate([(50, 40), (30, 64), (64, 64), (41, 23), (80, 50), (33, 33), (60, 45)]):
        x = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3)) + rng.integers(0, 60, (h, w, 3))
        path = root / f"{i}.jpg"
        Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(path, quality=85)
        paths.append(str(path))
        targets.append(i % 2)
    return ImageList(paths, targets, ["a", "b"])


@pytest.mark.parametrize("decode_size", [None, 24])
def test_memmap_store_returns_exactly_what_the_folder_dataset_returns(jpeg_list, tmp_path, decode_size):
    src = jpeg_list.with_transform(None, decode_size=decode_size)
    store = P.MemmapImageStore.write(src, tmp_path / "store", size=24)
    folder = src.with_transform(P.store_transform(24))
    assert len(store) == len(folder) == 7
    assert store.classes == folder.classes
    for i in range(len(folder)):
        (a, ya), (b, yb) = store[i], folder[i]
        assert a.dtype == b.dtype == torch.uint8 and a.shape == (3, 24, 24)
        assert torch.equal(a, b) and ya == yb
    # a fresh reader, with a float transform on both sides, still agrees exactly
    reread = P.MemmapImageStore(tmp_path / "store", transform=P.to_float())
    ffloat = src.with_transform(lambda im: P.to_float()(P.store_transform(24)(im)))
    assert all(torch.equal(reread[i][0], ffloat[i][0]) for i in range(len(reread)))


def test_memmap_store_is_one_contiguous_file_and_works_in_workers(jpeg_list, tmp_path):
    store = P.MemmapImageStore.write(jpeg_list, tmp_path / "s", size=16)
    arr = np.load(tmp_path / "s" / "images.npy", mmap_mode="r")
    assert arr.shape == (7, 3, 16, 16) and arr.dtype == np.uint8 and arr.flags.c_contiguous
    assert store.nbytes() - arr.nbytes < 256  # the .npy header is all that is added
    single = [x for x, _ in DataLoader(store, batch_size=3)]
    multi = [x for x, _ in DataLoader(store, batch_size=3, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(single, multi))


def test_resized_folder_holds_size_by_size_jpegs(jpeg_list, tmp_path):
    resized = P.write_resized_folder(jpeg_list, tmp_path / "r", size=20)
    assert resized.targets == jpeg_list.targets
    x, y = resized[3]
    assert x.shape == (3, 20, 20) and x.dtype == torch.uint8 and y == jpeg_list.targets[3]
    # lossy JPEG, but close to the exact resize
    exact = P.store_transform(20)(jpeg_list.image(3)).float()
    assert (x.float() - exact).abs().mean() < 12
    assert P.folder_bytes(resized) > 0


def test_measure_throughput_counts_every_image():
    ds = TensorDataset(torch.zeros(50, 3, 4, 4), torch.zeros(50))
    r = P.measure_throughput(ds, batch_size=8, epochs=2)
    assert r["images"] == 100 and r["images_per_s"] == pytest.approx(100 / r["seconds"])
    assert P.measure_throughput(ds, batch_size=8, max_batches=2)["images"] == 16
    table = l07_precision.throughput_table({"t": ds}, workers=(0, 1), batch_size=10)
    assert list(table.num_workers) == [0, 1] and (table.images == 50).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_h2d_bandwidth_is_none_without_cuda():
    assert P.h2d_bandwidth() is None


class SlowData(Dataset):
    def __init__(self, n, delay):
        self.x, self.y, self.delay = torch.randn(n, 4), torch.arange(n) % 2, delay

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.x[i], self.y[i]


class SlowNet(nn.Module):
    def __init__(self, delay):
        super().__init__()
        self.lin, self.delay = nn.Linear(4, 2), delay

    def forward(self, x):
        time.sleep(self.delay)
        return self.lin(x)


@pytest.mark.parametrize("data_delay,compute_delay,expected", [(0.04, 0.0, "data"), (0.0, 0.16, "compute")])
def test_bottleneck_report_finds_the_slow_side(data_delay, compute_delay, expected):
    train = DataLoader(SlowData(16, data_delay), batch_size=4)
    dls = SimpleNamespace(train=train, val=DataLoader(SlowData(4, 0.0), batch_size=4))
    learn = Learner(SlowNet(compute_delay), dls, device="cpu", progress=False)
    steps = l07_precision.bottleneck_report(learn, epochs=2, lr=1e-2)
    assert len(steps) == 8 and learn.dls is dls  # two epochs of four steps; loaders restored
    summary = l07_precision.bottleneck_summary(steps)
    assert summary["limited_by"] == expected
    slow = "data_s_per_step" if expected == "data" else "compute_s_per_step"
    assert summary[slow] >= 0.16  # the injected delay per step is measured on the right side
    assert len(learn.history) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_h2d_bandwidth_and_pinned_loader_on_cuda(jpeg_list, tmp_path):
    bw = P.h2d_bandwidth(mb=16, repeats=2)
    assert bw["pinned"] > 0 and bw["pageable"] > 0
    store = P.MemmapImageStore.write(jpeg_list, tmp_path / "s", size=16)
    r = P.measure_throughput(store, batch_size=4, pin_memory=True, device="cuda", non_blocking=True)
    assert r["images"] == len(store)
