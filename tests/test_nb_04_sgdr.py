"""Lesson 04 executes in the quick preset and shows what its prose says it shows."""
import pytest

pytestmark = pytest.mark.notebook

ACCURACIES = ["acc_constant", "acc_step", "acc_cosine", "acc_sgdr", "acc_sgdr_mult2", "acc_snapshot_ensemble",
              "acc_constant_finder_lr", "acc_sgdr_finder_lr"]


def test_sgdr_lesson_records_every_result(lesson_metrics, lesson_result):
    m = lesson_metrics("04")
    for key in ACCURACIES:
        assert 0.5 < m[key] <= 1.0, f"{key}={m[key]}: 10 texture classes, chance is 0.1"
    for key in ["sharpness_constant", "sharpness_sgdr", "sharpness_cosine"]:
        assert m[key] == m[key] and abs(m[key]) < 100, f"{key}={m[key]} is not a finite loss increase"
    assert [row["schedule"] for row in m["results"]] == ["constant", "step", "cosine", "sgdr (cycle_mult=1)",
                                                         "sgdr (cycle_mult=2)"]
    assert all(row["epochs"] == 15 for row in m["results"])      # same epoch budget for every schedule
    assert lesson_result("04").peak_mb < 2048


def test_annealing_a_high_learning_rate_beats_constant_and_ends_flatter(lesson_metrics):
    m = lesson_metrics("04")
    assert m["acc_sgdr"] >= m["acc_constant"] + 0.04
    assert min(m["acc_step"], m["acc_cosine"], m["acc_sgdr_mult2"]) > m["acc_constant"]
    assert m["sharpness_sgdr"] < m["sharpness_constant"] / 3


def test_at_the_finders_rate_the_gap_vanishes_and_snapshots_do_not_hurt(lesson_metrics):
    m = lesson_metrics("04")
    assert abs(m["acc_sgdr_finder_lr"] - m["acc_constant_finder_lr"]) < 0.05
    assert m["acc_snapshot_ensemble"] >= m["acc_sgdr"] - 0.03
