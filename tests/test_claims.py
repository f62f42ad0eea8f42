"""Verdicts follow from intervals: known effects on synthetic data give the verdict they must, intervals
cover the true difference at about their nominal rate, and the prose is generated from the numbers."""
import numpy as np
import pytest

from tlkit import claims
from tlkit.claims import CONTRADICTED, NOT_SHOWN, SUPPORTED
from tlkit import metrics


def paired_correct(n, acc_a, acc_b, rng, shared=0.6):
    """Per-image correctness of two models on the same images: a shared difficulty plus a per-model effect."""
    easy = rng.random(n) < shared
    a = np.where(easy, True, rng.random(n) < (acc_a - shared) / (1 - shared))
    b = np.where(easy, True, rng.random(n) < (acc_b - shared) / (1 - shared))
    return a, b


def test_the_registry_holds_the_29_claims_with_sources():
    assert sorted(claims.CLAIMS) == list(range(1, 30))
    assert all(c.text and c.source and c.lesson in {f"0{i}" for i in range(1, 9)} for c in claims.CLAIMS.values())


@pytest.mark.parametrize("low, high, verdict", [(0.01, 0.2, SUPPORTED), (-0.2, -0.01, CONTRADICTED),
                                                (-0.1, 0.1, NOT_SHOWN), (0.0, 0.1, NOT_SHOWN)])
def test_verdict_is_where_the_interval_lies(low, high, verdict):
    assert claims.verdict_of(low, high) == verdict


@pytest.mark.parametrize("acc_a, acc_b, verdict", [(0.92, 0.80, SUPPORTED), (0.85, 0.85, NOT_SHOWN),
                                                   (0.78, 0.92, CONTRADICTED)])
def test_known_effects_on_synthetic_data_get_their_verdict(acc_a, acc_b, verdict):
    a, b = paired_correct(2000, acc_a, acc_b, np.random.default_rng(1))
    v = claims.compare_accuracy(3, a, b, "A minus B")
    assert v.verdict == verdict and v.n == 2000
    assert v.ci[0] <= v.effect <= v.ci[1]


def test_the_paired_interval_covers_the_true_difference_at_about_95_percent():
    rng = np.random.default_rng(0)
    true_diff, hits, trials = 0.04, 0, 300
    for t in range(trials):
        a, b = paired_correct(300, 0.88, 0.88 - true_diff, rng)
        _, low, high = metrics.paired_bootstrap(a, b, n_boot=1000, seed=t)
        hits += low <= true_diff <= high
    assert 0.90 <= hits / trials <= 0.99   # binomial sd at 300 trials is 1.3 points


def test_the_paired_interval_matches_a_normal_approximation():
    a, b = paired_correct(5000, 0.9, 0.87, np.random.default_rng(3))
    d = a.astype(float) - b.astype(float)
    effect, low, high = metrics.paired_bootstrap(a, b)
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert effect == pytest.approx(d.mean())
    assert low == pytest.approx(d.mean() - 1.96 * se, abs=0.15 * se * 1.96)
    assert high == pytest.approx(d.mean() + 1.96 * se, abs=0.15 * se * 1.96)


def test_seed_repeats_use_a_student_t_interval():
    from scipy import stats
    diffs = [0.05, 0.02, 0.04, 0.03]
    effect, low, high = metrics.mean_interval(diffs)
    half = stats.t.ppf(0.975, 3) * np.std(diffs, ddof=1) / 2
    assert (effect, low, high) == pytest.approx((0.035, 0.035 - half, 0.035 + half))
    assert claims.compare_seeds(14, diffs, "SGDR minus step").verdict == SUPPORTED
    assert claims.compare_seeds(14, [0.05, -0.04, 0.01], "SGDR minus step").verdict == NOT_SHOWN


def test_speed_ratio_interval_and_verdict():
    rng = np.random.default_rng(0)
    slow, fast = 5.0 + rng.normal(0, 0.1, 8), 1.0 + rng.normal(0, 0.05, 8)
    v = claims.compare_speed(2, slow, fast, "head epochs on images vs on cached features")
    assert v.verdict == SUPPORTED and v.effect == pytest.approx(slow.mean() / fast.mean() - 1)
    assert "x speed-up" in v.sentence() and f"{slow.mean() / fast.mean():.2f}" in v.sentence()
    same = claims.compare_speed(2, 1.0 + rng.normal(0, 0.05, 8), 1.0 + rng.normal(0, 0.05, 8), "same")
    assert same.verdict == NOT_SHOWN


