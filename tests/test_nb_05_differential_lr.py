"""Lesson 05 executes in the quick preset: differential LRs protect the early layers, and the rule's ratios do their job."""
import math

import pytest

pytestmark = pytest.mark.notebook

KINDS = ("similar", "dissimilar")


def test_required_numbers_are_recorded(lesson_metrics):
    m = lesson_metrics("05")
    for key in ("acc_uniform_similar", "acc_differential_similar", "acc_uniform_dissimilar",
                "acc_differential_dissimilar"):
        assert 0 <= m[key] <= 1, key
    assert m["ratio_similar"] == 10 and m["ratio_dissimilar"] == 3  # the notes' rule from the dataset registry
    assert set(m["rel_change_by_group"]) == set(KINDS)
    assert len(m["group_names"]) == 4


def test_group_lrs_follow_the_ratios(lesson_metrics):
    m = lesson_metrics("05")
    for kind in KINDS:
        lr = m[f"lr_{kind}"]
        assert 1e-6 < lr < 1e-1
        for label, lrs in m["group_lrs"][kind].items():
            ratio = 1.0 if label == "uniform" else float(label.rstrip("x"))
            assert lrs[-1] == pytest.approx(lr, rel=1e-9)  # every run gives the head the same LR
            for lower, upper in zip(lrs, lrs[1:]):
                assert upper / lower == pytest.approx(ratio, rel=1e-9)


def test_differential_rates_shield_the_early_layers(lesson_metrics):
    """Relative weight change tracks the group's LR: monotone in depth, and early groups far below uniform."""
    m = lesson_metrics("05")
    for kind in KINDS:
        runs = m["rel_change_by_group"][kind]
        ratio = m[f"ratio_{kind}"]
        rule = runs[f"{ratio:g}x"]
        assert all(math.isfinite(c) and c >= 0 for r in runs.values() for c in r)
        assert rule == sorted(rule), f"{kind}: change should grow from early group to head: {rule}"
        # the earliest group's LR is ratio**3 lower; with Adam its change shrinks by at least a good part of that
        assert runs["uniform"][0] / rule[0] > ratio ** 3 / 10, kind
        # the head has the same LR in both runs: comparable change (within 3x)
        assert 1 / 3 < runs["uniform"][-1] / rule[-1] < 3, kind
    assert m["early_change_ratio_similar"] > 100


def test_accuracies_are_well_above_chance(lesson_metrics):
    m = lesson_metrics("05")
    assert m["acc_head_similar"] > 0.75             # 2 classes: chance 0.5
    assert m["acc_differential_similar"] > 0.75
    assert m["acc_head_dissimilar"] > 0.5           # 10 digits: chance 0.1
    assert m["acc_differential_dissimilar"] > 0.5


def test_quick_preset_fits_binder(lesson_result):
    assert lesson_result("05").peak_mb < 2048
