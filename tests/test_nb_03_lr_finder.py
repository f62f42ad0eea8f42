"""Lesson 03 executes in the quick preset: the finder restores the model and its suggestions hold up on a grid."""
import math

import pytest

from support import recorded_claims

pytestmark = pytest.mark.notebook

RULES = ("min10", "steep", "valley")


def test_finder_leaves_the_model_untouched(lesson_metrics):
    m = lesson_metrics("03")
    assert m["weights_restored"] is True


def test_suggestions_are_inside_the_sweep(lesson_metrics):
    m = lesson_metrics("03")
    for rule in RULES:
        lr = m[f"lr_{rule}"]
        assert lr is not None and math.isfinite(lr), rule
        assert 1e-8 <= lr <= 10, (rule, lr)  # the sweep spans 1e-7..10; min10 may sit a decade below its point


def test_grid_confirms_a_suggestion(lesson_metrics):
    """The closest suggestion is within a decade of the grid's best LR, and the grid shows LR matters."""
    m = lesson_metrics("03")
    grid = m["lr_grid"]
    lrs, val_loss, val_acc = grid["lr"], grid["val_loss"], grid["val_acc"]
    assert len(lrs) == 6 and max(lrs) / min(lrs) == pytest.approx(1e4)
    assert m["lr_grid_best"] in lrs
    assert min(abs(d) for d in m["decades_from_grid_best"].values()) <= 1.0
    finite = [v for v in val_loss if v is not None and math.isfinite(v)]
    assert max(val_acc[i] for i in range(len(lrs)) if val_acc[i] is not None) > 0.8  # 2 classes: chance is 0.5
    assert max(finite) > 2 * min(finite) or len(finite) < len(lrs)  # a bad LR is visibly bad (or diverges)


def test_curves_before_and_after_unfreezing_were_measured(lesson_metrics):
    m = lesson_metrics("03")
    for key in ("frozen", "unfrozen"):
        assert math.isfinite(m[f"first_loss_{key}"])
        assert m[f"lr_valley_{key}"] is None or 1e-5 <= m[f"lr_valley_{key}"] <= 10
        assert m[f"lr_divergence_{key}"] is None or 1e-5 <= m[f"lr_divergence_{key}"] <= 10


def test_claims_12_and_13_are_recorded_over_repeated_runs(lesson_metrics):
    m = lesson_metrics("03")
    verdicts = recorded_claims(m, [12, 13])
    assert verdicts[12]["n"] == 153                     # every validation image: neither rule saw one
    assert len(m["min10_vs_steep_lrs"]) >= 8            # one sweep per seed
    assert len(m["divergence_shifts"]) == 8              # one pair of sweeps per seed ...
    # ... and the verdict counts the pairs whose two sweeps both gave a suggestion
    assert verdicts[13]["n"] == sum(row["decades"] is not None for row in m["divergence_shifts"]) >= 2


def test_quick_preset_fits_binder(lesson_result):
    assert lesson_result("03").peak_mb < 2048


def test_a_folder_of_5000_images_is_limited_to_the_presets_images(big_folder, run_on_folder):
    result, text = run_on_folder("03", big_folder)
    assert "has 4,000 training / 1,000 validation images; using a seeded, stratified 1,000 / 400" in text
    assert "1000 training, 200 validation and 200 test images" in text
    assert result.peak_mb < 1536
