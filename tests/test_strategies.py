"""Lesson 01's strategies: shared task data, (a) == (b) from the same seed, what each strategy trains, tables."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.transforms import v2 as T

from tlkit import data, features, models
from tlkit.lessons import l01_transfer as S
from tlkit import tasks
from tlkit.train import Learner


def tiny_task(tmp_path, n_train: int = 16, n_val: int = 8, seed: int = 0) -> tasks.Task:
    """Random 36x36 pictures of 2 classes; EfficientNet-Lite0 at 32 px keeps each run to about a second."""
    rng = np.random.default_rng(seed)
    make = lambda n: data.ImageList([rng.integers(0, 256, (36, 36, 3), dtype=np.uint8) for _ in range(n)],
                                    [i % 2 for i in range(n)], ["x", "y"])
    return tasks.Task("tiny", make(n_train), make(n_val), image_size=32, batch_size=8, seed=seed,
                  cache_dir=tmp_path, norm=models.LITE0_NORM)


def test_in_memory_copy_is_small_and_looks_like_the_original():
    photos = data.get_splits("hymenoptera").val.take([0, 1, 100])
    small = data.in_memory(photos, 64)
    assert small.targets == photos.targets and small.classes == photos.classes
    for i in range(len(photos)):
        original = photos.image(i)
        h, w = small.items[i].shape[:2]
        assert min(h, w) == 64
        assert w / h == pytest.approx(original.width / original.height, rel=0.03)
    tf = data.eval_transform(56)  # resizes to 64, then crops 56
    core_view = photos.with_transform(tf, decode_size=int(56 / 0.875) + 1)  # what data.dataloaders feeds a net
    for i in range(len(photos)):
        assert (tf(small.image(i)) - core_view[i][0]).abs().mean().item() < 1e-3
        assert (tf(small.image(i)) - tf(photos.image(i))).abs().mean().item() < 0.1  # vs a full-size decode


def test_task_subsets_are_stratified_and_shared_by_images_and_features(tmp_path):
    task = tiny_task(tmp_path, n_train=40)
    quarter = task.train_images(0.25)
    assert len(quarter) == 10 and quarter.class_counts() == {"x": 5, "y": 5}
    assert task.train_images(0.25).items[0] is quarter.items[0]  # seeded: the same images every call
    net = models.freeze(task.net())
    train_fs, _ = task.features(net, progress=False)
    direct = features.precompute(net, quarter, cache_dir=tmp_path, progress=False)
    sub = train_fs.subset(0.25, task.seed)
    assert sub.y.tolist() == quarter.targets
    torch.testing.assert_close(sub.x, direct.x, rtol=1e-4, atol=1e-5)


def test_frozen_head_and_precomputed_head_follow_the_same_trajectory(tmp_path):
    """Same seed, same batches, frozen BatchNorm in eval mode: (a) and (b) compute the same function."""
    task = tiny_task(tmp_path)
    a = S.frozen_head(task, epochs=3, lr=1e-2, progress=False)
    b = S.precomputed_head(task, epochs=3, lr=1e-2, progress=False)
    assert a["trainable_params"] == b["trainable_params"] == 1280 * 2 + 2
    for column in ("train_loss", "val_loss"):
        np.testing.assert_allclose(a["history"][column], b["history"][column], rtol=1e-3, atol=1e-4)
    assert a["acc"] == b["acc"]
    assert b["precompute_seconds"] > 0 and not b["from_cache"]
    again = S.precomputed_head(task, epochs=3, lr=1e-2, progress=False)
    assert again["from_cache"] and again["precompute_seconds"] == b["precompute_seconds"]
    np.testing.assert_allclose(again["history"]["val_loss"], b["history"]["val_loss"], rtol=1e-6)


def test_each_strategy_trains_what_it_says(tmp_path):
    task = tiny_task(tmp_path)
    reference = task.net()
    total = models.count_params(reference, trainable=False)
    last_group = models.count_params(reference.groups[-2], trainable=False)
    head = 1280 * 2 + 2
    rows = {
        "c": S.last_blocks(task, epochs=1, progress=False),
        "c'": S.last_blocks(task, epochs=1, hidden=16, progress=False),
        "d": S.full_finetune(task, epochs=1, progress=False),
        "e": S.scratch(task, epochs=1, progress=False),
    }
    batchnorm = lambda module: sum(p.numel() for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                                   for p in m.parameters(recurse=False))
    # (c) and (d) keep the ImageNet BatchNorm layers frozen
    assert rows["c"]["trainable_params"] == last_group - batchnorm(reference.groups[-2]) + head
    assert rows["c'"]["trainable_params"] == rows["c"]["trainable_params"] - head + 1280 * 16 + 16 + 16 * 2 + 2
    assert rows["d"]["trainable_params"] == total - batchnorm(reference)
    assert rows["e"]["trainable_params"] == total
    assert rows["c"]["strategy"] == "c: last blocks" and rows["c'"]["strategy"] == "c': last blocks + hidden"
    for row in rows.values():
        assert 0 <= row["acc"] <= 1 and row["seconds"] > 0 and row["train_images"] == 16 and row["epochs"] == 1
    table = S.results_table(rows.values())
    assert "history" not in table.columns and len(table) == 4


def test_fraction_argument_trains_on_the_stratified_subset(tmp_path):
    task = tiny_task(tmp_path, n_train=40)
    assert S.precomputed_head(task, epochs=1, fraction=0.5, progress=False)["train_images"] == 20
    assert S.frozen_head(task, epochs=1, fraction=0.25, progress=False)["train_images"] == 10


def test_pretrained_and_scratch_nets_differ_but_heads_start_equal(tmp_path):
    task = tiny_task(tmp_path)
    pre, rand = task.net(), task.net(pretrained=False)
    assert pre.weights_id() != rand.weights_id()
    assert torch.equal(pre.head.weight, rand.head.weight)  # the seed fixes the new head


def fake_run(accs: dict, calls: list, name: str):
    def run(fraction):
        calls.append((name, fraction))
        return {"acc": accs[fraction], "seconds": 1.0, "train_images": int(100 * fraction)}
    return run


def test_fraction_sweep_reuses_known_rows_and_finds_winners():
    calls = []
    runs = {"precomputed_head": fake_run({0.1: 0.8, 1.0: 0.85}, calls, "b"),
            "full_finetune": fake_run({0.1: 0.7, 1.0: 0.9}, calls, "d")}
    reuse = [{"strategy": "d: full fine-tune", "fraction": 1.0, "acc": 0.93, "seconds": 5.0, "train_images": 100}]
    sweep = S.fraction_sweep(None, [0.1, 1.0], runs, reuse)
    assert ("d", 1.0) not in calls and len(calls) == 3
    assert sweep.set_index(["strategy", "fraction"]).loc[("d: full fine-tune", 1.0), "acc"] == 0.93
    assert S.winners(sweep) == {0.1: "b: precomputed head", 1.0: "d: full fine-tune"}


def test_winner_ties_go_to_the_cheaper_run():
    sweep = pd.DataFrame([{"strategy": "d", "fraction": 0.5, "acc": 0.9, "seconds": 9.0, "train_images": 5},
                          {"strategy": "b", "fraction": 0.5, "acc": 0.9, "seconds": 1.0, "train_images": 5}])
    assert S.winners(sweep) == {0.5: "b"}


def test_advice_table_has_the_four_cells_with_measured_winners():
    def sweep(best_little, best_lots):
        rows = []
        for f, best in ((0.1, best_little), (1.0, best_lots)):
            for s in ("b: precomputed head", "c: last blocks", "d: full fine-tune"):
                rows.append({"strategy": s, "fraction": f, "acc": 0.9 if s == best else 0.5, "seconds": 1.0,
                             "train_images": int(50 * f)})
        return pd.DataFrame(rows)
    table = S.advice_table(sweep("b: precomputed head", "c: last blocks"),
                           sweep("c: last blocks", "d: full fine-tune"))
    assert table[["data", "amount"]].values.tolist() == [["similar", "little"], ["similar", "lots"],
                                                         ["dissimilar", "little"], ["dissimilar", "lots"]]
    assert table["measured winner"].tolist() == ["b: precomputed head", "c: last blocks", "c: last blocks",
                                                 "d: full fine-tune"]
    assert table["train_images"].tolist() == [5, 50, 5, 50]
    assert all(table["textbook"].str.len() > 0)
    # each sweep brings its own fractions: little and lots are its smallest and largest
    other = S.advice_table(sweep("b: precomputed head", "c: last blocks"),
                           sweep("c: last blocks", "d: full fine-tune").replace({"fraction": {1.0: 0.4}}))
    assert other["fraction"].tolist() == [0.1, 1.0, 0.1, 0.4]


def tiny_net() -> models.Net:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    return models.Net(body, nn.Linear(32, 2), [body, nn.Identity()], 32, data.DEFAULT_NORM, "tiny", False)


def test_view_spread_is_zero_without_augmentation_and_positive_with_it():
    rng = np.random.default_rng(0)
    images = data.ImageList([rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(6)], [0, 1] * 3,
                            ["a", "b"])
    eval_tf = data.eval_transform(16)
    net = tiny_net()
    fixed = S.view_spread(net, images, eval_tf, eval_tf, n_images=6, n_views=3)
    assert fixed["within_image"] == pytest.approx(0.0, abs=1e-6) and fixed["between_images"] > 0
    augmented = S.view_spread(net, images, data.train_transform(16), eval_tf, n_images=6, n_views=3)
    assert augmented["within_image"] > 0
    assert augmented["ratio"] == pytest.approx(augmented["within_image"] / augmented["between_images"])
    assert augmented == S.view_spread(net, images, data.train_transform(16), eval_tf, n_images=6, n_views=3)


def test_freeze_batchnorm_keeps_statistics_through_training_mode(tmp_path):
    net = models.freeze_batchnorm(models.unfreeze(tiny_task(tmp_path).net()))
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [m.running_mean.clone() for m in bns]
    net.train()
    assert bns and not any(m.training for m in bns)
    assert net.body.conv_stem.weight.requires_grad
    with torch.no_grad():
        net(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert all(torch.equal(m.running_mean, b) for m, b in zip(bns, before))


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_split_body_cuts_the_forward_pass_without_changing_it(backbone):
    net = models.create(backbone, num_classes=2, pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = net.body(x)
        for group in (1, 2):
            prefix, suffix = models.split_body(net, group)
            assert torch.allclose(suffix(prefix(x)), whole, atol=1e-5)
            first = next(iter(net.groups[group].parameters()))          # the cut is where the group starts
            assert any(p is first for p in suffix.parameters()) and all(p is not first for p in prefix.parameters())
    with pytest.raises(ValueError, match="cut at 1..2"):
        models.split_body(net, 3)


def test_last_blocks_on_cached_activations_takes_the_same_steps_as_on_images(tmp_path):
    task = tiny_task(tmp_path, n_train=16, n_val=8)
    on_images = S.last_blocks(task, epochs=2, lr=1e-3, fraction=0.5, head_epochs=1)
    cached = S.last_blocks(task, epochs=2, lr=1e-3, fraction=0.5, head_epochs=1, cached=True)
    assert cached["cached"] and cached["train_images"] == on_images["train_images"] == 8
    assert cached["trainable_params"] == on_images["trainable_params"]
    for column in ("train_loss", "val_loss"):
        np.testing.assert_allclose(cached["history"][column], on_images["history"][column], rtol=1e-4)
    np.testing.assert_array_equal(cached["correct"], on_images["correct"])
    with pytest.raises(ValueError, match="augmentation"):
        S.last_blocks(task, epochs=1, augment=True, cached=True)


def test_runs_without_curves_score_the_validation_set_once_and_train_the_same_weights(tmp_path):
    task = tiny_task(tmp_path, n_train=16, n_val=8)
    runs = {}
    for curves in (True, False):
        learn = Learner(models.unfreeze(task.net()), task.loaders(), progress=False)
        runs[curves] = (S._fit(learn, 3, 1e-3, one_cycle=True, curves=curves)[0], learn)
    (every, with_net), (once, without_net) = runs[True], runs[False]
    assert every["val_loss"].notna().all() and once["val_loss"].isna().tolist() == [True, True, False]
    np.testing.assert_allclose(once["train_loss"], every["train_loss"], rtol=1e-6)
    assert once["val_loss"].iloc[-1] == pytest.approx(every["val_loss"].iloc[-1], rel=1e-6)
    assert once["val_acc"].iloc[-1] == every["val_acc"].iloc[-1]
    for a, b in zip(with_net.net.parameters(), without_net.net.parameters()):
        assert torch.equal(a, b)
    assert np.isnan(S.last_blocks(task, epochs=2, cached=True)["best_acc"])        # one epoch scored: no best
    frozen = S.frozen_head(task, epochs=2)
    assert frozen["best_acc"] == frozen["history"]["val_acc"].max() >= frozen["acc"]


def test_over_seeds_averages_each_images_correctness_over_independent_runs(tmp_path):
    task = tiny_task(tmp_path, n_train=24)
    run = lambda t: S.precomputed_head(t, epochs=2, fraction=0.5)
    merged = S.over_seeds(run, task, [0, 1, 2])
    singles = [run(task.with_seed(s)) for s in (0, 1, 2)]
    np.testing.assert_allclose(merged["correct"], np.mean([r["correct"] for r in singles], axis=0))
    assert merged["acc"] == pytest.approx(np.mean([r["acc"] for r in singles]))
    assert merged["acc_by_seed"] == [r["acc"] for r in singles] and merged["seeds"] == [0, 1, 2]
    assert len({tuple(r["history"]["val_loss"].round(6)) for r in singles}) > 1   # the seeds really differ
    with pytest.raises(ValueError, match="at least one seed"):
        S.over_seeds(run, task, [])


def test_micro_batches_leave_a_fine_tune_with_frozen_batchnorm_as_it_was(tmp_path):
    """(d) keeps BatchNorm frozen, so pieces of 4 give the sums of whole batches of 8 (lesson 1's prose)."""
    import dataclasses
    task = tiny_task(tmp_path)
    whole = S.full_finetune(task, epochs=1, head_epochs=1, progress=False)
    pieces = S.full_finetune(dataclasses.replace(task, micro_batch=4), epochs=1, head_epochs=1, progress=False)
    np.testing.assert_allclose(pieces["losses"], whole["losses"], rtol=1e-4, atol=1e-6)
    # (e) trains its BatchNorm layers, which normalise each piece on its own: the pieces were used
    scratch = [S.scratch(t, epochs=1, progress=False)["losses"]
               for t in (task, dataclasses.replace(task, micro_batch=4))]
    assert np.abs(scratch[0] - scratch[1]).max() > 1e-3
