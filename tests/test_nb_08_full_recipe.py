"""Lesson 08 runs the whole recipe in the quick preset on hymenoptera and records every step; and the same
notebook runs unchanged on the other registry datasets and on a user's folder of images without a split."""
import shutil
from pathlib import Path

import pytest

from tlkit.data import PACK_ROOT
from tlkit.lessons import execute_in_subprocess, list_lessons, select
from tlkit.recipe import STEP_NAMES

pytestmark = pytest.mark.notebook


def test_full_recipe_records_an_accuracy_for_every_step(lesson_metrics):
    m = lesson_metrics("08")
    steps = m["acc_after_step"]
    assert [s["step"] for s in steps] == list(STEP_NAMES.values())
    acc = {s["step"]: s["acc"] for s in steps}
    # two classes: chance is 0.5; a pretrained head alone is far above it, and the recipe keeps it there
    assert acc[STEP_NAMES["head"]] >= 0.75
    assert m["acc_final"] == pytest.approx(acc[STEP_NAMES["unfreeze"]])
    assert m["acc_final_tta"] == pytest.approx(acc[STEP_NAMES["tta"]])
    assert m["acc_final"] >= 0.8 and m["acc_final_tta"] >= 0.8
    assert m["n_classes"] == 2 and set(m["per_class_acc"]) == {"ants", "bees"}


def test_fine_tuning_rate_stays_below_the_heads(lesson_metrics):
    m = lesson_metrics("08")
    assert m["head_lr"] / 30 <= m["all_lr"] * (1 + 1e-6) and m["all_lr"] <= m["head_lr"] / 3 * (1 + 1e-6)


def test_final_model_reloads_with_the_same_predictions_within_memory(lesson_metrics, lesson_result):
    m = lesson_metrics("08")
    assert m["reload_same_predictions"] is True
    assert lesson_result("08").peak_mb < 2048


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
              "lr_find_iters": 8, "model_path": str(tmp_path / "model.pt")}
    (lesson,) = select(["08"], list_lessons())
    result = execute_in_subprocess(lesson, tmp_path, params, None, False)
    assert result.status == "ok", result.error
    m = result.metrics
    assert [s["step"] for s in m["acc_after_step"]] == list(STEP_NAMES.values())
    assert all(0 <= s["acc"] <= 1 for s in m["acc_after_step"])
    assert len(m["per_class_acc"]) == m["n_classes"] and m["reload_same_predictions"] is True
    assert (tmp_path / "model.pt").exists()
    assert m["acc_final_tta"] > 1 / m["n_classes"]  # above chance, even from 40-80 small images
    if user:  # the broken file and the stray note are skipped, and the learner is told which
        assert "truncated.jpg (corrupt" in (tmp_path / result.notebook).read_text() and m["n_classes"] == 2
