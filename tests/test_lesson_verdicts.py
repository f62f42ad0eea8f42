"""Each lesson's verdict functions on synthetic measurements with a known answer."""
import re

import numpy as np
import pandas as pd
import pytest
import torch

from tlkit import schedules, snapshots
from tlkit.claims import CONTRADICTED, NOT_SHOWN, SUPPORTED
from tlkit.lessons import l01_transfer as S
from tlkit.lessons import l02_augment
from tlkit.lessons import l03_lr_finder
from tlkit.lessons import l04_sgdr

B, C, D = S.NAMES["precomputed_head"], S.NAMES["last_blocks"], S.NAMES["full_finetune"]


def correct(rng, n, acc):
    return (rng.random(n) < acc).astype(float)


def sweep(rng, accs, n=400, images=(24, 244)):
    """A sweep table: accs[fraction][strategy] -> accuracy; one row per (strategy, fraction) with `correct`
    and `losses` whose mean is 1.05 - accuracy (so a gain of g points of accuracy saves g/100 nats)."""
    rows = []
    for (fraction, by_strategy), count in zip(accs.items(), images):
        for strategy, acc in by_strategy.items():
            rows.append({"strategy": strategy, "fraction": fraction, "train_images": count, "acc": acc,
                         "seconds": 1.0, "correct": correct(rng, n, acc), "losses": rng.exponential(1.05 - acc, n)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("lots_gain, verdict", [(0.25, SUPPORTED), (0.0, NOT_SHOWN), (-0.25, CONTRADICTED)])
def test_more_data_is_the_gain_with_lots_minus_the_gain_with_little(lots_gain, verdict):
    rng = np.random.default_rng(0)
    table = sweep(rng, {0.1: {B: 0.7, C: 0.7}, 1.0: {B: 0.7, C: 0.7 + lots_gain}}, n=2000)
    v = S.verdict_more_data(table)
    assert v.verdict == verdict and v.effect == pytest.approx(lots_gain, abs=0.04) and v.unit == "nats of log-loss"
    accuracy = float(re.search(r"^accuracy ([-+.\d]+) points", v.aside).group(1))
    assert accuracy == pytest.approx(100 * lots_gain, abs=4)


def test_the_table_verdict_weighs_the_advised_strategy_against_the_others():
    rng = np.random.default_rng(1)
    similar = sweep(rng, {0.1: {B: 0.9, C: 0.6, D: 0.6}, 1.0: {B: 0.6, C: 0.9, D: 0.6}}, n=1000)
    dissimilar = sweep(rng, {0.1: {B: 0.6, C: 0.9, D: 0.6}, 0.5: {B: 0.6, C: 0.6, D: 0.9}}, n=1000)
    assert S.verdict_table(similar, dissimilar).verdict == SUPPORTED   # the advice wins every cell
    reversed_advice = sweep(rng, {0.1: {B: 0.6, C: 0.9, D: 0.9}, 1.0: {B: 0.9, C: 0.6, D: 0.9}}, n=1000)
    assert S.verdict_table(reversed_advice, reversed_advice.assign(
        fraction=reversed_advice["fraction"].replace(1.0, 0.5))).verdict == CONTRADICTED


def test_own_hidden_layer_is_judged_against_a_margin():
    rng = np.random.default_rng(2)
    kept = {"correct": correct(rng, 3000, 0.9)}
    assert S.verdict_own_hidden(kept, {"correct": correct(rng, 3000, 0.89)}).verdict == SUPPORTED
    assert S.verdict_own_hidden(kept, {"correct": correct(rng, 3000, 0.7)}).verdict == CONTRADICTED


def aug_run(rng, seeds, n, acc, loss):
    """A compare_augmentations-like result: per part, [seeds, images] correctness and exponential log-losses."""
    return {"seeds": list(range(seeds)),
            "correct_by_seed": {part: (rng.random((seeds, n)) < acc[part]).astype(float) for part in acc},
            "loss_by_seed": {part: rng.exponential(loss[part], (seeds, n)) for part in loss}}


def test_overfitting_verdict_is_the_drop_of_the_loss_gap_with_the_accuracy_gap_beside_it():
    rng = np.random.default_rng(3)
    plain = aug_run(rng, 3, 3000, {"train": 1.0, "val": 0.7}, {"train": 0.05, "val": 1.2})
    augmented = aug_run(rng, 3, 3000, {"train": 0.85, "val": 0.75}, {"train": 0.4, "val": 0.7})
    v = l02_augment.verdict_fights_overfitting(plain, augmented)
    # gaps: 1.2 - 0.05 = 1.15 without, 0.7 - 0.4 = 0.3 with augmentation: 0.85 nats less over-fitting
    assert v.verdict == SUPPORTED and v.effect == pytest.approx(0.85, abs=0.06) and v.runs == 3
    accuracy_gap = float(re.search(r"^the same gap in accuracy ([-+.\d]+) points", v.aside).group(1))
    assert v.unit == "nats of log-loss" and accuracy_gap == pytest.approx(20, abs=2.5)   # (1 - .7) - (.85 - .75)
    assert l02_augment.verdict_fights_overfitting(augmented, plain).verdict == CONTRADICTED
    same = aug_run(rng, 3, 3000, {"train": 1.0, "val": 0.7}, {"train": 0.05, "val": 1.2})
    assert l02_augment.verdict_fights_overfitting(plain, same).verdict == NOT_SHOWN


def test_geometry_and_colour_verdicts_read_the_per_image_log_loss():
    rng = np.random.default_rng(4)
    parts = {"train": 1.0, "val": 0.8, "lit": 0.6}
    plain = aug_run(rng, 2, 3000, parts, {"train": 0.1, "val": 1.0, "lit": 1.5})
    geometric = aug_run(rng, 2, 3000, parts, {"train": 0.3, "val": 0.6, "lit": 1.2})
    coloured = aug_run(rng, 2, 3000, parts, {"train": 0.3, "val": 0.6, "lit": 0.7})
    v7 = l02_augment.verdict_geometry_helps(geometric, plain)
    assert v7.verdict == SUPPORTED and v7.effect == pytest.approx(0.4, abs=0.05) and v7.runs == 2
    assert l02_augment.verdict_geometry_helps(plain, geometric).verdict == CONTRADICTED
    v8 = l02_augment.verdict_colour_robustness(coloured, geometric)   # lighting adds 0.6 nats without, 0.1 with
    assert v8.verdict == SUPPORTED and v8.effect == pytest.approx(0.5, abs=0.07)
    assert l02_augment.verdict_colour_robustness(geometric, coloured).verdict == CONTRADICTED
    assert "averaged" not in v8.what
    drawn = l02_augment.verdict_colour_robustness({**coloured, "lighting_draws": 8}, geometric)
    assert "averaged over 8 random changes of each image" in drawn.what and drawn.effect == v8.effect


def test_worker_verdict_reads_the_waiting_per_step_from_the_events():
    steps = np.arange(20, dtype=float)
    slow = {"events": np.stack([steps, steps + 0.010, steps + 0.5], 1).tolist()}    # 10 ms waiting per step
    fast = {"events": np.stack([steps, steps + 0.001, steps + 0.5], 1).tolist()}
    v = l02_augment.verdict_workers({"0 workers": slow, "2 workers": fast})
    assert v.verdict == SUPPORTED and v.effect == pytest.approx(0.009) and "+9.00 ms" in v.sentence()


@pytest.mark.parametrize("decades, verdict", [([1.0, 1.2, 0.9], SUPPORTED), ([-1.0, -1.2, -0.9], SUPPORTED),
                                              ([1.0, -1.0, 0.1], NOT_SHOWN)])
def test_a_move_of_the_suggestion_counts_in_either_direction(decades, verdict):
    v = l03_lr_finder.verdict_rerun_after_change(pd.DataFrame({"decades": decades}))
    assert v.verdict == verdict and v.effect >= 0


def test_min10_vs_steep_compares_held_out_losses_per_image():
    rng = np.random.default_rng(4)
    base = rng.random((3, 500))
    assert l03_lr_finder.verdict_min10_vs_steep(base, base + 0.2).verdict == SUPPORTED
    assert l03_lr_finder.verdict_min10_vs_steep(base + 0.2, base).verdict == CONTRADICTED


def test_sgdr_knobs_match_torch_and_a_wrong_epoch_count_fails():
    sgdr = schedules.sgdr(4, 1, cycle_mult=2)
    assert l04_sgdr.verdict_cycle_knobs(sgdr, 10, 15).verdict == SUPPORTED
    assert l04_sgdr.verdict_cycle_knobs(sgdr, 10, 14).verdict == CONTRADICTED


def test_wider_valleys_is_a_ratio_over_seeds():
    assert l04_sgdr.verdict_wider_valleys([0.3, 0.25, 0.35], [0.1, 0.08, 0.11]).verdict == SUPPORTED
    assert l04_sgdr.verdict_wider_valleys([0.1, 0.3, 0.1], [0.1, 0.1, 0.3]).verdict == NOT_SHOWN


def test_reloaded_weights_predict_the_same(tmp_path):
    from tlkit.data import DataLoaders, make_loader
    from tlkit.train import Learner
    torch.manual_seed(0)
    x, y = torch.randn(200, 5), torch.randint(0, 3, (200,))   # 200 items: enough to clear a 95 % bar
    ds = torch.utils.data.TensorDataset(x, y)
    learn = Learner(torch.nn.Linear(5, 3), DataLoaders(make_loader(ds, 16, True), make_loader(ds, 200, False), list("abc"),
                                                       None), progress=False)
    learn.fit(1, 0.1)
    path = snapshots.save_snapshot(learn.net, tmp_path / "w.pt")
    assert l04_sgdr.verdict_reload(learn, path).verdict == SUPPORTED
    with torch.no_grad():
        learn.net.weight.mul_(-1)                    # the weights in memory moved on: predictions differ
    assert l04_sgdr.verdict_reload(learn, path).verdict != SUPPORTED


def test_more_data_verdict_resamples_the_seeds_when_the_sweep_has_them():
    """Seeds that disagree (gains of +0.25 and -0.15) average to a 'settled' +0.05 over images, not over runs."""
    rng = np.random.default_rng(5)
    table = sweep(rng, {0.1: {B: 0.7, C: 0.7}, 1.0: {B: 0.7, C: 0.7}}, n=2000)
    gains = [0.25, -0.15, 0.25, -0.15]
    by_seed = {}
    for (strategy, fraction), base in (((B, 0.1), 0.7), ((C, 0.1), 0.7), ((B, 1.0), 0.7)):
        by_seed[(strategy, fraction)] = np.stack([rng.exponential(1.05 - base, 2000) for _ in gains])
    by_seed[(C, 1.0)] = np.stack([rng.exponential(1.05 - 0.7 - g, 2000) for g in gains])   # saves g nats
    table["loss_by_seed"] = [by_seed[(r.strategy, r.fraction)] for r in table.itertuples()]
    v = S.verdict_more_data(table)
    assert v.effect == pytest.approx(np.mean(gains), abs=0.03) and v.verdict == NOT_SHOWN and v.n == 2000
    assert v.runs == 4
    collapsed = table.assign(losses=[a.mean(axis=0) for a in table["loss_by_seed"]]).drop(columns="loss_by_seed")
    assert S.verdict_more_data(collapsed).verdict == SUPPORTED      # what one interval over images would claim


def test_sgdr_vs_step_is_the_loss_saved_and_resamples_the_seeds():
    rng = np.random.default_rng(6)
    acc = np.stack([correct(rng, 1000, 0.8) for _ in range(4)])
    step = np.stack([rng.exponential(0.40, 1000) for _ in range(4)])
    steady = np.stack([rng.exponential(0.35, 1000) for _ in range(4)])
    v = l04_sgdr.verdict_sgdr_beats_step(steady, step, acc, acc)
    assert v.verdict == SUPPORTED and v.effect == pytest.approx(0.05, abs=0.015) and v.runs == 4
    assert v.unit == "nats of log-loss" and v.aside.startswith("accuracy +0.0 points")
    assert l04_sgdr.verdict_sgdr_beats_step(step, steady, acc, acc).verdict == CONTRADICTED
    swings = np.stack([rng.exponential(m, 1000) for m in (0.15, 0.6, 0.15, 0.6)])   # mean 0.375, runs +-0.225
    v = l04_sgdr.verdict_sgdr_beats_step(swings, step, acc, acc)
    assert v.verdict == NOT_SHOWN and v.n == 1000


def test_the_table_verdict_is_decided_by_its_weakest_cell():
    """Three cells that follow the advice by 30 points cannot hide a fourth that goes against it."""
    rng = np.random.default_rng(7)
    similar = sweep(rng, {0.1: {B: 0.9, C: 0.6, D: 0.6}, 1.0: {B: 0.6, C: 0.9, D: 0.6}}, n=1000)
    dissimilar = sweep(rng, {0.1: {B: 0.6, C: 0.9, D: 0.6}, 0.5: {B: 0.9, C: 0.9, D: 0.6}}, n=1000)
    v = S.verdict_table(similar, dissimilar)
    assert v.verdict == CONTRADICTED and "dissimilar + lots" in v.what.split(" (the weakest")[0]
    assert v.effect == pytest.approx(-0.3, abs=0.04) and v.n == 1000
