"""Shared test set-up: offline datasets, a private cache, no downloads, and lesson execution."""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LESSON_RUNS = None  # set in pytest_configure; read by the terminal summary


def pytest_addoption(parser):
    parser.addoption("--preset", default="quick", choices=["quick", "full", "auto"],
                     help="preset the notebook tests execute the lessons in (default: quick)")


def pytest_configure(config):
    global LESSON_RUNS
    # A full-size dataset folder the developer pointed TLKIT_DATA at stays known as TLKIT_FULL_DATA (only tests
    # that need full-size data use it); everything else reads the embedded pack, as a bare clone does.
    if os.environ.get("TLKIT_DATA"):
        os.environ.setdefault("TLKIT_FULL_DATA", os.environ.pop("TLKIT_DATA"))
    os.environ["TLKIT_CACHE"] = tempfile.mkdtemp(prefix="tlkit-test-cache-")
    os.environ["TLKIT_PROGRESS"] = "0"
    os.environ["TLKIT_OFFLINE"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    LESSON_RUNS = LessonRuns(Path(tempfile.mkdtemp(prefix="tlkit-test-lessons-")), config.getoption("--preset"))


def pytest_unconfigure(config):
    """Delete the session's private cache (decoded images, features: hundreds of MB after the notebook
    tests); the executed notebooks stay, for reading after a failure."""
    cache = os.environ.get("TLKIT_CACHE", "")
    if Path(cache).name.startswith("tlkit-test-cache-"):
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never download: only file:// URLs and a test's own server on 127.0.0.1 may be opened."""
    real = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        target = url if isinstance(url, str) else url.full_url
        if not target.startswith(("file:", "http://127.0.0.1:")):
            raise urllib.error.URLError(f"tests are offline (refused {target})")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)
    import torch.hub
    if hasattr(torch.hub, "urlopen"):  # torchvision weights download through torch.hub
        monkeypatch.setattr(torch.hub, "urlopen", guarded)


@pytest.fixture(autouse=True)
def fit_cache_stays_in_its_test():
    """A test that runs `tlkit.setup` turns the fit cache on for its own fits only: a later test that patches
    tlkit's code must train, not read back a fit from before the patch."""
    yield
    import sys
    if "tlkit.fit_cache" in sys.modules:
        sys.modules["tlkit.fit_cache"].use(None)


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving `tmp_path`: `local_server(path) -> URL` (real downloads, no network)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield lambda path: f"http://127.0.0.1:{server.server_port}/{Path(path).relative_to(tmp_path).as_posix()}"
    server.shutdown()
    server.server_close()


class LessonRuns:
    """Executes each lesson notebook at most once per session and keeps its result."""

    def __init__(self, out: Path, preset: str):
        self.out, self.preset, self.results = out, preset, {}

    def __call__(self, lesson_id: str):
        from tlkit.cli import default_cell_timeout, execute_in_subprocess, list_lessons, select
        if lesson_id not in self.results:
            (lesson,) = select([lesson_id], list_lessons())
            # the runner's own per-cell limit: a hung kernel fails its test instead of stalling the suite
            self.results[lesson_id] = execute_in_subprocess(lesson, self.out, {"preset": self.preset},
                                                            default_cell_timeout(self.preset), False)
        return self.results[lesson_id]


@pytest.fixture(scope="session")
def lesson_result():
    """`lesson_result("03")` -> the LessonResult of executing that notebook (once per session)."""
    return LESSON_RUNS


@pytest.fixture(scope="session")
def lesson_metrics():
    """`lesson_metrics("03")` -> the values the notebook recorded; fails the test if the notebook failed."""
    def get(lesson_id: str) -> dict:
        result = LESSON_RUNS(lesson_id)
        if result.status != "ok":
            pytest.fail(f"lesson {result.lesson} failed: {result.error}")
        return result.metrics
    return get


def pytest_terminal_summary(terminalreporter):
    if not LESSON_RUNS or not LESSON_RUNS.results:
        return
    terminalreporter.section(f"lesson notebooks ({LESSON_RUNS.preset} preset)")
    for r in LESSON_RUNS.results.values():
        peak = f"{r.peak_mb:.0f} MB" if r.peak_mb else "?"
        terminalreporter.write_line(f"{r.lesson:28s} {r.status:7s} {r.wall_s:6.0f} s  peak {peak}")
    terminalreporter.write_line(f"executed notebooks: {LESSON_RUNS.out}")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second OpenMP thread only adds spin-waiting on a shared 2-core box (30x slower)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def big_folder(tmp_path_factory):
    """5,000 real texture crops in 5 class folders, no split (4,000 training / 1,000 validation images once
    split): a user's large folder, built once per session for the lessons' budget tests."""
    from support import crops_folder
    from tlkit.data import PACK_ROOT
    return crops_folder(tmp_path_factory.mktemp("big") / "textures", PACK_ROOT / "dtd10",
                        ["banded", "blotchy", "braided", "bubbly", "bumpy"], per_class=1000)


@pytest.fixture
def run_on_folder(tmp_path):
    """`run_on_folder("01", folder, "dataset")` -> (LessonResult, executed notebook text), quick preset."""
    def run(lesson_id: str, folder: Path, param: str = "dataset", **params):
        from tlkit.cli import default_cell_timeout, execute_in_subprocess, list_lessons, select
        (lesson,) = select([lesson_id], list_lessons())
        result = execute_in_subprocess(lesson, tmp_path, {"preset": "quick", param: str(folder), **params},
                                       default_cell_timeout("quick"), False)
        assert result.status == "ok", result.error
        return result, (tmp_path / result.notebook).read_text()
    return run
