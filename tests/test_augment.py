"""tlkit.augment: PCA colour augmentation recovers known axes; every augmentation keeps shape, dtype, range, label."""
import numpy as np
import PIL.Image
import pytest
import pandas as pd
import torch
from sklearn.decomposition import PCA
from torchvision import tv_tensors
from torchvision.transforms import v2

from tlkit import augment as A
from tlkit.lessons import l02_augment
from tlkit.models import small_cnn

NAMES = sorted(A.AUGMENTATIONS)


def random_rotation(seed):
    """A random 3x3 orthogonal matrix (QR of a Gaussian matrix)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q


@pytest.fixture(scope="module")
def known_cloud():
    """Pixels drawn from N(0.5, Q diag(lam) Q^T), packed into a few 32x32 float images."""
    lam, q = np.array([0.02, 0.005, 0.001]), random_rotation(3)
    rng = np.random.default_rng(0)
    pixels = 0.5 + rng.normal(size=(8 * 32 * 32, 3)) * np.sqrt(lam) @ q.T
    images = [torch.tensor(chunk.T.reshape(3, 32, 32), dtype=torch.float32) for chunk in np.split(pixels, 8)]
    return lam, q, pixels, images


@pytest.fixture
def pca():
    return A.ColorPCA(torch.tensor([0.18, 0.03, 0.012]), torch.tensor(random_rotation(1), dtype=torch.float32))


@pytest.fixture
def photo():
    """A smooth 48x64 RGB test image (uint8 tensor)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 64), indexing="ij")
    return (torch.stack([xx, yy, (xx + yy) / 2]) * 255).round().to(torch.uint8)


# ---------------------------------------------------------------- PCA fitting

def test_pca_recovers_known_axes(known_cloud):
    lam, q, _, images = known_cloud
    fit = A.fit_pca_color(images, n_pixels=len(images) * 32 * 32, max_images=None)
    cos = np.abs((fit.eigvecs.numpy().T @ q).diagonal())
    assert cos.min() > 0.99, cos
    np.testing.assert_allclose(fit.eigvals.numpy(), lam, rtol=0.1)


