"""Lesson 08's new parts on tiny data: the held-out test split, best-epoch restore, undoing a step that
validation rejects, the probe written into the head, and the two verdicts' arithmetic."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from PIL import Image
from torch import nn

from tlkit import data, features, metrics
from tlkit.train import Learner
from tlkit.lessons import l08_recipe as recipe

SIZE = 32


def _folder(root, per_class=12, split=False, n_classes=2):
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        for i in range(per_class):
            part = ("val" if i % 3 == 0 else "train") if split else None
            folder = (root / part if part else root) / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 100, size=(36, 40, 3), dtype=np.uint8)
            img[..., c % 3] += 150
            Image.fromarray(img).save(folder / f"{c}_{i}.png")
    return root


@pytest.mark.parametrize("split", [True, False])
def test_test_split_is_disjoint_stratified_and_seeded(tmp_path, split):
    root = _folder(tmp_path / "f", per_class=12, split=split)
    splits = data.get_splits(str(root), seed=0)
    rest, test = recipe.hold_out_test(splits, 0.5, seed=0)
    again = recipe.hold_out_test(splits, 0.5, seed=0)[1]
    assert test.items == again.items
    parts = [set(rest.train.items), set(rest.val.items), set(test.items)]
    assert sum(map(len, parts)) == len(splits.train) + len(splits.val)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    counts = test.class_counts().values()
    assert max(counts) - min(counts) <= 1   # stratified: as many of each class as the total allows
    if split:   # half of the folder's own val/ images; training untouched
        assert rest.train.items == splits.train.items and len(test) == len(splits.val) // 2
    else:       # from the training images, as many as the validation images
        assert rest.val.items == splits.val.items and len(test) == len(splits.val)


def _feature_learner(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 8, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(60, generator=g) > 0).long()
    train = features.FeatureSet(x[:40], y[:40], "t", ["a", "b"])
    val = features.FeatureSet(x[40:], y[40:], "v", ["a", "b"])
    torch.manual_seed(seed)
    head = nn.Linear(8, 2)
    return Learner(head, features.feature_loaders(train, val, 8, seed=seed), progress=False), head


def test_best_epoch_restores_the_weights_of_the_best_validation_epoch():
    learn, head = _feature_learner()
    keeper = recipe.BestEpoch(head)
    # a large constant LR makes validation accuracy move from epoch to epoch
    hist = learn.fit(6, 0.5, callbacks=[keeper])
    best = keeper.restore(hist)
    ranked = hist.sort_values(["val_acc", "val_loss", "epoch"], ascending=[False, True, True])
    assert best == int(ranked.iloc[0]["epoch"])
    after = learn.evaluate()
    assert after["acc"] == pytest.approx(hist["val_acc"].iloc[best - 1])
    assert after["loss"] == pytest.approx(hist["val_loss"].iloc[best - 1], rel=1e-5)


def test_a_best_epoch_fit_read_back_from_the_fit_cache_restores_the_same_epoch(tmp_path):
    from tlkit import fit_cache
    fit_cache.use(tmp_path)
    try:
        runs = []
        for _ in range(2):
            learn, head = _feature_learner()
            keeper = recipe.BestEpoch(head)
            hist = learn.fit(6, 0.5, callbacks=[keeper])
            runs.append((keeper.restore(hist), {k: v.clone() for k, v in head.state_dict().items()},
                         keeper.best_correct, hist))
            if not runs[1:]:
                (entry,) = tmp_path.glob("*.pt")
                written = entry.stat().st_mtime_ns
    finally:
        fit_cache.use(None)
    (best, weights, correct, hist), (best_again, weights_again, correct_again, hist_again) = runs
    assert entry.stat().st_mtime_ns == written and hist_again["seconds"].tolist() == hist["seconds"].tolist()
    assert best == best_again and correct.tolist() == correct_again.tolist()
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)


def test_a_stage_that_validation_rejects_is_undone_but_shown(tmp_path):
    """A harmful stage (a huge LR) is measured, shown with its change, and the network goes back to before it."""
    root = _folder(tmp_path / "f", per_class=10, split=True)
    r = recipe.Recipe(str(root), image_size=SIZE, batch_size=8, progress=False, cache_dir=tmp_path / "c")
    r.precompute()
    r.train_head(3, 1e-2)
    before = {k: v.clone() for k, v in r.net.state_dict().items()}
    kept_before = r.net_correct.copy()
    # a kept model that got every validation image right: no stage can fix any, so it must be undone
    r._kept_val_correct = np.ones(len(r.splits.val), bool)
    step = r.train_head_augmented(1, 1e-2)
    assert step.kept is False and step.change is not None and step.acc is not None
    assert all(torch.equal(before[k], v) for k, v in r.net.state_dict().items())
    assert r.net_correct.tolist() == kept_before.tolist()
    assert [m for m, _ in r.plan] == ["train_head"]   # the retrained model will not replay it


def test_probe_written_into_the_head_predicts_as_scikit_learn(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    root = _folder(tmp_path / "f", per_class=12, split=True, n_classes=3)
    r = recipe.Recipe(str(root), image_size=SIZE, batch_size=8, progress=False, cache_dir=tmp_path / "c")
    step = r.probe(as_head=True)
    C = step.settings["C"]
    assert C in set(np.logspace(-3, 1, 9))
    x, y = r.train_fs.x.numpy(), r.train_fs.y.numpy()
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=C, max_iter=3000).fit(scaler.transform(x), y)
    expected = ref.predict(scaler.transform(r.test_fs.x.numpy())) == r.test_fs.y.numpy()
    assert step.correct.tolist() == expected.tolist()
    # the network with the probe in its head predicts the same from images end to end
    assert r.test_correct().tolist() == expected.tolist()
    assert r.plan == [("probe", {"C": C, "as_head": True})]


def _one_hot_split(k, errors, right=10):
    """Targets and one-hot predictions: `right` correct per class, then (actual, predicted) errors."""
    t = [c for c in range(k) for _ in range(right)] + [a for a, _ in errors]
    p = [c for c in range(k) for _ in range(right)] + [q for _, q in errors]
    return np.array(t), np.eye(k)[p]


def test_confusion_verdict_counts_errors_in_the_pairs_the_other_split_names():
    classes = ["a", "b", "c"]     # 6 ordered pairs: each split names half of them, 3
    vt, vp = _one_hot_split(3, [(0, 1)] * 4 + [(2, 1)])
    tt, tp = _one_hot_split(3, [(0, 1)] * 3 + [(1, 2), (2, 0)])
    out = recipe.verdict_confusion(vt, vp, tt, tp, classes)
    # validation names a->b (4), c->b (1), then a->c (no errors: ties broken by pair order);
    # test names a->b (3), b->c (1), c->a (1)
    assert out["pairs"] == {"named by validation": ["a -> b", "c -> b", "a -> c"],
                            "named by test": ["a -> b", "b -> c", "c -> a"]}
    # 3 of the 5 test errors fall in validation's pairs, 4 of the 5 validation errors in test's
    assert (out["hits"], out["errors"], out["bar"]) == (7, 10, pytest.approx(3 / 6))
    share, lo, hi = metrics.proportion_interval(7, 10)
    v = out["verdict"]
    assert v.id == 23 and v.n == 10
    assert (v.effect, *v.ci) == pytest.approx((share - 0.5, lo - 0.5, hi - 0.5))
    # one error cannot show a pattern: no verdict
    none = recipe.verdict_confusion(*_one_hot_split(3, [(0, 1)]), *_one_hot_split(3, []), classes)
    assert none["verdict"] is None and none["errors"] == 1


@pytest.mark.parametrize("k, named, bar", [(2, 1, 1 / 2), (5, 10, 10 / 20), (6, 10, 10 / 30), (10, 10, 10 / 90)])
def test_a_matrix_names_ten_pairs_at_most_half_of_them(k, named, bar):
    classes = [f"c{i}" for i in range(k)]
    t, p = _one_hot_split(k, [(0, 1), (1, 0)])
    out = recipe.verdict_confusion(t, p, t, p, classes, names=("half A", "half B"))
    assert out["bar"] == pytest.approx(bar)
    assert len(out["pairs"]["named by half A"]) == named
    # errors a->b and b->a on both halves: with one named pair only one of them is in it
    assert (out["hits"], out["errors"]) == (4 if named > 1 else 2, 4)
    assert "half A names them for the half B errors" in out["verdict"].what


def test_many_class_confusion_finds_the_two_classes_that_look_alike(tmp_path):
    # classes 0 and 3 share a colour channel (c % 3) and are otherwise the same noise: only they get mixed up
    root = _folder(tmp_path / "f", per_class=20, n_classes=4)
    out = recipe.many_class_confusion(str(root), image_size=SIZE, seed=0, folds=4)
    assert len(out["targets"]) == len(out["probs"]) == 80 and out["classes"] == [f"class{c}" for c in range(4)]
    assert out["pairs"]["named by half A"][0] in ("class0 -> class3", "class3 -> class0")
    v = out["verdict"]
    assert out["errors"] >= 10 and v.verdict == "supported"
    assert v.ci[0] > 0 and out["bar"] == pytest.approx(6 / 12)


def test_many_class_confusion_refuses_two_classes(tmp_path):
    root = _folder(tmp_path / "f", per_class=6, n_classes=2)
    with pytest.raises(ValueError, match="at least 3 classes"):
        recipe.many_class_confusion(str(root), image_size=SIZE, seed=0)


def test_confusion_pairs_rank_by_probability_when_there_are_no_errors():
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.0, 0.4], [0.2, 0.7, 0.1]])
    assert recipe.confusion_pairs([0, 0, 1], probs, 3)[0] == (0, 2)


def test_retrain_verdict_is_the_test_log_loss_saved_paired_over_images():
    targets = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    train_only = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.4, 0.6], [0.5, 0.5]] * 2)
    retrained = torch.tensor([[0.8, 0.2], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]] * 2)
    v = recipe.verdict_retrain(retrained, train_only, targets, 100, 150)
    saved = np.mean([np.log(0.8 / 0.6), np.log(0.8 / 0.7), np.log(0.6 / 0.4), np.log(0.6 / 0.5)])
    assert v.id == 24 and v.n == 8 and v.effect == pytest.approx(saved, rel=1e-5)
    assert "(150" in v.what and "(100)" in v.what and v.aside.startswith("accuracy +50.0 points")
    assert v.unit == "nats of log-loss"


def test_a_step_is_kept_when_its_net_gain_is_more_than_one_standard_error():
    def decision(fixed, broke, same=20):
        start = [False] * fixed + [True] * broke + [True] * same
        new = [True] * fixed + [False] * broke + [True] * same
        return recipe.keep_decision(new, start)

    assert decision(2, 0).kept and decision(4, 1).kept and decision(9, 4).kept
    assert not decision(1, 0).kept          # one image is luck
    assert not decision(3, 1).kept          # z = 2 / sqrt(4) = 1: not more than one standard error
    assert not decision(0, 0).kept and decision(0, 0).z == 0.0
    assert not decision(0, 5).kept
    assert "fixed 2 and broke 0 of 22 images: a net gain of +2, more than" in decision(2, 0).describe()
    assert "not more than one standard error (2.0)" in decision(3, 1).describe()
    assert "no net gain (-2)" in decision(1, 3).describe()
    with pytest.raises(ValueError, match="different validation images"):
        recipe.keep_decision([True, False], [True])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_keep_decision_z_is_the_paired_mean_over_its_standard_error_under_no_difference(pairs):
    """z from the counts equals mean(d) / sqrt(mean(d^2) / n) over the per-image differences d in {-1, 0, 1}."""
    new, start = (np.array(col) for col in zip(*pairs))
    d = new.astype(float) - start.astype(float)
    out = recipe.keep_decision(new, start)
    reference = 0.0 if not d.any() else d.mean() / np.sqrt((d ** 2).mean() / d.size)
    assert out.z == pytest.approx(reference, rel=1e-12, abs=1e-12)
    assert out.kept == (out.z > 1)
    swapped = recipe.keep_decision(start, new)
    assert swapped.z == pytest.approx(-out.z, abs=1e-12) and not (out.kept and swapped.kept)

