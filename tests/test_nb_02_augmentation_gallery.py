"""Lesson 02 executes in the quick preset: the colour PCA, three from-scratch runs, step times, claims 7-10."""
import numpy as np
import pytest

from support import recorded_claims

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def metrics(lesson_metrics):
    return lesson_metrics("02")


def test_pca_eigvals_of_natural_photos(metrics):
    vals = np.array(metrics["pca_eigvals"])
    assert vals.shape == (3,) and np.all(vals > 0) and np.all(np.diff(vals) <= 0)
    assert vals[0] / vals.sum() > 0.5  # brightness dominates the colour variation of photos
    assert vals.sum() < 3 * 0.25  # variances of values in [0, 1] are at most 0.25 per channel


def test_both_runs_learn_the_task(metrics):
    for key in ("acc_no_aug", "acc_with_aug"):
        assert 0.6 < metrics[key] <= 1.0, (key, metrics[key])  # 2 classes: chance is 0.5


def test_gaps_are_train_minus_validation_accuracy(metrics):
    for key in ("gap_no_aug", "gap_with_aug"):
        assert -0.5 < metrics[key] < 0.5, (key, metrics[key])
        assert metrics[key] + metrics[key.replace("gap", "acc")] <= 1.0 + 1e-6  # = clean train accuracy <= 1


def test_claims_7_to_10_are_recorded_with_verdicts_that_follow_their_intervals(metrics):
    """No direction is asserted: whether augmentation helps at this size is what the verdicts report."""
    verdicts = recorded_claims(metrics, [7, 8, 9, 10])
    for claim in (7, 8, 10):     # judged on per-image log-loss over every seed's run, accuracy named beside it
        v = verdicts[claim]
        assert v["unit"] == "nats of log-loss" and v["runs"] == 3 and v["n"] == 153, v
        assert "accuracy" in v["aside"] and "3 seeds per setting" in v["what"], v


def test_workers_were_timed(metrics, lesson_result):
    assert metrics["step_time_workers_0"] > 0 and metrics["step_time_workers_2"] > 0
    assert lesson_result("02").peak_mb < 2048


def test_a_folder_of_5000_images_is_limited_to_the_presets_images(big_folder, run_on_folder):
    """4,000 training / 1,000 validation images: every from-scratch run trains on the stated 250 / 160."""
    result, text = run_on_folder("02", big_folder)
    assert "has 4,000 training / 1,000 validation images; using a seeded, stratified 250 / 160" in text
    assert "train 250, val 160) | training on 250 images" in text
    assert result.peak_mb < 1536   # memory follows the limits, not the folder
