"""Lesson 06 executes in the quick preset: TTA, ensembles of really different members, weight averaging,
measured costs, and the verdicts on claims 20-22."""
import pytest

from support import recorded_claims

pytestmark = pytest.mark.notebook


def test_claims_20_to_22_are_recorded(lesson_metrics):
    """Whether TTA or the ensemble helps is what the verdicts report; only their bookkeeping is checked here."""
    m = lesson_metrics("06")
    verdicts = recorded_claims(m, [20, 21, 22])
    # TTA is judged on every image the run keeps (training and validation, cross-fitted), not the validation split
    assert verdicts[21]["n"] == verdicts[22]["n"] == m["n_tta_images"] == 600
    # five stratified folds of 120, and every image's centre view took its own fold's head (float rounding apart)
    assert m["cross_fit_fold_sizes"] == [120] * 5 and m["cross_fit_own_head_gap"] < 1e-3
    # by the log-loss it saves over the plain centre crop, on the same images as the table
    assert verdicts[21]["effect"] == pytest.approx(m["loss_single"] - m["loss_tencrop_tta"], abs=1e-5)
    assert verdicts[22]["effect"] == pytest.approx(m["loss_single"] - m["loss_aug_tta"], abs=1e-5)
    members = m["members_table"]
    assert verdicts[20]["n"] >= 500                   # digits, half held out: ~900 validation images
    # the recorded gain is the M-member ensemble's accuracy minus the mean member's (same images)
    assert verdicts[20]["effect"] == pytest.approx(members[-1]["acc"] - members[-1]["single_acc_mean"], abs=2e-4)


def test_costs_are_measured_with_intervals(lesson_metrics):
    """Ten views cost several single passes, M networks several networks: the timings' intervals show it."""
    m = lesson_metrics("06")
    low, high = m["tta_cost_interval"]
    assert low <= m["tta_cost_ratio"] <= high and low > 2
    members = m["members_table"]
    assert [row["members"] for row in members] == list(range(1, len(members) + 1)) and len(members) >= 2
    for row in members:
        assert row["cost_low"] <= row["cost_ratio"] <= row["cost_high"]
    assert members[-1]["cost_low"] > 1.5              # M >= 2 networks are timed at more than one


def test_average_outputs_not_weights(lesson_metrics):
    m = lesson_metrics("06")
    # networks from different random inits: averaging weights collapses towards chance (10 classes)
    assert m["acc_weight_avg_scratch"] < m["acc_scratch_members_min"] - 0.3
    # fine-tunes of one start (a soup) and snapshots of one run: averaging weights keeps a working network
    assert m["acc_weight_avg_finetuned_digits"] >= m["acc_finetuned_digits_members_min"] - 0.05
    assert m["acc_weight_avg_snapshots"] >= m["acc_snapshot_members_min"] - 0.05


def test_tta_bookkeeping_is_consistent(lesson_metrics):
    m = lesson_metrics("06")
    # 10 texture classes: the cross-fitted heads on the pretrained body are far above chance (0.1)
    assert m["acc_single"] >= 0.4
    # ten-crop changes accuracy by exactly (images fixed - images broken) / images
    assert m["acc_tencrop_tta"] - m["acc_single"] == pytest.approx(
        (m["tta_fixed"] - m["tta_broken"]) / m["n_tta_images"], abs=1e-6)
    assert 0 <= m["merge_disagreements"] <= m["n_tta_images"]
    heads = m["acc_vs_members"][next(k for k in m["acc_vs_members"] if "heads" in k)]
    assert [row["members"] for row in heads] == list(range(1, len(heads) + 1))
    cost = {row["method"]: row for row in m["cost_table"]}
    assert cost["ten-crop TTA"]["ms_per_image"] > 2 * cost["flip TTA"]["ms_per_image"]


def test_quick_preset_fits_binder(lesson_result):
    assert lesson_result("06").peak_mb < 1536


def test_a_folder_of_5000_images_is_limited_to_the_presets_images(big_folder, run_on_folder):
    result, text = run_on_folder("06", big_folder)
    assert "has 4,000 training / 1,000 validation images; using a seeded, stratified 480 / 120" in text
    assert "480 training / 120 validation images" in text
    assert "600 images x 19 views" in text
    assert result.peak_mb < 1536
