"""The lesson runner: listing, parameter checks, failing notebooks, run folder."""
import json
import os
import subprocess
import sys

import pytest

from tlkit import cli
from tlkit.config import ParameterError

from support import write_notebook


def write_nb(path, cells, params='preset = "auto"\nscale = 1'):
    return write_notebook(path, params, *cells)


@pytest.fixture
def toy_lessons(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    write_nb(folder / "00_ok.ipynb", ["import tlkit", "tlkit.record('answer', 21 * scale)"])
    write_nb(folder / "01_broken.ipynb", ["x = 1", "raise ValueError('dataset folder has no images')", "y = 2"])
    monkeypatch.setenv("TLKIT_NOTEBOOKS", str(folder))
    return folder


def test_list_and_select(toy_lessons):
    found = cli.list_lessons()
    assert [l.stem for l in found] == ["00_ok", "01_broken"]
    assert cli.select(["1"], found)[0].name == "broken"
    assert cli.select(["00_ok"], found)[0].id == "00"
    with pytest.raises(ParameterError, match="no lesson"):
        cli.select(["7"], found)


def test_unknown_parameter_is_refused_before_anything_runs(toy_lessons, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["lessons", "run", "--out", str(out), "-p", "sclae", "2"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "'sclae'" in err and "preset, scale" in err


def test_parse_value():
    assert cli.parse_value("3") == 3 and cli.parse_value("0.5") == 0.5
    assert cli.parse_value("None") is None and cli.parse_value("dtd10") == "dtd10"
    assert cli.parse_value("[1, 2]") == [1, 2]


def test_failing_lesson_is_reported_and_the_others_still_run(toy_lessons, tmp_path):
    out = tmp_path / "run"
    results = cli.run_lessons(["1", "0"], preset="quick", out=out, params={"scale": 2}, echo=lambda *_: None)
    by_name = {r.lesson: r for r in results}
    broken, ok = by_name["01_broken"], by_name["00_ok"]
    assert broken.status == "failed" and "ValueError: dataset folder has no images" in broken.error
    assert "`raise ValueError('dataset folder has no images')`" in broken.error  # points at the failing code
    assert ok.status == "ok" and ok.metrics == {"answer": 42} and ok.peak_mb > 10
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["lessons"]) == {"00_ok", "01_broken"}
    page = (out / "index.html").read_text()
    assert "01_broken" in page and "failed" in page and "answer=42" in page
    assert (out / "00_ok.html").exists() and (out / "00_ok.ipynb").exists()


def test_the_claims_table_marks_settled_verdicts_from_few_runs_as_provisional():
    from tlkit import claims
    rows = claims.ledger([("01_x", [claims.judge(3, 0.08, (0.01, 0.15), 153, "c minus b", runs=3).record_entry(),
                                    claims.judge(4, 0.02, (-0.01, 0.05), 153, "c' minus c", runs=3).record_entry(),
                                    claims.judge(1, 0.4, (0.3, 0.5), 153, "a minus e").record_entry()], {}, None)])
    page = cli.claims_table_html(rows)
    assert page.count("provisional: 3 runs per setting") == 1        # claim 3 only: 4 is not settled, 1 is one design
    assert page.count("not measured in this run") == len(claims.CLAIMS) - 3


def test_the_child_that_runs_a_notebook_never_imports_torch():
    """`import tlkit` is lazy and `tlkit.execute` imports only papermill: the runner's child stays light."""
    probe = "import sys, tlkit, tlkit.execute, papermill; print('torch' in sys.modules, tlkit.record.__name__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(cli.REPO)}).stdout.split()
    assert out == ["False", "record"]   # and `tlkit.record` is still the function, not the submodule
