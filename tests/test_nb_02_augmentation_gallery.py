"""Lesson 02 executes in the quick preset and records the colour PCA, the gap with/without augmentation, step times."""
import numpy as np
import pytest

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


def test_augmentation_narrows_the_generalisation_gap(metrics):
    for key in ("gap_no_aug", "gap_with_aug"):
        assert -0.3 < metrics[key] < 0.5, (key, metrics[key])
        assert metrics[key] + metrics[key.replace("gap", "acc")] <= 1.0 + 1e-6  # = clean train accuracy <= 1
    assert metrics["gap_with_aug"] < metrics["gap_no_aug"]


def test_workers_take_the_distortions_off_the_training_process(metrics, lesson_result):
    assert metrics["step_time_workers_0"] > 0 and metrics["step_time_workers_2"] > 0
    assert metrics["data_wait_workers_2"] < 0.5 * metrics["data_wait_workers_0"]
    assert lesson_result("02").peak_mb < 2048
