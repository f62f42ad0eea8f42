"""Lesson 08 runs the whole recipe in the quick preset on hymenoptera and records every step; and the same
notebook runs unchanged on the other registry datasets and on a user's folder of images without a split."""
import shutil
from pathlib import Path

import pytest

from support import recorded_claims

from tlkit.metrics import proportion_interval
from tlkit.data import PACK_ROOT
from tlkit.cli import execute_in_subprocess, list_lessons, select
from tlkit.lessons.l08_recipe import STEP_NAMES

pytestmark = pytest.mark.notebook


def _check_waterfall(m):
    """Every bar is a test accuracy; every step after the probe carries its change against the model it
    started from, inside its interval; the final accuracies are the kept models' bars."""
    steps = m["acc_after_step"]
    assert [s["step"] for s in steps] == list(STEP_NAMES.values())
    n = m["n_test"]
    for s in steps:
        assert round(s["acc"] * n) == pytest.approx(s["acc"] * n, abs=1e-6)   # a share of the n test images
    assert m["acc_probe"] == steps[0]["acc"] and steps[0]["change"] is None
    for s in steps[1:]:
        lo, hi = s["change_ci"]
        assert lo <= s["change"] <= hi and s["change"] == pytest.approx(s["acc"] - s["start_acc"])
    network = [s for s in steps[:-1] if s["kept"]][-1]   # the last stage validation kept (the probe at worst)
    assert m["acc_final_test"] == pytest.approx(network["acc"])
    assert steps[-1]["start_acc"] == pytest.approx(m["acc_final_test"])
    assert m["acc_final_tta_test"] == pytest.approx(steps[-1]["acc"])


def test_full_recipe_measures_every_step_on_the_held_out_test_split(lesson_metrics):
    m = lesson_metrics("08")
    assert m["n_train_used"] == 244 and m["n_val"] + m["n_test"] == 153 and abs(m["n_val"] - m["n_test"]) <= 1
    _check_waterfall(m)
    # two classes, chance 0.5: the probe's own interval on the test images lies above it
    _, low, _ = proportion_interval(round(m["acc_probe"] * m["n_test"]), m["n_test"])
    assert low > 0.5
    assert m["n_classes"] == 2 and set(m["per_class_acc"]) == {"ants", "bees"}


def test_the_lesson_records_verdicts_for_its_claims(lesson_metrics):
    m = lesson_metrics("08")
    found = recorded_claims(m, [23, 24])
    assert found[24]["n"] == m["n_test"] and "training + validation" in found[24]["what"]
    assert found[23]["n"] == m["confusion_errors"]
    # two classes give one pair each way: the claim is measured on the many-class default, dtd10's 90 pairs
    assert m["confusion_dataset"] == "dtd10" and "90 ordered pairs of 10 classes" in found[23]["what"]


def test_fine_tuning_rate_stays_below_the_heads(lesson_metrics):
    m = lesson_metrics("08")
    assert m["head_lr"] / 30 <= m["all_lr"] * (1 + 1e-6) and m["all_lr"] <= m["head_lr"] / 3 * (1 + 1e-6)


def test_final_model_reloads_with_the_same_predictions_within_memory(lesson_metrics, lesson_result):
    m = lesson_metrics("08")
    assert m["reload_same_predictions"] is True
    assert lesson_result("08").peak_mb < 1536


def test_every_image_of_the_default_dataset_fits_the_budget(lesson_metrics):
    m = lesson_metrics("08")
    assert m["n_train_available"] == m["n_train_used"] == m["n_train_body"] == 244


def test_a_folder_of_5000_images_is_sized_to_the_budget(big_folder, run_on_folder, tmp_path):
    """The quick preset on a big folder: the budget, not the folder, decides how many images each step sees."""
    result, text = run_on_folder("08", big_folder, model_path=str(tmp_path / "model.pt"))
    m = result.metrics
    assert m["n_train_available"] == 3000 and m["n_val"] == 150 and m["n_test"] == 200   # 60/20/20, then capped
    # the budget caps the images; how many each kind of step gets follows the measured speed (run to run)
    assert 0 < m["n_train_body"] <= m["n_train_used"] < m["n_train_available"]
    assert "training images for the steps on precomputed features and a stratified" in text
    _check_waterfall(m)
    assert result.peak_mb < 1536   # memory follows the budget, not the folder


def user_folder(root: Path, datasets: Path) -> Path:
    """A folder the way a user makes one: class sub-folders, no train/val split, one broken file and a stray note."""
    photos = datasets / "hymenoptera_data" / "train"
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        for f in sorted((photos / cls).glob("*.jpg"))[:25]:
            shutil.copy(f, root / cls / f.name)
    (root / "bees" / "truncated.jpg").write_bytes((photos / "bees" / sorted(
        p.name for p in (photos / "bees").glob("*.jpg"))[0]).read_bytes()[:300])
    (root / "ants" / "notes.txt").write_text("where I took these")
    return root


@pytest.mark.parametrize("dataset", ["dtd10", "imagenette_subset", "user folder"])
def test_the_notebook_runs_unchanged_on_other_data(dataset, tmp_path):
    """Small settings keep this cheap; what it checks is that nothing in the notebook assumes hymenoptera."""
    user = dataset == "user folder"
    if user:
        dataset = str(user_folder(tmp_path / "my_photos", PACK_ROOT))
    params = {"preset": "quick", "dataset": dataset, "image_size": 64, "max_train": 80, "max_val": 40,
              "max_test": 40, "lr_find_iters": 8, "model_path": str(tmp_path / "model.pt")}
    if dataset == "dtd10":   # the preset's size and a small budget: the pack's size and the budget decide
        del params["image_size"], params["max_train"]
        params["budget_s"] = 15
    (lesson,) = select(["08"], list_lessons())
    result = execute_in_subprocess(lesson, tmp_path, params, None, False)
    assert result.status == "ok", result.error
    m = result.metrics
    _check_waterfall(m)
    assert len(m["per_class_acc"]) == m["n_classes"] and m["reload_same_predictions"] is True
    assert (tmp_path / "model.pt").exists()
    # claim 23 needs at least two errors to count; claim 24 is always measured
    recorded_claims(m, [23, 24] if m["confusion_errors"] >= 2 else [24])
    # a dataset with 10 classes is its own confusion check; the two-class folder borrows dtd10
    assert m["confusion_dataset"] == ("dtd10" if user else dataset) and (m["n_classes"] == 10) != user
    if dataset == "dtd10":
        text = (tmp_path / result.notebook).read_text()
        assert "image_size 192 -> 139" in text and "time budget 15 s" in text
        assert m["n_train_body"] <= m["n_train_used"] <= m["n_train_available"]
    if user:  # the broken file and the stray note are skipped, and the learner is told which
        assert "truncated.jpg (corrupt" in (tmp_path / result.notebook).read_text() and m["n_classes"] == 2


def test_a_wrong_confusion_dataset_fails_before_any_training(tmp_path):
    params = {"preset": "quick", "image_size": 64, "max_train": 40, "max_val": 20, "max_test": 20,
              "confusion_dataset": "no_such_dataset"}
    (lesson,) = select(["08"], list_lessons())
    result = execute_in_subprocess(lesson, tmp_path, params, None, False)
    assert result.status == "failed" and "'no_such_dataset' is neither a registry name" in result.error
    assert "recorded head_lr" not in (tmp_path / result.notebook).read_text()   # it stopped in section 1