def test_pca_matches_sklearn(known_cloud):
    _, _, pixels, _ = known_cloud
    fit = A.pca_from_pixels(torch.tensor(pixels, dtype=torch.float32))
    ref = PCA(n_components=3).fit(pixels)
    np.testing.assert_allclose(fit.eigvals.numpy(), ref.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(np.abs(fit.eigvecs.numpy().T @ ref.components_.T).diagonal(), 1, atol=1e-4)
    assert torch.all(fit.eigvals[:-1] >= fit.eigvals[1:])  # descending


def test_fit_is_seeded_and_reads_pil_and_labelled_datasets(known_cloud):
    _, _, _, images = known_cloud
    pil = [v2.functional.to_pil_image(im) for im in images]
    labelled = [(im, i % 2) for i, im in enumerate(pil)]
    a = A.fit_pca_color(pil, n_pixels=2000, seed=5)
    b = A.fit_pca_color(labelled, n_pixels=2000, seed=5)
    c = A.fit_pca_color(pil, n_pixels=2000, seed=6)
    torch.testing.assert_close(a.eigvals, b.eigvals)
    assert not torch.equal(a.eigvals, c.eigvals)
    assert A.sample_pixels(pil, n_pixels=1234).shape == (1234, 3)


# ---------------------------------------------------------------- the colour transforms

def test_pca_color_adds_eigvecs_times_alpha_eigvals(pca):
    image = torch.full((3, 4, 5), 0.5)
    alpha = torch.tensor([0.3, -1.0, 2.0])
    expected = 0.5 + pca.eigvecs.numpy() @ (alpha.numpy() * pca.eigvals.numpy())
    out = A.pca_color(image, pca.eigvals, pca.eigvecs, alpha)
    np.testing.assert_allclose(out[:, 2, 3].numpy(), expected, atol=1e-6)


def test_pca_color_shift_has_expected_covariance(pca):
    """alpha ~ N(0, sigma^2) => shift ~ N(0, sigma^2 V diag(lam^2) V^T)."""
    torch.manual_seed(0)
    sigma = 0.5
    tf = A.PCAColor(pca.eigvals, pca.eigvecs, sigma=sigma, per_image=True)
    batch = torch.full((4000, 3, 1, 1), 0.5)
    shifts = (tf(batch) - 0.5).reshape(-1, 3).double()
    v, lam = pca.eigvecs.double(), pca.eigvals.double()
    expected = sigma ** 2 * v @ torch.diag(lam ** 2) @ v.T
    torch.testing.assert_close(torch.cov(shifts.T), expected, atol=2e-4, rtol=0.1)


def test_per_image_draws_differ_and_batch_draw_is_shared():
    torch.manual_seed(0)
    batch = torch.full((6, 3, 2, 2), 0.5)
    per_image = A.ColorShift(0.1, per_image=True)(batch)[:, :, 0, 0]
    shared = A.ColorShift(0.1)(batch)[:, :, 0, 0]
    assert per_image.unique(dim=0).shape[0] == 6
    assert shared.unique(dim=0).shape[0] == 1


def test_color_shift_statistics():
    torch.manual_seed(0)
    out = A.ColorShift(sigma=0.05, per_image=True)(torch.full((5000, 3, 1, 1), 0.5)).reshape(-1, 3)
    np.testing.assert_allclose((out - 0.5).std(0).numpy(), 0.05, rtol=0.05)
    np.testing.assert_allclose((out - 0.5).mean(0).numpy(), 0, atol=0.005)


@pytest.mark.parametrize("make", [lambda p: A.PCAColor(p.eigvals, p.eigvecs, sigma=0), lambda p: A.ColorShift(0)])
def test_sigma_zero_is_identity(make, pca, photo):
    tf = make(pca)
    assert torch.equal(tf(photo), photo)
    as_float = photo.float() / 255
    assert torch.equal(tf(as_float), as_float)
    pil = v2.functional.to_pil_image(photo)
    assert np.array_equal(np.asarray(tf(pil)), np.asarray(pil))


def test_colour_transforms_leave_masks_and_boxes_alone(pca, photo):
    mask = tv_tensors.Mask(torch.ones(48, 64, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[1, 2, 10, 20]], format="XYXY", canvas_size=(48, 64))
    img, m, b = A.PCAColor(pca.eigvals, pca.eigvecs, sigma=3)(tv_tensors.Image(photo), mask, boxes)
    assert isinstance(img, tv_tensors.Image) and not torch.equal(img, photo)
    assert torch.equal(m, mask) and torch.equal(b, boxes)


def test_colour_transform_rejects_grey(pca):
    with pytest.raises(ValueError, match="RGB"):
        A.ColorShift(0.1)(torch.zeros(1, 4, 4))


# ---------------------------------------------------------------- the whole catalogue

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["uint8", "float", "pil", "tv_image"])
def test_augmentations_keep_shape_dtype_range_and_label(name, kind, pca, photo):
    torch.manual_seed(0)
    image = {"uint8": photo, "float": photo.float() / 255, "tv_image": tv_tensors.Image(photo),
             "pil": v2.functional.to_pil_image(photo)}[kind]
    tf = A.make_transform(name, 1.0, image=image, pca=pca)
    for _ in range(3):
        out, label = tf(image, 7)
        assert label == 7
        if kind == "pil":
            assert isinstance(out, PIL.Image.Image) and out.size == image.size and out.mode == "RGB"
            continue
        assert type(out) is type(image) and out.shape == image.shape and out.dtype == image.dtype
        hi = 255 if image.dtype == torch.uint8 else 1.0
        assert out.min() >= 0 and out.max() <= hi


