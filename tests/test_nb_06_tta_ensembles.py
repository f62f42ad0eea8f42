"""Lesson 06 executes in the quick preset and shows TTA, ensembles, weight averaging and their cost."""
import pytest

pytestmark = pytest.mark.notebook


def test_tta_and_ensembles_keep_accuracy_and_cost_more(lesson_metrics):
    m = lesson_metrics("06")
    assert m["acc_single"] >= 0.8, "the fine-tuned single model should classify well above chance"
    # on ~150 validation images one image is 0.007: TTA and ensembles must not hurt by more than a few images
    for name in ("acc_flip_tta", "acc_tencrop_tta", "acc_ensemble"):
        assert m[name] >= m["acc_single"] - 0.03, name
    # ten views and M full networks cost several times one forward pass (measured in the same run)
    assert m["tta_cost_ratio"] > 3
    assert m["ensemble_cost_ratio"] > 1.5


def test_average_outputs_not_weights(lesson_metrics):
    m = lesson_metrics("06")
    # networks from different random inits: averaging outputs works, averaging weights collapses
    assert m["acc_output_avg_scratch"] >= m["acc_scratch_members_min"] - 0.02
    assert m["acc_weight_avg_scratch"] < m["acc_scratch_members_min"] - 0.3
    assert m["acc_weight_avg_scratch"] < 0.4
    # fine-tunes of one start (model soup) and snapshots of one run: averaging weights works
    assert m["acc_weight_avg_finetuned"] >= m["acc_finetuned_members_min"] - 0.03
    assert m["acc_weight_avg_finetuned_digits"] > 0.85
    assert m["acc_weight_avg_snapshots"] >= m["acc_snapshot_members_min"] - 0.05


def test_tta_bookkeeping_is_consistent(lesson_metrics):
    m = lesson_metrics("06")
    # ten-crop changes accuracy by exactly (images fixed - images broken) / validation images
    assert m["acc_tencrop_tta"] - m["acc_single"] == pytest.approx((m["tta_fixed"] - m["tta_broken"]) / m["n_val"],
                                                                   abs=1e-6)
    assert 0 <= m["merge_disagreements"] <= m["n_val"]
    heads = m["acc_vs_members"]["heads on features"]
    assert [row["members"] for row in heads] == list(range(1, len(heads) + 1))
    cost = {row["method"]: row for row in m["cost_table"]}
    assert cost["ten-crop TTA"]["ms_per_image"] > 2 * cost["flip TTA"]["ms_per_image"]
