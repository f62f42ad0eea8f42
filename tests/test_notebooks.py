"""Every lesson notebook executes in the chosen preset (default quick) within Binder's 2 GB."""
from pathlib import Path

import pytest

from tlkit.cli import list_lessons

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.notebook
@pytest.mark.parametrize("lesson", [l.id for l in list_lessons(REPO / "notebooks")])
def test_lesson_executes(lesson, lesson_result):
    result = lesson_result(lesson)
    assert result.status == "ok", result.error
    assert result.metrics, "the lesson recorded no numbers"
    assert result.peak_mb < 2048, f"peak memory {result.peak_mb:.0f} MB exceeds Binder's 2 GB"