@pytest.mark.parametrize("name", NAMES)
def test_magnitude_zero_is_identity(name, pca, photo):
    torch.manual_seed(0)
    image = photo.float() / 255
    out = A.make_transform(name, 0.0, image=image, pca=pca)(image)
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_magnitude_one_changes_the_image(name, pca, photo):
    torch.manual_seed(0)
    tf = A.make_transform(name, 1.0, image=photo, pca=pca)
    assert any(not torch.equal(tf(photo), photo) for _ in range(5))


def test_pipeline_runs_on_a_gpu_style_batch(pca):
    """Colour and geometric transforms accept [B, 3, H, W] (same draw for the batch, like torchvision's)."""
    torch.manual_seed(0)
    batch = torch.rand(4, 3, 32, 32)
    out = A.make_pipeline(["mirror", "rotation", "color_shift", "pca_color"], 0.5, size=(32, 32), pca=pca)(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype and 0 <= out.min() and out.max() <= 1


def test_pipeline_in_dataset_style_compose_keeps_label(pca):
    """The usual training pipeline: PIL in, normalised float tensor out, integer label untouched."""
    pil = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    tf = v2.Compose([v2.ToImage(), A.make_pipeline(NAMES, 0.7, size=(40, 50), pca=pca),
                     v2.ToDtype(torch.float32, scale=True)])
    x, y = tf(pil, 1)
    assert y == 1 and x.shape == (3, 40, 50) and x.dtype == torch.float32


def test_make_transform_validates(pca):
    with pytest.raises(KeyError, match="unknown augmentation"):
        A.make_transform("blur", 0.5)
    with pytest.raises(ValueError, match="magnitude"):
        A.make_transform("rotation", 1.5)
    with pytest.raises(ValueError, match="fit_pca_color"):
        A.make_transform("pca_color", 0.5)


# ---------------------------------------------------------------- measurements

def test_generalisation_gap():
    assert l02_augment.generalisation_gap(0.95, 0.80) == pytest.approx(0.15)


def test_time_steps_splits_wait_and_compute():
    data = torch.utils.data.TensorDataset(torch.randn(24, 3, 8, 8), torch.randint(0, 2, (24,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    before = net[1].weight.detach().clone()
    t = l02_augment.time_steps(net, loader, n_steps=4, warmup=1)
    assert t["step_s"] > 0 and t["data_wait_s"] >= 0
    assert t["step_s"] == pytest.approx(t["data_wait_s"] + t["compute_s"])
    assert not torch.equal(net[1].weight, before)  # it really trained
    assert len(l02_augment.time_steps(net, loader, n_steps=10)["events"]) == 10  # 6 batches: restarts the loader


def test_time_steps_events_cover_the_timed_steps():
    data = torch.utils.data.TensorDataset(torch.randn(20, 4), torch.randint(0, 2, (20,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    t = l02_augment.time_steps(torch.nn.Linear(4, 2), loader, n_steps=3, warmup=2)
    ev = np.array(t["events"])
    assert ev.shape == (3, 3) and ev[0, 0] == 0
    assert np.all(np.diff(ev.ravel()) >= 0)  # request <= ready <= done <= next request
    assert t["step_s"] == pytest.approx(ev[-1, 2] / 3, rel=1e-3)


def test_augmented_transform_outputs_normalised_tensors_and_keeps_label(pca):
    pil = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    norm = ((0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    tf = A.augmented_transform(32, norm, pca=pca, elastic_alpha=20.0)
    (x, y), (x2, _) = tf(pil, 3), tf(pil, 3)
    assert y == 3 and x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= (0 - 0.5) / 0.25 and x.max() <= (1 - 0.5) / 0.25  # normalised [0, 1] range
    assert not torch.equal(x, x2)  # random
    names = [type(t).__name__ for t in tf.transforms]
    assert {"RandomResizedCrop", "RandomHorizontalFlip", "ElasticTransform", "ColorShift", "PCAColor"} <= set(names)
    assert "PCAColor" not in [type(t).__name__ for t in A.augmented_transform(32).transforms]


def test_fit_with_clean_train_acc_adds_the_clean_accuracy_per_epoch():
    from types import SimpleNamespace

    from tlkit import Learner
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    noisy = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x + torch.randn_like(x) * 3, y), batch_size=16)
    learn = Learner(torch.nn.Linear(2, 2), SimpleNamespace(train=noisy, val=loader), progress=False)
    hist = l02_augment.fit_with_clean_train_acc(learn, 3, 0.1, loader)
    assert list(hist["epoch"]) == [1, 2, 3] and len(hist["train_acc_clean"]) == 3
    assert hist["train_acc_clean"].iloc[-1] == pytest.approx(learn.evaluate(loader)["acc"])
    assert hist["train_acc_clean"].iloc[-1] == pytest.approx(hist["val_acc"].iloc[-1])  # same images here


def test_fit_with_clean_train_acc_measures_the_curves_every_few_epochs_and_trains_the_same_weights():
    from types import SimpleNamespace

    from tlkit import Learner
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    noisy = torch.utils.data.TensorDataset(x + torch.randn_like(x) * 3, y)
    runs = {}
    for every in (1, 2):
        torch.manual_seed(0)
        shuffled = torch.utils.data.DataLoader(noisy, batch_size=16, shuffle=True,
                                               generator=torch.Generator().manual_seed(1))
        learn = Learner(torch.nn.Linear(2, 2), SimpleNamespace(train=shuffled, val=loader), progress=False)
        runs[every] = (l02_augment.fit_with_clean_train_acc(learn, 5, 0.1, loader, curve_every=every), learn)
    every_epoch, sparse = runs[1][0], runs[2][0]
    measured = sparse["val_acc"].notna()
    assert list(sparse["epoch"][measured]) == [2, 4, 5]                     # every 2nd epoch and the last
    assert sparse["train_acc_clean"].notna().tolist() == measured.tolist()
    for column in ("val_loss", "val_acc", "train_acc_clean"):               # the same numbers where measured
        np.testing.assert_allclose(sparse[column][measured], every_epoch[column][measured], rtol=1e-6)
    for a, b in zip(runs[1][1].net.parameters(), runs[2][1].net.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="curve_every"):
        l02_augment.fit_with_clean_train_acc(runs[2][1], 2, 0.1, loader, curve_every=0)


def test_a_fit_with_clean_train_accuracy_is_read_back_from_the_fit_cache_with_its_curve(tmp_path):
    from types import SimpleNamespace

    from tlkit import Learner, fit_cache
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    clean = list(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16))
    noisy = torch.utils.data.TensorDataset(x + 3 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1)), y)
    fit_cache.use(tmp_path)
    try:
        hists = []
        for _ in range(2):
            torch.manual_seed(0)
            shuffled = torch.utils.data.DataLoader(noisy, batch_size=16, shuffle=True,
                                                   generator=torch.Generator().manual_seed(1))
            learn = Learner(torch.nn.Linear(2, 2), SimpleNamespace(train=shuffled, val=clean), progress=False)
            hists.append(l02_augment.fit_with_clean_train_acc(learn, 4, 0.1, clean, curve_every=2))
    finally:
        fit_cache.use(None)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    pd.testing.assert_frame_equal(hists[0], hists[1])     # "seconds" too: the second fit was read back
    assert hists[1]["train_acc_clean"].notna().tolist() == [False, True, False, True]


def test_fit_with_clean_train_acc_scores_the_last_epoch_when_a_callback_stops_early():
    from types import SimpleNamespace

    from tlkit import Learner
    from tlkit.train import CancelFit
    torch.manual_seed(0)
    x = torch.randn(32, 2)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    learn = Learner(torch.nn.Linear(2, 2), SimpleNamespace(train=loader, val=loader), progress=False)

    def stop_after_two(event, learner):
        if event == "after_epoch" and learner.epoch == 1:
            raise CancelFit

    hist = l02_augment.fit_with_clean_train_acc(learn, 6, 0.1, loader, curve_every=4, callbacks=[stop_after_two])
    assert list(hist["epoch"]) == [1, 2] and hist["val_acc"].isna().tolist() == [True, False]
    assert hist["train_acc_clean"].iloc[-1] == pytest.approx(learn.evaluate(loader)["acc"])


def test_lighting_views_are_the_same_images_kept_or_drawn_again():
    images, plain = bright_and_dark()

    def noisy(img):
        x = plain(img)
        return x + torch.randn_like(x)

    kept = l02_augment.lighting_views(images, noisy, 3, first_seed=5)
    again = l02_augment.lighting_views(images, noisy, 3, first_seed=5, max_bytes=0)
    for k in range(3):
        for (a, ya), (b, yb) in zip(kept(k), again(k)):
            assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(kept(0)[0][0], kept(1)[0][0])              # each draw is its own change
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    again(2)
    assert torch.equal(torch.rand(1), before)                          # drawing leaves the global generator alone


def test_in_memory_keeps_labels_and_shrinks_to_the_short_side():
    from tlkit.data import ImageList, in_memory
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 60), (90, 30)]]
    small = in_memory(ImageList(arrays, [1, 0], ["a", "b"]), short_side=20)
    assert small.targets == [1, 0] and small.classes == ["a", "b"]
    assert [small.image(i).size for i in range(2)] == [(30, 20), (20, 60)]
    # a resize of a constant image stays constant: the pixels are the source's, not noise
    flat = in_memory(ImageList([np.full((50, 50, 3), 77, np.uint8)], [0], ["a"]), 10)
    assert np.all(np.asarray(flat.image(0)) == 77)


def test_small_cnn_shapes():
    net = small_cnn(5, width=4)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32]


