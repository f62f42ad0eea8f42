"""Lesson 00 executes in the quick preset and recognises the scikit-image photos."""
import pytest

pytestmark = pytest.mark.notebook


def test_welcome_records_environment_and_predictions(lesson_metrics, lesson_result):
    m = lesson_metrics("00")
    assert m["top5_chelsea"][0] == 285 and m["top1_chelsea"] == "Egyptian cat"
    assert m["top5_coffee"][0] == 967 and m["top1_coffee"] == "espresso"
    assert {"hymenoptera", "imagenette_subset", "dtd10", "digits"} <= set(m["datasets_found"])
    assert (m["train_size"], m["val_size"]) == (244, 153)
    assert lesson_result("00").peak_mb < 2048
