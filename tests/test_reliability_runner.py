"""The lesson runner under faults: real signals to a real runner, parameters papermill cannot parse, run folders.

The lessons here are tiny notebooks that never import torch, so each runs in seconds.
"""
import json
import keyword
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import write_notebook
from tlkit import cli

REPO = cli.REPO
ISSUE_PARAMS = {"04": ["n_cycles", "cycle_len"], "05": ["dissimilar_image_size"], "08": ["aug_cycles", "all_cycles"]}


def outputs(nb_path: Path) -> str:
    """Everything the executed notebook's cells printed."""
    cells = nbformat.read(str(nb_path), as_version=4).cells
    return "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))


def alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` is alive (zombies count as gone)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def sleepy(tmp_path):
    """Lesson 00 writes `<kernel pid> <lesson process pid>` to a marker and sleeps; lesson 01 must never run."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    marker, second = tmp_path / "kernel.pids", tmp_path / "second_lesson_ran"
    write_notebook(folder / "00_sleepy.ipynb", 'preset = "auto"',
             f"import os, pathlib, time\npathlib.Path({str(marker)!r}).write_text(f'{{os.getpid()}} {{os.getppid()}}')",
             "time.sleep(120)")
    write_notebook(folder / "01_after.ipynb", 'preset = "auto"', f"open({str(second)!r}, 'w').close()")
    return folder, marker, second


def start_runner(notebooks: Path, *args: str) -> subprocess.Popen:
    """`python -m tlkit lessons run ARGS` on `notebooks`, leading its own process group like a shell job."""
    env = dict(os.environ, TLKIT_NOTEBOOKS=str(notebooks))
    return subprocess.Popen([sys.executable, "-m", "tlkit", "lessons", "run", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_leftovers(runner: subprocess.Popen, marker: Path) -> None:
    """Whatever the test found: the runner, the lesson and the kernel do not outlive it."""
    groups = [runner.pid] + ([int(p) for p in marker.read_text().split()] if marker.exists() else [])
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    runner.wait(10)


@pytest.mark.parametrize("signum, code, send", [
    (signal.SIGINT, 130, os.killpg),  # Ctrl-C: the terminal signals the runner's process group
    (signal.SIGTERM, 143, os.kill),  # kill -TERM <runner pid>
], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_lesson_and_its_kernel_and_marks_it_interrupted(sleepy, tmp_path, signum, code, send):
    folder, marker, second = sleepy
    out = tmp_path / "run"
    runner = start_runner(folder, "--out", str(out), "--no-html")
    try:
        kernel, lesson = map(int, wait_for(lambda: marker.exists() and marker.read_text().split(), 180,
                                           "the lesson's kernel to start"))
        send(runner.pid, signum)
        _, stderr = runner.communicate(timeout=60)
        assert runner.returncode == code, stderr
        wait_for(lambda: not alive(lesson) and not alive(kernel), 5, "the lesson and its kernel to end")
    finally:
        kill_leftovers(runner, marker)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr and signal.Signals(signum).name in lines[0], stderr
    summary = json.loads((out / "metrics.json").read_text())["lessons"]
    assert list(summary) == ["00_sleepy"] and summary["00_sleepy"]["status"] == "interrupted"
    assert "interrupted" in (out / "index.html").read_text()
    assert not second.exists() and not list(out.glob(".*.result.json"))


def parameter_lines(lesson: cli.Lesson) -> list[str]:
    """The names a lesson's parameters cell assigns, read with a plain regular expression."""
    cells = nbformat.read(str(lesson.path), as_version=4).cells
    source = next(c.source for c in cells if "parameters" in c.metadata.get("tags", []))
    return re.findall(r"^([A-Za-z_]\w*)\s*=", source, flags=re.M)


@pytest.mark.parametrize("lesson", cli.list_lessons(REPO / "notebooks"), ids=lambda l: l.stem)
def test_every_parameter_of_every_lesson_is_accepted_by_p(lesson):
    names = parameter_lines(lesson)
    assert "preset" in names and set(ISSUE_PARAMS.get(lesson.id, [])) <= set(names)
    accepted = cli.check_parameters([lesson], {name: "x" for name in names})
    assert sorted(accepted[lesson.stem]) == sorted(names)


def test_lessons_list_prints_no_warning_and_shows_help(capsys):
    listing = subprocess.run([sys.executable, "-m", "tlkit", "lessons", "list"], cwd=REPO, capture_output=True,
                             text=True, timeout=120, env=dict(os.environ, TLKIT_NOTEBOOKS=str(REPO / "notebooks")))
    assert listing.returncode == 0 and listing.stderr == "" and "n_cycles=None" in listing.stdout
    assert cli.main(["lessons", "list", "-v", "4"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.split()[:1] == ["cycle_len"])
    assert "epochs of its first cycle (budget = cycle_len * (2**n_cycles - 1))" in line


def test_parse_parameters_reads_names_defaults_and_comments():
    found = cli.parse_parameters(
        'dataset = "hymenoptera"  # a registry name (dtd10, digits) or ANY folder\n'
        "                         # of class folders (split 80/20)\n"
        "# a section heading, not help\n"
        "grid_lrs: tuple = (1e-4, 1.0)  # (lowest, highest)\n"
        "size = 2 ** 5\n")
    assert found["dataset"] == cli.Parameter(
        "dataset", "hymenoptera", "a registry name (dtd10, digits) or ANY folder of class folders (split 80/20)")
    assert found["grid_lrs"] == cli.Parameter("grid_lrs", (1e-4, 1.0), "(lowest, highest)")
    assert found["size"] == cli.Parameter("size", "2 ** 5", "")


names = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True).filter(lambda n: not keyword.iskeyword(n))
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
literals = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner), max_leaves=5)
comments = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip).filter(
    lambda c: not c.startswith("#"))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, st.tuples(literals, comments), min_size=1, max_size=5))
def test_any_literal_with_any_comment_parses_back(params):
    source = "\n".join(f"{name} = {value!r}  # {text}" for name, (value, text) in params.items())
    found = cli.parse_parameters(source)
    assert {n: (p.default, p.help) for n, p in found.items()} == params


def test_a_value_reaches_the_executed_notebook_through_a_comment_with_parentheses(tmp_path, monkeypatch, capfd):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    write_notebook(folder / "00_cycles.ipynb", 'preset = "auto"  # "quick" | "full" (one GPU)\n'
             "n_cycles = None  # SGDR cycles (budget = cycle_len * (2**n_cycles - 1))",
             "print(f'n_cycles={n_cycles!r} preset={preset!r}')")
    monkeypatch.setenv("TLKIT_NOTEBOOKS", str(folder))
    out = tmp_path / "run"
    assert cli.main(["lessons", "run", "--out", str(out), "--no-html", "-p", "n_cycles", "2"]) == 0
    assert "n_cycles=2 preset='auto'" in outputs(out / "00_cycles.ipynb")
    tags = [c.metadata.get("tags") for c in nbformat.read(str(out / "00_cycles.ipynb"), as_version=4).cells]
    assert tags[:2] == [["parameters"], ["injected-parameters"]]
    captured = capfd.readouterr()
    assert "Unable to parse" not in captured.err + captured.out and captured.err == ""


@pytest.fixture
def marking_lesson(tmp_path, monkeypatch):
    """One lesson that prints its `value` and leaves a marker file when it runs."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    marker = tmp_path / "lesson_ran"
    write_notebook(folder / "00_value.ipynb", "value = 1  # printed (and marked)",
             f"open({str(marker)!r}, 'w').close()\nprint(f'value={{value}}')")
    monkeypatch.setenv("TLKIT_NOTEBOOKS", str(folder))
    return marker


@pytest.mark.parametrize("where", ["parent is a file", "/proc/self", "an existing file"])
def test_an_unwritable_out_is_refused_before_any_lesson_runs(marking_lesson, tmp_path, capsys, where):
    (tmp_path / "a_file").write_text("not a folder")
    out = {"parent is a file": tmp_path / "a_file" / "run", "/proc/self": Path("/proc/self"),
           "an existing file": tmp_path / "a_file"}[where]
    assert cli.main(["lessons", "run", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out} is not a writable folder" in err
    assert not marking_lesson.exists()


def test_a_folder_that_holds_a_run_is_refused_unless_force(marking_lesson, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["lessons", "run", "--out", str(out), "--no-html", "-p", "value", "1"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert cli.main(["lessons", "run", "--out", str(out), "--no-html", "-p", "value", "2"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "pass --force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert cli.main(["lessons", "run", "--out", str(out), "--no-html", "--force", "-p", "value", "2"]) == 0
    assert "value=2" in outputs(out / "00_value.ipynb")
    assert json.loads((out / "metrics.json").read_text())["lessons"]["00_value"]["status"] == "ok"


def test_the_default_cell_limit_follows_the_preset():
    import torch
    assert cli.default_cell_timeout("quick") == cli.QUICK_CELL_TIMEOUT_S
    assert cli.default_cell_timeout("full") is None
    assert cli.default_cell_timeout("auto") == (None if torch.cuda.is_available() else cli.QUICK_CELL_TIMEOUT_S)


@pytest.fixture
def hanging_lesson(tmp_path, monkeypatch):
    """One lesson whose second cell sleeps `seconds` (4), with the quick preset's per-cell limit cut to 2 s."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    write_notebook(folder / "00_hang.ipynb", 'preset = "auto"\nseconds = 4',
                   "import time\ntime.sleep(seconds)\nprint('woke up')")
    monkeypatch.setenv("TLKIT_NOTEBOOKS", str(folder))
    monkeypatch.setattr(cli, "QUICK_CELL_TIMEOUT_S", 2.0)
    return tmp_path / "run"


def test_a_hung_cell_in_the_quick_preset_fails_its_lesson_with_the_limit_named(hanging_lesson):
    start = time.monotonic()
    assert cli.main(["lessons", "run", "--preset", "quick", "--out", str(hanging_lesson), "--no-html",
                     "-p", "seconds", "300"]) == 1
    assert time.monotonic() - start < 120   # stopped at the limit, not after the 300 s sleep
    result = json.loads((hanging_lesson / "metrics.json").read_text())["lessons"]["00_hang"]
    assert result["status"] == "failed" and result["error"].startswith("CellTimeoutError")
    assert "The limit was 2 s per cell: raise it with --timeout SECONDS (0: no limit)." in result["error"]


def test_timeout_zero_lifts_the_quick_presets_cell_limit(hanging_lesson):
    assert cli.main(["lessons", "run", "--preset", "quick", "--out", str(hanging_lesson), "--no-html",
                     "--timeout", "0"]) == 0
    assert "woke up" in outputs(hanging_lesson / "00_hang.ipynb")