def bright_and_dark():
    """16 random 20 px images whose class 1 is brighter (a cue a tiny CNN learns), and a plain 16 px view."""
    from tlkit import data
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(16)]
    targets = [i % 2 for i in range(16)]
    for a, t in zip(arrays, targets):
        a[:] = np.clip(a // 2 + 128 * t, 0, 255)
    return data.ImageList(arrays, targets, ["dark", "bright"]), data.eval_transform(16, ((0.5,) * 3, (0.5,) * 3))


def test_compare_augmentations_averages_each_images_correctness_over_independent_seeds():
    images, plain = bright_and_dark()
    args = (images, images, {"plain": plain}, plain, plain, 2, 1e-2, 4, 4)
    both = l02_augment.compare_augmentations(*args, seeds=[0, 1])["plain"]
    one = [l02_augment.compare_augmentations(*args, seeds=[s])["plain"] for s in (0, 1)]
    for part in ("train", "val", "lit"):
        np.testing.assert_allclose(both["correct"][part], (one[0]["correct"][part] + one[1]["correct"][part]) / 2)
    np.testing.assert_allclose(both["history"]["val_loss"],
                               (one[0]["history"]["val_loss"] + one[1]["history"]["val_loss"]) / 2, rtol=1e-6)
    assert both["seeds"] == [0, 1] and len(both["histories"]) == 2
    assert not one[0]["history"]["val_loss"].equals(one[1]["history"]["val_loss"])   # the seeds differ


def test_compare_augmentations_averages_each_image_over_the_lighting_draws():
    images, plain = bright_and_dark()

    def flip_half(img):                                        # a random change: half the draws invert the image
        x = plain(img)
        return -x if torch.rand(()) < 0.5 else x

    args = (images, images, {"plain": plain}, plain, flip_half, 3, 3e-2, 4, 4)
    one, four = (l02_augment.compare_augmentations(*args, seeds=[0], lighting_draws=k)["plain"] for k in (1, 4))
    assert set(np.unique(one["correct"]["lit"])) <= {0.0, 1.0}
    shares = four["correct"]["lit"]
    assert np.allclose(shares * 4, np.round(shares * 4)) and ((shares > 0) & (shares < 1)).any()
    np.testing.assert_array_equal(one["correct"]["val"], four["correct"]["val"])     # same training, same model
    with pytest.raises(ValueError, match="lighting_draws"):
        l02_augment.compare_augmentations(*args, seeds=[0], lighting_draws=0)
