"""The full recipe on a tiny generated folder dataset, the result helpers, and the saved final model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.metrics import confusion_matrix, recall_score

from tlkit import data, features, metrics, models
from tlkit.lessons import l08_recipe as recipe

SIZE = 32


def _make_folder(root, per_class=10, split=False):
    """Two colour classes of noisy 48x40 photos ("reddish" vs "bluish"), optionally under train/ and val/."""
    rng = np.random.default_rng(0)
    for c, (name, channel) in enumerate([("bluish", 2), ("reddish", 0)]):
        for i in range(per_class):
            part = ("val" if i % 4 == 0 else "train") if split else None
            folder = root / part / name if part else root / name
            folder.mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 120, size=(40, 48, 3), dtype=np.uint8)
            img[..., channel] += 120
            Image.fromarray(img).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    """`fine_tune` run once on a folder without a split (the user-folder case), every step at 32 px."""
    root = _make_folder(tmp_path_factory.mktemp("tiny_folder"), per_class=10)
    r = recipe.fine_tune(str(root), image_size=SIZE, batch_size=8, head_epochs=2, aug_cycles=1, all_cycles=2,
                         head_lr_iters=20, all_lr_iters=8, tta_mode="flip", progress=False,
                         cache_dir=tmp_path_factory.mktemp("features"))
    return r, root


def test_fine_tune_records_every_step_in_order(tiny_recipe):
    r, _ = tiny_recipe
    steps = r.acc_after_step
    assert [s["step"] for s in steps] == list(recipe.STEP_NAMES.values())
    assert all(0.0 <= s["acc"] <= 1.0 and 0.0 <= s["val_acc"] <= 1.0 for s in steps)
    # a folder without a split: seeded stratified 80/20, then as many test images as validation ones from training
    assert len(r.splits.val) == 4 and len(r.test) == 4 and len(r.splits.train) == 12
    used = [set(r.splits.train.items), set(r.splits.val.items), set(r.test.items)]
    assert all(not (a & b) for i, a in enumerate(used) for b in used[i + 1:])
    # whole-network fit with cycle_mult=2 and 2 cycles lasts 1 + 2 epochs
    assert len(r.learn.history) == 1 + 3
    # every step after the probe is read against the model it started from, on the same test images
    for s in r.steps[1:]:
        assert s.change[1] <= s.change[0] <= s.change[2]
        assert s.change[0] == pytest.approx(s.acc - s.start_acc)


def test_network_holds_the_kept_model(tiny_recipe):
    """The network's accuracy on validation and test images is that of the last stage validation kept."""
    r, _ = tiny_recipe
    kept = [s for s in r.steps if s.kept and s.step != recipe.STEP_NAMES["tta"]][-1]
    tfm = data.eval_transform(SIZE, r.net.norm)
    r.net.eval()
    for images, acc in [(r.splits.val, kept.val_acc), (r.test, float(np.mean(r.net_correct)))]:
        x = torch.stack([tfm(images.image(i)) for i in range(len(images))])
        with torch.no_grad():
            assert (r.net(x).argmax(1) == torch.tensor(images.targets)).float().mean().item() == pytest.approx(acc)
    assert r.net_correct.tolist() == kept.correct.tolist()


def test_every_step_is_kept_or_not_by_its_image_by_image_validation_evidence(tiny_recipe):
    """Each step's fixed/broke counts are over the same validation images as the model it started from:
    their net share is the difference of the two validation accuracies, and it alone decides `kept`."""
    r, _ = tiny_recipe
    start = r.steps[0]
    assert start.keep is None
    for s in r.steps[1:]:
        assert s.keep.n == len(r.splits.val)
        assert (s.keep.fixed - s.keep.broke) / s.keep.n == pytest.approx(s.val_acc - start.val_acc, abs=1e-6)
        assert s.kept == s.keep.kept
        if s.kept:
            start = s


def test_flip_tta_averages_the_two_mirrored_probabilities(tiny_recipe):
    r, _ = tiny_recipe
    tfm = data.eval_transform(SIZE, r.net.norm)
    r.net.eval()
    for images, acc in [(r.splits.val, r.steps[-1].val_acc), (r.test, r.steps[-1].acc)]:
        probs, y = r.tta_probs("flip", images=images)
        x = torch.stack([tfm(images.image(i)) for i in range(len(images))])
        with torch.no_grad():
            ref = (r.net(x).softmax(1) + r.net(x.flip(-1)).softmax(1)) / 2
        torch.testing.assert_close(probs, ref, atol=1e-5, rtol=1e-4)
        assert acc == pytest.approx((ref.argmax(1) == y).float().mean().item())


