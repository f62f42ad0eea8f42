"""Browser tests: JupyterLab on 127.0.0.1 driven by Debian's chromium through Playwright for Python.

Needs the `chromium` binary (apt-get install -y chromium; `playwright install` cannot download here)
and the `playwright` package (pinned in the test extras). Without either, every test here is skipped
with one line saying what is missing. `$TLKIT_CHROMIUM` may name another chromium binary.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser_notebooks import LESSONS, REPO, short_copy

BROWSER_SETUP = "apt-get install -y chromium; pip install -e '.[test]'  (or: make browser-setup)"


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives JupyterLab or an exported page in chromium (Playwright)")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    mine = [item for item in items if here in Path(item.fspath).parents]
    for item in mine:
        item.add_marker(pytest.mark.browser)
    why = missing()
    if why and mine:  # one skipped test carries the one line that says why; the others are deselected
        mine[0].add_marker(pytest.mark.skip(reason=f"browser tests skipped: {why} ({BROWSER_SETUP})"))
        rest = set(map(id, mine[1:]))
        config.hook.pytest_deselected(items=mine[1:])
        items[:] = [item for item in items if id(item) not in rest]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("TLKIT_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    why = []
    if chromium_path() is None:
        why.append("no chromium binary")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why.append("playwright not installed")
    return ", ".join(why) or None


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    def __init__(self, root: Path, port: int, proc: subprocess.Popen, log: Path):
        self.root, self.port, self.proc, self.log = root, port, proc, log
        self.url = f"http://127.0.0.1:{port}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        for k in self.api("/api/kernels"):
            with contextlib.suppress(Exception):
                self.api(f"/api/kernels/{k['id']}", "DELETE")


def lab_settings(dest: Path) -> Path:
    """The app settings dir: the repository's shipped overrides.json plus quiet test defaults."""
    overrides = json.loads((REPO / "binder" / "overrides.json").read_text())
    overrides.setdefault("@jupyterlab/apputils-extension:notification", {}).update(
        {"fetchNews": "false", "checkForUpdates": False})
    # every cell in the DOM (no virtual scrolling), so the test sees every prompt and output
    overrides.setdefault("@jupyterlab/notebook-extension:tracker", {}).update({"windowingMode": "none"})
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "overrides.json").write_text(json.dumps(overrides))
    return dest


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """JupyterLab (no token) on a free port of 127.0.0.1, serving short copies of lessons 02-04."""
    root = tmp_path_factory.mktemp("lab")
    nbdir = root / "notebooks"
    nbdir.mkdir()
    for stem in LESSONS:
        short_copy(stem, nbdir)
    env = {k: v for k, v in os.environ.items() if k not in ("TLKIT_HEADLESS", "TLKIT_PROGRESS", "JUPYTER_TOKEN")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               JUPYTERLAB_SETTINGS_DIR=str(root / "user-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"),
               JUPYTER_CONFIG_DIR=str(root / "jupyter-config"),
               OMP_NUM_THREADS="1", MPLBACKEND="module://matplotlib_inline.backend_inline")
    port = free_port()
    log = root / "lab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
           "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={nbdir}",
           f"--LabApp.app_settings_dir={lab_settings(root / 'app-settings')}",
           "--LabApp.news_url=", "--ServerApp.open_browser=False", "--allow-root"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=nbdir,
                                start_new_session=True)
    server = LabServer(nbdir, port, proc, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                server.api("/api/status")
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer in 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.shutdown_kernels()
        stop(proc)


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the server (it shuts its kernels down), SIGKILL its process group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # a kernel left in the server's group
        os.killpg(proc.pid, signal.SIGKILL)