def test_the_sentence_is_generated_from_the_verdict():
    v = claims.judge(10, 0.02, (-0.013, 0.052), 153, "the augmented model minus the plain one")
    text = v.sentence("augmentation reduces over-fitting.")
    assert "+2.0 points" in text and "-1.3 to +5.2" in text and "not shown at this size" in text
    assert "n = 153" in text and "would need about n = " in text and "The notes say" in text
    contra = claims.judge(13, -0.05, (-0.08, -0.02), 40, "how far the suggestion moved")
    assert "contradicted" in contra.sentence() and "would need" not in contra.sentence()


def test_report_records_one_entry_per_claim(monkeypatch):
    monkeypatch.delitem(claims.RECORDED, "claims", raising=False)   # the dict `tlkit.record` writes into
    claims.report(claims.judge(2, 0.5, (0.2, 0.8), 5, "x", unit="x", scale=1.0))
    claims.report(claims.judge(1, 0.3, (0.1, 0.4), 153, "y"))
    claims.report(claims.judge(2, 0.6, (0.3, 0.9), 5, "x again", unit="x", scale=1.0))   # a rerun replaces
    entries = claims.RECORDED["claims"]
    assert [e["id"] for e in entries] == [1, 2] and entries[1]["what"] == "x again"
    assert set(entries[0]) >= {"id", "verdict", "effect", "ci", "n", "what"} and entries[0]["ci"] == [0.1, 0.4]


def test_unknown_claims_and_bad_inputs_are_refused():
    with pytest.raises(KeyError, match="no claim 30"):
        claims.judge(30, 0.1, (0, 1), 1, "x")
    with pytest.raises(ValueError, match="equal-shape"):
        metrics.paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="at least two images"):
        metrics.bootstrap_sum([(1.0, np.zeros((2, 3, 4)))])
    with pytest.raises(ValueError, match="low > high"):
        claims.verdict_of(0.2, 0.1)


def test_bootstrap_sum_resamples_independent_sets_independently():
    rng = np.random.default_rng(0)
    train_gap = rng.random(400) < 0.3          # e.g. correct_noaug - correct_aug on training images
    val_gap = rng.random(150) < 0.05
    effect, low, high = metrics.bootstrap_sum([(1.0, train_gap), (-1.0, val_gap)])
    assert effect == pytest.approx(train_gap.mean() - val_gap.mean())
    se = np.sqrt(train_gap.var(ddof=1) / 400 + val_gap.var(ddof=1) / 150)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_proportion_interval_is_clopper_pearson():
    share, low, high = metrics.proportion_interval(240, 240)
    assert share == 1 and high == 1 and low == pytest.approx(0.025 ** (1 / 240))
    assert claims.share_above(17, 240, 240, 0.95, "same predictions").verdict == SUPPORTED
    assert claims.share_above(17, 228, 240, 0.99, "same predictions").verdict == CONTRADICTED
    _, low0, _ = metrics.proportion_interval(0, 10)
    assert low0 == 0


def test_summary_table_lists_each_recorded_verdict():
    entries = [claims.judge(1, 0.3, (0.2, 0.4), 153, "head minus scratch").record_entry(),
               claims.judge(3, -0.01, (-0.05, 0.03), 153, "gain with more data").record_entry()]
    table = claims.summary_table(entries).splitlines()
    assert len(table) == 4 and "| 1 |" in table[2] and "**supported**" in table[2]
    assert "+30.0 (+20.0 to +40.0) points" in table[2] and "**not shown at this size**" in table[3]


def test_a_verdict_at_the_edge_of_its_interval_says_it_is_fragile():
    edge = claims.judge(14, 0.026, (0.003, 0.05), 240, "SGDR minus step")
    assert edge.verdict == SUPPORTED and "clears zero by only 0.3 points" in edge.sentence()
    assert "would settle it with room to spare" in edge.sentence()
    firm = claims.judge(1, 0.45, (0.36, 0.54), 153, "head minus scratch")
    assert firm.fragile() == "" and "another seed" not in firm.sentence()


def runs_and_images(run_offsets, n_images=150, effect=0.05, seed=0):
    """`[runs, images]` paired differences: a true effect, one offset per training run, image noise."""
    rng = np.random.default_rng(seed)
    image_noise = rng.normal(0, 0.5, (len(run_offsets), n_images))
    return effect + np.asarray(run_offsets, dtype=float)[:, None] + image_noise


def test_identical_runs_give_the_image_only_interval():
    row = runs_and_images([0.0])[0]
    _, low1, high1 = metrics.bootstrap_sum([(1.0, row)])
    _, low2, high2 = metrics.bootstrap_sum([(1.0, np.stack([row, row, row]))])
    assert (high2 - low2) == pytest.approx(high1 - low1, rel=0.1)