def test_head_trained_on_features_is_the_nets_head(tmp_path):
    """Training on precomputed features updates the Net's own head: evaluating images end to end agrees."""
    root = _make_folder(tmp_path / "split", per_class=8, split=True)
    r = recipe.Recipe(str(root), image_size=SIZE, batch_size=8, progress=False, cache_dir=tmp_path / "f")
    assert len(r.splits.val) == 2 and len(r.test) == 2   # half of the folder's own val/ images are the test split
    step = r.train_head(2, 1e-2)
    assert step.val_acc == pytest.approx(r.learn.evaluate()["acc"])
    assert step.acc == pytest.approx(float(np.mean(r.test_correct())))
    assert r.plan == [("train_head", {"epochs": step.settings["best_epoch"], "lr": 1e-2})]


METHOD_STEP = {"probe": "probe", "train_head": "head", "train_head_augmented": "augment", "train_all": "unfreeze"}


def test_retrain_on_all_replays_the_plan_on_train_plus_val(tiny_recipe):
    r, _ = tiny_recipe
    final = r.retrain_on_all()
    assert len(final.splits.train) == len(r.splits.train) + len(r.splits.val)
    assert final.test is None and not set(final.splits.train.items) & set(r.test.items)
    assert [m for m, _ in final.plan] == [m for m, _ in r.plan]
    assert [s["step"] for s in final.acc_after_step] == [recipe.STEP_NAMES[METHOD_STEP[m]] for m, _ in r.plan
                                                         if m in METHOD_STEP]
    # the replay stops each stage at the best epoch chosen on validation
    for (m, kw), s in zip([p for p in r.plan if p[0] in METHOD_STEP and p[0] != "probe"],
                          [s for s in r.steps if s.kept and s.settings.get("best_epoch")]):
        assert kw.get("stop_after", kw.get("epochs")) == s.settings["best_epoch"]
    # the reused features are exactly those a fresh pretrained body computes for the merged images
    assert final.body_id == r.body_id
    fresh = models.create("efficientnet_lite0", 2)
    merged = final.splits.train.with_transform(data.eval_transform(SIZE, fresh.norm))
    x, y = features.compute_features(fresh, merged, progress=False)
    torch.testing.assert_close(final.train_fs.x, x, atol=1e-5, rtol=1e-4)
    assert final.train_fs.y.tolist() == y.tolist()


def test_bn_freeze_keeps_imagenet_statistics_while_convolutions_train(tiny_recipe):
    r, _ = tiny_recipe
    pretrained = models.create("efficientnet_lite0", 2).body.state_dict()
    tuned = {k: v.cpu() for k, v in r.net.body.state_dict().items()}
    bn_keys = [k for k in tuned if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "weight", "bias")
               and k.rsplit(".", 1)[0] in {n for n, m in r.net.body.named_modules()
                                            if isinstance(m, torch.nn.BatchNorm2d)}]
    assert len(bn_keys) > 100
    assert all(torch.equal(tuned[k], pretrained[k]) for k in bn_keys)
    # the convolutions trained, unless validation undid the whole-network stage (then they are the pretrained ones)
    unfreeze = next(s for s in r.steps if s.step == recipe.STEP_NAMES["unfreeze"])
    assert torch.equal(tuned["conv_head.weight"], pretrained["conv_head.weight"]) != unfreeze.kept


