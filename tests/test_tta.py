"""TTA views, merging rules and invariance (tlkit.tta)."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from tlkit import data, tta
from tlkit.data import ImageList, Splits
from tlkit.errors import ParameterError
from tlkit.features import FeatureSet
from tlkit.lessons import l06_tta_ensembles
from tlkit.lessons import l06_tta_ensembles as lesson  # noqa: F811 (the short name for the cross-fitting tests)
from tlkit import metrics

NORM = ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))


def random_photo(w=50, h=37, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_ten_crop_equals_torchvision_tencrop_in_fixed_order():
    img, size, resize = random_photo(), 23, 30
    views = tta.view_transform(size, NORM, mode="ten", resize=resize)(img)
    assert views.shape == (10, 3, size, size)
    resized = T.Compose([T.ToImage(), T.Resize(resize, antialias=True)])(img)
    finish = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(*NORM)])
    reference = [finish(v) for v in T.TenCrop(size)(resized)]
    for got, want in zip(views, reference):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the fixed order, by hand: four corners and the centre, then the same five crops of the mirrored image
    r = finish(resized)
    H, W = r.shape[-2:]
    assert (W - size) % 2 == 1, "odd margin: the mirrored centre is then not the mirror of the centre crop"

    def five(im):
        top, left = int(round((H - size) / 2)), int(round((W - size) / 2))
        return [im[:, :size, :size], im[:, :size, W - size:], im[:, H - size:, :size], im[:, H - size:, W - size:],
                im[:, top:top + size, left:left + size]]

    by_hand = five(r) + five(r.flip(-1))
    torch.testing.assert_close(views[5], views[1].flip(-1), rtol=0, atol=0)  # mirrored top-left = top-right, flipped
    assert len(tta.TEN_CROP_NAMES) == 10
    for name, got, want in zip(tta.TEN_CROP_NAMES, views, by_hand):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("width", [60, 62])
def test_five_flip_and_centre_views_are_the_ten_crop_subsets(width):
    img = random_photo(width, 30, seed=1)
    ten = tta.view_transform(16, NORM, mode="ten", resize=20)(img)
    resized_width = T.Resize(20, antialias=True)(img).size[0]   # 40 or 41
    odd_margin = (resized_width - 16) % 2 == 1
    for mode, idx in tta.TEN_CROP_SUBSETS.items():
        views = tta.view_transform(16, NORM, mode=mode, resize=20)(img)
        assert len(views) == tta.VIEW_COUNTS[mode]
        if mode == "flip" and odd_margin:  # torchvision's mirrored centre sits one pixel off the exact mirror
            torch.testing.assert_close(ten[9][..., 1:], views[1][..., :-1], rtol=0, atol=0)
            assert not torch.equal(ten[9], views[1])
            continue
        torch.testing.assert_close(views, ten[idx], rtol=0, atol=0)


def test_centre_view_is_exactly_the_eval_transform():
    img = random_photo(63, 47, seed=2)
    centre = tta.view_transform(32, NORM, mode="center")(img)[0]
    torch.testing.assert_close(centre, data.eval_transform(32, NORM)(img), rtol=0, atol=1e-6)


def test_merge_rules_on_a_hand_computed_example():
    # two views say 80 % class 0, one says 99 % class 1
    probs = [[0.8, 0.2], [0.8, 0.2], [0.01, 0.99]]
    logits = torch.tensor(probs).log().unsqueeze(0)          # [N=1, V=3, K=2]
    mean0 = (0.8 + 0.8 + 0.01) / 3
    g0 = (0.8 * 0.8 * 0.01) ** (1 / 3)
    g1 = (0.2 * 0.2 * 0.99) ** (1 / 3)
    expected_prob = torch.tensor([[mean0, 1 - mean0]])
    expected_geo = torch.tensor([[g0 / (g0 + g1), g1 / (g0 + g1)]])
    torch.testing.assert_close(tta.merge(logits, "prob"), expected_prob)
    torch.testing.assert_close(tta.merge(logits, "geo"), expected_geo)
    # logit averaging equals the renormalised geometric mean: softmax's normaliser is a per-view constant
    torch.testing.assert_close(tta.merge(logits, "logit"), expected_geo)
    # ... and here they disagree: the confident view vetoes under logit/geo averaging
    assert tta.merge(logits, "prob").argmax().item() == 0
    assert tta.merge(logits, "geo").argmax().item() == 1
    with pytest.raises(ValueError):
        tta.merge(logits, "median")


def test_merge_of_identical_views_is_the_single_prediction():
    logits = torch.randn(5, 1, 4).repeat(1, 6, 1)
    for how in tta.MERGES:
        torch.testing.assert_close(tta.merge(logits, how), logits[:, 0].softmax(-1))


def test_blend_follows_fastai_beta():
    plain = torch.tensor([[0.9, 0.1]])
    aug = torch.tensor([[0.3, 0.7]])
    # (1 - beta) * augmented + beta * plain, as fastai's torch.lerp(aug_preds, preds, beta)
    torch.testing.assert_close(tta.blend(plain, aug, 0.25), torch.tensor([[0.75 * 0.3 + 0.25 * 0.9,
                                                                          0.75 * 0.7 + 0.25 * 0.1]]))
    torch.testing.assert_close(tta.blend(plain, aug, 1.0), plain)
    torch.testing.assert_close(tta.blend(plain, aug, 0.0), aug)


class FlipInvariant(nn.Module):
    """A small CNN made mirror-invariant by construction: f(x) = g(x + mirror(x))."""

    def __init__(self, classes=3):
        super().__init__()
        self.g = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
                               nn.Flatten(), nn.LazyLinear(classes))

    def forward(self, x):
        return self.g(x + x.flip(-1))


def photos(n=6, seed=0):
    items = [np.asarray(random_photo(40 + i, 30 + 2 * i, seed + i)) for i in range(n)]
    return data.ImageList(items, [i % 3 for i in range(n)], ["a", "b", "c"])


def test_tta_of_a_transform_invariant_model_equals_the_plain_prediction():
    torch.manual_seed(0)
    net = FlipInvariant()
    images = photos()
    logits, targets = tta.tta_logits(net, images, tta.view_transform(20, NORM, mode="flip"), batch_size=4)
    assert logits.shape == (6, 2, 3) and targets.tolist() == images.targets
    plain = logits[:, 0].softmax(-1)
    for how in tta.MERGES:
        torch.testing.assert_close(tta.merge(logits, how), plain, rtol=1e-5, atol=1e-6)
    # augmentation TTA whose only augmentation is a mirror: blended result equals the plain prediction too
    mirror = T.Compose([data.eval_transform(20, NORM), T.RandomHorizontalFlip(p=1.0)])
    aug_logits, _ = tta.tta_logits(net, images, tta.aug_transform(20, NORM, n=3, augment=mirror), batch_size=4)
    assert aug_logits.shape == (6, 4, 3)
    blended = tta.blend(aug_logits[:, 0].softmax(-1), tta.merge(aug_logits[:, 1:]), beta=0.25)
    torch.testing.assert_close(blended, plain, rtol=1e-5, atol=1e-6)


def test_predict_views_matches_the_model_on_each_view():
    torch.manual_seed(1)
    net = FlipInvariant()
    images = photos(3, seed=5)
    tfm = tta.view_transform(16, NORM, mode="five")
    logits, _ = tta.tta_logits(net, images, tfm, batch_size=2)
    net.eval()
    with torch.no_grad():
        for i in range(3):
            torch.testing.assert_close(logits[i], net(tfm(images.image(i))), rtol=1e-5, atol=1e-6)


def test_tta_table_and_fixed_and_broken():
    targets = torch.tensor([0, 1, 1])
    ten = torch.zeros(3, 10, 2)
    ten[:, :, 1] = 1.0                 # every view says class 1 ...
    ten[1, 4, 1] = -1.0                # ... except item 1's centre view, which says class 0
    table = l06_tta_ensembles.tta_table(ten, targets, hows=("prob",)).set_index("tta")
    assert table.loc["center", "acc"] == pytest.approx(1 / 3)
    assert table.loc["ten", "acc"] == pytest.approx(2 / 3)
    fixed, broken = l06_tta_ensembles.fixed_and_broken(tta.merge(ten[:, [4]]), tta.merge(ten), targets)
    assert fixed == [1] and broken == []


def test_seconds_per_image_is_positive_and_restores_mode():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).train()
    s = tta.seconds_per_image(net, torch.randn(4, 3, 2, 2), views=3, repeats=2)
    assert s > 0 and math.isfinite(s) and net.training


# ---------------------------------------------------------------- verdicts and measured cost

def test_verdict_tta_is_the_log_loss_saved_paired_over_images():
    import torch
    targets = torch.zeros(400, dtype=torch.long)
    plain = torch.tensor([[0.9, 0.1]] * 300 + [[0.2, 0.8]] * 100)
    fixed = plain.clone()
    fixed[300:380] = torch.tensor([0.7, 0.3])                  # TTA fixes 80 of the 100 errors
    v = l06_tta_ensembles.verdict_tta(21, plain, fixed, targets, "ten-crop minus plain")
    saved = 80 / 400 * (math.log(1 / 0.2) - math.log(1 / 0.7))   # -log p(true class), before minus after
    assert v.id == 21 and v.effect == pytest.approx(saved, rel=1e-5) and v.verdict == "supported" and v.n == 400
    assert v.unit == "nats of log-loss" and v.aside.startswith("accuracy +20.0 points")
    assert l06_tta_ensembles.verdict_tta(22, fixed, plain, targets, "x").verdict == "contradicted"


def test_a_tta_that_flips_no_image_is_still_judged_on_its_loss():
    """Accuracy cannot see a gain in confidence; the per-image loss can, in either direction."""
    import torch
    torch.manual_seed(0)
    targets = torch.randint(0, 3, (150,))
    logits = torch.randn(150, 3) + 6.0 * torch.nn.functional.one_hot(targets, 3)
    plain, sharper = logits.softmax(-1), (1.5 * logits).softmax(-1)    # same argmax, more mass on it
    assert (plain.argmax(-1) == targets).all() and torch.equal(sharper.argmax(-1), plain.argmax(-1))
    # with every image right, sharpening raises p(true class) on each: less loss on every image
    expected = float((metrics.item_nll(plain, targets) - metrics.item_nll(sharper, targets)).mean())
    v = l06_tta_ensembles.verdict_tta(22, plain, sharper, targets, "sharper minus plain")
    assert v.effect == pytest.approx(expected, rel=1e-5) and expected > 0
    assert v.verdict == "supported" and v.aside.startswith("accuracy +0.0 points")
    assert l06_tta_ensembles.verdict_tta(22, sharper, plain, targets, "x").verdict == "contradicted"


def test_cost_ratio_of_ten_views_is_about_ten():
    import torch
    from torch import nn
    from tlkit import tta as TT
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2048), nn.ReLU(), nn.Linear(2048, 2))
    cost = TT.cost_ratio(net, net, torch.randn(16, 3, 16, 16), views=10, repeats=4)
    assert cost["low"] <= cost["ratio"] <= cost["high"] and len(cost["slow_s"]) == len(cost["fast_s"]) == 4
    assert 3 < cost["ratio"] < 30                                # ten passes, on a shared machine
    assert "timings of each" in l06_tta_ensembles.cost_sentence("ten-crop", cost, "10x.")
    assert len(TT.timings(net, torch.randn(4, 3, 16, 16), views=2, repeats=3)) == 3


# ---------------------------------------------------------------- cross-fitting (lesson 06's TTA verdicts)

def _separable_features(n_per_class=6, classes=3, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), dim, generator=g) + 3 * torch.nn.functional.one_hot(y, dim).float()
    return FeatureSet(x, y)


def test_fold_heads_hold_out_each_image_from_its_own_head():
    fs = _separable_features()
    x, y = fs.tensors
    heads, fold = lesson.fold_heads(fs, folds=3, seed=1, epochs=2)
    assert len(heads) == 3 and sorted(fold.unique().tolist()) == [0, 1, 2]
    for k in range(3):                                   # stratified: every fold holds every class equally
        assert torch.bincount(y[fold == k], minlength=3).tolist() == [2, 2, 2]
    for k, head in enumerate(heads):                     # head k is exactly a head trained without fold k
        fit = fold != k                                  # (whatever it is shown while training: here other images)
        again = lesson.train_heads(FeatureSet(x[fit], y[fit]), FeatureSet(x[fit][:3], y[fit][:3]), seeds=[1],
                                   epochs=2)[0]
        for a, b in zip(head.state_dict().values(), again.state_dict().values()):
            assert torch.equal(a, b)


def test_fold_heads_refuse_a_class_with_one_image_and_clamp_the_folds(capsys):
    x, y = _separable_features().tensors
    with pytest.raises(ParameterError, match="at least 2 images of every class"):
        lesson.fold_heads(FeatureSet(x[:13], y[:13]))   # class 2 keeps one image
    with pytest.raises(ParameterError, match="at least 2 folds"):
        lesson.fold_heads(FeatureSet(x, y), folds=1)
    heads, fold = lesson.fold_heads(FeatureSet(x[:14], y[:14]), folds=5, epochs=1)   # class 2 has two: 2 folds
    assert len(heads) == 2 and fold.max().item() == 1
    assert "2 folds, not 5" in capsys.readouterr().out


def test_cross_fitted_logits_are_each_images_own_fold_head_on_every_view():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())
    body(torch.randn(8, 3, 8, 8))                        # BatchNorm's running statistics move off their defaults
    heads = [nn.Linear(4, 3) for _ in range(3)]          # left in training mode: the views must run in eval mode
    rng = np.random.default_rng(0)
    images = ImageList([rng.integers(0, 255, (12, 14, 3), dtype=np.uint8) for _ in range(7)], [0, 1, 2, 0, 1, 2, 0],
                       ["a", "b", "c"])
    fold = torch.tensor([2, 0, 1, 1, 0, 2, 0])
    transform = tta.view_transform(8, mode="ten", resize=10)
    logits, targets = lesson.cross_fitted_logits(body, heads, fold, images, transform, progress=False)
    assert logits.shape == (7, 10, 3) and targets.tolist() == images.targets
    assert body.training and heads[0].training          # each module's mode is given back
    with torch.no_grad():
        body.eval()
        for i in range(7):
            expected = heads[fold[i]](body(transform(images.image(i))))
            torch.testing.assert_close(logits[i], expected, atol=1e-5, rtol=1e-5)
    centre_views = torch.stack([transform(images.image(i))[4] for i in range(7)])
    centre = FeatureSet(body(centre_views).detach(), torch.tensor(images.targets))
    assert lesson.own_head_gap(heads, fold, centre, logits[:, 4]) < 1e-5
    assert lesson.own_head_gap(heads, (fold + 1) % 3, centre, logits[:, 4]) > 1e-3   # another fold's head differs


def test_every_image_pools_training_then_validation_images(tmp_path):
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        random_photo(30, 20, seed=i).save(paths[-1])
    splits = Splits(ImageList(paths[:3], [0, 1, 0], ["a", "b"]), ImageList(paths[3:], [1, 0], ["a", "b"]), ["a", "b"])
    assert splits.pooled().items == paths and splits.pooled().targets == [0, 1, 0, 1, 0]
    pool = lesson.every_image(splits, 8)
    assert pool.targets == [0, 1, 0, 1, 0]
    assert [min(pool.image(i).size) for i in range(5)] == [data.eval_resize(8)] * 5
    assert np.array_equal(pool.items[3], data.in_memory(splits.val, data.eval_resize(8)).items[0])
    # decoded lists are named by their cache entries, so the pool is too: its fingerprint reads no pixels,
    # and differs from the files' own
    assert pool.source_digest and pool.fingerprint() != splits.pooled().fingerprint()
    other = lesson.every_image(Splits(splits.val, splits.train, ["a", "b"]), 8)
    assert other.source_digest != pool.source_digest