def test_runs_that_disagree_widen_the_interval_past_what_images_alone_say():
    """Two runs of +0.35 and -0.25 around a 0.05 effect: over images alone the mean looks settled; over runs it is not."""
    d = runs_and_images([0.35, -0.25, 0.35, -0.25], n_images=400)
    _, low_images, _ = metrics.bootstrap_sum([(1.0, d.mean(axis=0))])
    effect, low, high = metrics.bootstrap_sum([(1.0, d)])
    assert low_images > 0 > low and effect == pytest.approx(d.mean())
    assert claims.compare_accuracy(3, d + 1, np.ones_like(d), "x").n == 400      # n counts images, not runs


def test_runs_and_images_interval_covers_the_true_effect_at_about_its_rate():
    hits = 0
    for trial in range(200):
        rng = np.random.default_rng(1000 + trial)
        d = runs_and_images(rng.normal(0, 0.08, 6), n_images=100, seed=trial)
        _, low, high = metrics.bootstrap_sum([(1.0, d)], n_boot=1000, seed=trial)
        hits += low <= 0.05 <= high
    assert 0.85 <= hits / 200 <= 0.995


def test_a_settled_verdict_on_few_runs_is_called_provisional():
    settled = claims.judge(10, 0.08, (0.03, 0.13), 153, "x", runs=2)
    assert "provisional" in settled.sentence() and "2 training runs" in settled.sentence()
    assert "provisional" not in claims.judge(10, 0.08, (0.03, 0.13), 153, "x", runs=claims.MIN_RUNS).sentence()
    assert "provisional" not in claims.judge(10, 0.08, (-0.03, 0.13), 153, "x", runs=2).sentence()   # not settled
    assert "provisional" not in claims.judge(1, 0.4, (0.3, 0.5), 153, "x").sentence()   # not a repeated-run design
    rows = np.stack([np.ones(50), np.ones(50)])
    assert claims.compare_accuracy(7, rows, rows * 0, "x").runs == 2
    assert claims.weakest_part(6, {"a": claims.judge(6, 0.1, (0.05, 0.15), 50, "a", runs=3),
                                   "b": claims.judge(6, 0.2, (0.1, 0.3), 50, "b", runs=3)}).runs == 3


def test_a_loss_verdict_is_the_other_loss_minus_this_one_and_shows_small_values_in_three_decimals():
    rng = np.random.default_rng(0)
    other = rng.exponential(0.4, 300)
    better = other - 0.03 + rng.normal(0, 0.01, 300)          # 0.03 nats less on every image, give or take
    v = claims.compare_loss(21, better, other, "x")
    assert v.effect == pytest.approx(float(np.mean(other - better))) and v.verdict == SUPPORTED and v.n == 300
    assert v.ci[0] < 0.03 < v.ci[1]
    assert f"**{v.effect:+.3f} nats of log-loss**" in v.sentence()
    assert claims.compare_loss(21, other, better, "x").verdict == CONTRADICTED
    assert claims.accuracy_aside([1, 1, 0, 1], [1, 0, 0, 1]).startswith("accuracy +25.0 points (95 % interval")


def test_a_second_measure_is_shown_beside_the_verdict_and_kept_in_the_run_report():
    rng = np.random.default_rng(1)
    other = rng.exponential(0.4, 200)
    loss_runs = np.stack([other - 0.05, other - 0.04])             # [runs, images]: two seeds, both better
    v = claims.compare_loss(10, loss_runs, np.stack([other, other]), "gap",
                            aside=claims.points_aside("the same gap in accuracy", 0.02, -0.01, 0.05))
    assert v.runs == 2 and v.n == 200
    assert v.sentence().split("→ ", 1)[1].startswith(f"**{v.verdict}**. Beside it, the same gap in accuracy "
                                                     "+2.0 points (95 % interval -1.0 to +5.0).")
    entry = v.record_entry()
    assert entry["aside"] == v.aside and "(beside it, the same gap in accuracy +2.0" in claims.summary_table([entry])
    assert "beside it" not in claims.summary_table([claims.judge(1, 0.3, (0.2, 0.4), 9, "x").record_entry()])
    decided = claims.weakest_part(6, {"a": v, "b": claims.judge(10, 0.5, (0.4, 0.6), 200, "b", unit=v.unit,
                                                                 scale=1.0)})
    assert decided.aside == v.aside                                    # the deciding part keeps its aside