def test_saved_model_reloads_and_predicts_the_same_classes(tiny_recipe, tmp_path):
    r, root = tiny_recipe
    path = recipe.save_model(tmp_path / "final.pt", r.net, r.classes, r.preprocessing)
    bundle = recipe.load_model(path)
    assert bundle.classes == r.classes and bundle.preprocessing["image_size"] == SIZE
    for k, v in r.net.state_dict().items():
        assert torch.equal(bundle.net.state_dict()[k], v.cpu()), k
    files = sorted(str(p) for p in root.rglob("*.png"))[:7]
    before = recipe.predict_files(recipe.ModelBundle(r.net, r.classes, bundle.preprocessing), files)
    after = recipe.predict_files(bundle, files)
    assert after["predicted"].tolist() == before["predicted"].tolist()
    np.testing.assert_allclose(after["probability"], before["probability"], rtol=1e-5)
    # and they are the network's own predictions on the eval transform
    x = torch.stack([data.eval_transform(SIZE, r.net.norm)(Image.open(f).convert("RGB")) for f in files])
    r.net.eval()
    with torch.no_grad():
        assert after["class_index"].tolist() == r.net(x).argmax(1).tolist()
    # images held in memory (the embedded digits) are predicted exactly as the same pixels read from files
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    in_memory = recipe.predict_files(bundle, arrays)
    assert in_memory["class_index"].tolist() == after["class_index"].tolist()
    np.testing.assert_allclose(in_memory["probability"], after["probability"], rtol=1e-6)
    assert in_memory["file"].tolist()[:2] == ["array 0", "array 1"] and set(in_memory["path"]) == {""}


def test_save_model_keeps_a_hidden_head(tmp_path):
    net = models.create("efficientnet_lite0", 3, pretrained=False, hidden=16, dropout=0.3)
    path = recipe.save_model(tmp_path / "m.pt", net, ["a", "b", "c"], {"image_size": 32, "norm": net.norm})
    bundle = recipe.load_model(path)
    assert recipe._head_spec(bundle.net.head) == {"hidden": 16, "dropout": 0.3}
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    torch.testing.assert_close(bundle.net(x), net(x))


# ---------------------------------------------------------------- result helpers against references

def _random_predictions(n=200, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(n, k, generator=g).mul(2).softmax(1)
    targets = torch.randint(0, k, (n,), generator=g)
    return probs, targets


def test_most_confused_matches_sklearn_confusion_matrix():
    probs, targets = _random_predictions()
    preds = probs.argmax(1)
    classes = ["a", "b", "c", "d"]
    table = recipe.most_confused(targets, preds, classes)
    cm = confusion_matrix(targets, preds, labels=range(4))
    off = {(classes[a], classes[p]): cm[a, p] for a in range(4) for p in range(4) if a != p and cm[a, p]}
    assert {(r.actual, r.predicted): r.count for r in table.itertuples()} == off
    assert table["count"].is_monotonic_decreasing
    assert (recipe.most_confused(targets, preds, classes, min_count=cm.max() + 1)).empty


def test_top_losses_are_the_largest_cross_entropies():
    probs, targets = _random_predictions()
    table = recipe.top_losses(probs, targets, list("abcd"), k=5)
    ref = F.cross_entropy(probs.log(), targets, reduction="none")
    np.testing.assert_allclose(table["loss"], ref.topk(5).values.numpy(), rtol=1e-5)
    assert table["index"].tolist() == ref.topk(5).indices.tolist()
    row = table.iloc[0]
    assert row.probability == pytest.approx(probs[row["index"]].max().item())
    assert row.p_actual == pytest.approx(np.exp(-row.loss), rel=1e-5)


def test_per_class_accuracy_is_sklearn_recall():
    probs, targets = _random_predictions(k=3)
    preds = probs.argmax(1)
    table = recipe.per_class_accuracy(targets, preds, ["x", "y", "z"]).set_index("class")
    recall = recall_score(targets, preds, average=None, labels=[0, 1, 2])
    np.testing.assert_allclose(table.loc[["x", "y", "z"], "acc"], recall)
    assert table["images"].sum() == len(targets)
    assert table["acc"].is_monotonic_increasing


def test_waterfall_changes_add_up_to_the_total_gain():
    steps = [{"step": "a", "acc": 0.80}, {"step": "b", "acc": 0.85}, {"step": "c", "acc": 0.84}]
    table = recipe.waterfall_table(steps, baseline=0.5)
    np.testing.assert_allclose(table["change"], [0.30, 0.05, -0.01], atol=1e-12)
    assert table["change"].sum() == pytest.approx(0.84 - 0.5)
    ax = recipe.plot_waterfall(table, baseline=0.5)
    assert len(ax.patches) == 3
    with_ci = recipe.waterfall_table(steps, baseline=0.5, n=100)
    for row in with_ci.itertuples():
        _, lo, hi = metrics.proportion_interval(round(row.acc * 100), 100)
        assert (row.acc_lo, row.acc_hi) == pytest.approx((lo, hi))
    recipe.plot_waterfall(with_ci, baseline=0.5)
    import matplotlib.pyplot as plt
    plt.close("all")


def test_waterfall_reads_a_step_against_the_model_it_started_from():
    """A step validation did not keep is shown with its own change; the next step starts from the kept model."""
    steps = [{"step": "probe", "acc": 0.80, "start_acc": None, "kept": True, "change_ci": None},
             {"step": "b", "acc": 0.75, "start_acc": 0.80, "kept": False, "change_ci": [-0.1, 0.0]},
             {"step": "c", "acc": 0.86, "start_acc": 0.80, "kept": True, "change_ci": [0.01, 0.11]}]
    table = recipe.waterfall_table(steps, baseline=0.5, n=50)
    np.testing.assert_allclose(table["change"], [0.30, -0.05, 0.06], atol=1e-12)
    assert table["kept"].tolist() == [True, False, True]
    assert np.isnan(table["change_lo"].iloc[0]) and table["change_hi"].iloc[2] == 0.11
    ax = recipe.plot_waterfall(table, baseline=0.5)
    assert len(ax.patches) == 3
    import matplotlib.pyplot as plt
    plt.close("all")


def test_pick_lr():
    class Result:
        def __init__(self, **lrs):
            self.lrs = lrs

        def lr(self, rule):
            return self.lrs.get(rule)

    assert recipe.pick_lr(Result(valley=3e-3)) == 3e-3
    assert recipe.pick_lr(Result(valley=None, min10=2e-3)) == 2e-3
    assert recipe.pick_lr(Result(), fallback=5e-4) == 5e-4
    assert recipe.pick_lr(Result(valley=1e-1), ceiling=1e-2) == 1e-2


def test_image_size_table_reads_headers(tmp_path):
    root = _make_folder(tmp_path / "imgs", per_class=3)
    splits = data.get_splits(str(root), val_fraction=0.34)
    table = recipe.image_size_table(splits.train, n=10)
    assert len(table) == len(splits.train)
    assert set(table["width"]) == {48} and set(table["height"]) == {40}
    assert isinstance(table, pd.DataFrame)


def test_plot_lr_sweep_shows_the_whole_smoothed_curve():
    """A trained network's sweep starts low: the axis must still reach the curve's top."""
    import matplotlib.pyplot as plt
    from tlkit import lr_finder
    lrs = np.geomspace(1e-6, 1e-1, 30)
    losses = 0.05 + 0.5 * (lrs / 1e-1) ** 0.7          # low and flat, then rising tenfold
    smoothed = lr_finder.smooth_losses(losses, 0.7)
    result = lr_finder.LRFinderResult(lrs, losses, smoothed, lr_finder.suggest(lrs, smoothed, warn=False),
                                      False, "completed", 30, 0.7, skip_start=2, skip_end=2)
    ax = recipe.plot_lr_sweep(result)
    lo, hi = ax.get_ylim()
    assert lo <= smoothed[2:-2].min() and hi >= smoothed[2:-2].max()
    plt.close("all")


RATES = {"forward": 0.01, "head only": 0.012, "whole network": 0.03}


@settings(max_examples=200, deadline=None)
@given(budget=st.floats(1, 1e4), available=st.integers(1, 20000), n_val=st.integers(1, 500), n_test=st.integers(0, 500),
       aug=st.integers(0, 4), unf=st.integers(0, 8), scale=st.floats(0.01, 10))
def test_work_plan_fits_the_budget_or_uses_the_floor(budget, available, n_val, n_test, aug, unf, scale):
    rates = {k: v * scale for k, v in RATES.items()}
    plan = recipe.WorkPlan.size(budget, rates, available, n_val, n_test, aug, unf, min_images=32)
    floor = min(available, 32)
    assert floor <= plan.feature_images <= available and floor <= plan.body_images <= available
    if plan.feature_images > floor and plan.body_images > floor:
        assert plan.estimate_s <= budget * (1 + 1e-9) or plan.fixed_s > budget
    # a larger budget never buys fewer images of either kind
    more = recipe.WorkPlan.size(budget * 2, rates, available, n_val, n_test, aug, unf, min_images=32)
    assert more.feature_images >= plan.feature_images and more.body_images >= plan.body_images


def test_work_plan_uses_every_image_when_they_fit_and_says_so():
    plan = recipe.WorkPlan.size(1e4, RATES, 400, 100, 100, 1, 1)
    assert plan.feature_images == plan.body_images == 400 and "every one of the 400" in plan.describe()
    # 5000 images, 60 s: evaluation first, then features (one forward each) before the body epochs
    plan = recipe.WorkPlan.size(60, RATES, 5000, 200, 300, 1, 1)
    assert plan.fixed_s == pytest.approx(0.01 * (200 * 5 + 300 * 5))
    rest = 60 - plan.fixed_s
    assert plan.feature_images == int(rest / 2 / 0.01) and plan.body_images == int((rest - plan.feature_images * 0.01) / 0.042)
    assert f"{plan.feature_images:,} of 5,000" in plan.describe() and f"stratified {plan.body_images:,}" in plan.describe()
    done = recipe.WorkPlan.size(60, RATES, 5000, 200, 300, 1, 1, features_done=1000)
    assert done.feature_images == 1000 and done.body_images == int(rest / 0.042)


def test_fit_budget_caps_training_images_stratified_and_the_retrain_replays_it(tmp_path):
    root = _make_folder(tmp_path / "folder", per_class=40)
    r = recipe.Recipe(str(root), image_size=SIZE, batch_size=8, progress=False, cache_dir=tmp_path / "features")
    available = len(r.splits.train)
    trainable = [p.requires_grad for p in r.net.parameters()]
    plan = r.fit_budget(1e-6, 1, 1)    # nothing fits: both kinds of step fall back to the floor
    assert plan.available == available and plan.feature_images == plan.body_images == 16
    assert len(r.splits.train) == 16 and r.splits.train.class_counts() == {"bluish": 8, "reddish": 8}
    assert len(r.dls.train.dataset) == 16 and r.learn.dls is r.dls
    assert r.plan[0] == ("limit_body_images", {"count": 16})
    assert [p.requires_grad for p in r.net.parameters()] == trainable   # timing left the freezing as it was
    r.precompute()
    assert len(r.train_fs) == 16
    r.probe()
    final = r.retrain_on_all(eval_images=8)
    assert len(final.train_fs) == 16 + len(r.splits.val)
    assert len(final.dls.train.dataset) == 16   # as many body images, drawn from training + validation images


def _jpeg_folder(root, shape, per_class=6):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["bluish", "reddish"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            small = rng.integers(0, 120, size=(shape[0] // 16, shape[1] // 16, 3), dtype=np.uint8)
            small[..., 2 - 2 * c] += 120
            Image.fromarray(small).resize((shape[1], shape[0])).save(root / name / f"{i}.jpg")
    return root


def test_large_photos_decode_at_the_size_their_views_need(tmp_path):
    """A camera photo is decoded at reduced scale for showing and for training views, never at full size."""
    r = recipe.Recipe(str(_jpeg_folder(tmp_path / "big", (1200, 1600))), image_size=SIZE, batch_size=4,
                      progress=False, cache_dir=tmp_path / "features")
    need = data.decode_size(SIZE)
    for images in (r.splits.train, r.splits.val, r.test):
        shorter = min(images.image(0).size)
        assert need <= shorter < 1200 / 4            # JPEG draft: 1/8 scale here (150 px), not 1200 px


@pytest.mark.parametrize("size, shape", [(SIZE, (1200, 1600)), (56, (128, 160))])
def test_predict_files_sees_what_the_recipe_evaluated(tmp_path, size, shape):
    """predict_files on the test files gives the network's output on the recipe's own evaluation view of them.

    At 56 px on 128-px photos the evaluation resize (64) and the decode size (65) fall on both sides of
    JPEG's 1/2 scale, so a decode at the wrong size would show."""
    r = recipe.Recipe(str(_jpeg_folder(tmp_path / "photos", shape)), image_size=size, batch_size=4,
                      progress=False, cache_dir=tmp_path / "features")
    files = list(r.test.items[:4])
    bundle = recipe.ModelBundle(r.net, r.classes, {"image_size": size, "crop_pct": data.CROP_FRACTION,
                                                   "norm": r.net.norm})
    got = recipe.predict_files(bundle, files)
    view = data.eval_transform(size, r.net.norm)
    x = torch.stack([view(r.test.image(i)) for i in range(len(files))])
    with torch.no_grad():
        expected = r.net.eval()(x).softmax(1)
    np.testing.assert_allclose(got["probability"], expected.max(1).values.numpy(), rtol=1e-5)
