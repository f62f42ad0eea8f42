"""Lessons 02, 03 and 04 as a learner uses them: open in JupyterLab, Run All, work every widget with the mouse.

Each test asserts that what is drawn changes after each action and that no error shows anywhere:
no error output in the notebook, no "Error displaying widget", no tlkit widget error, no console error.
"""
from __future__ import annotations

import re
import time

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

# console errors that are not about the notebook (none of them involve widgets or kernels)
BENIGN_CONSOLE = re.compile(r"favicon|Failed to load resource.*(lsp|translations|news|workspaces|lab/api/settings)",
                            re.I)
ERROR_TEXT = ("Error displaying widget", "model not found", "Traceback", "tlkit widget error")


class Lab:
    """One notebook open in JupyterLab in a fresh browser page."""

    def __init__(self, browser, lab, stem: str):
        self.lab, self.stem = lab, stem
        self.context = browser.new_context(viewport={"width": 1500, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    opened = 0

    def open(self) -> None:
        """Open the notebook alone in a fresh workspace (no tab restored from an earlier page)."""
        Lab.opened += 1
        self.page.goto(f"{self.lab.url}/lab/workspaces/t{Lab.opened}/tree/{self.stem}.ipynb?reset")
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=60_000)
        self.wait_kernel_idle(90)

    def kernel_status(self) -> str:
        """The kernel's status as the status bar shows it once connected ('idle', 'busy', ...), else ''."""
        text = self.page.locator(".jp-StatusBar-Widget", has_text="|").all_inner_texts()
        found = [re.search(r"\|\s*(\w+)", t) for t in text]
        return next((m.group(1).lower() for m in found if m), "")

    def wait_kernel_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kernel_status() == "idle":
                return
            time.sleep(0.5)
        raise AssertionError(f"{self.stem}: kernel not idle after {timeout:.0f} s (status {self.kernel_status()!r})")

    def prompts(self) -> list[str]:
        return self.page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()

    def run_all(self, timeout: float = 150) -> None:
        """Run > Run All Cells from the menu bar, then wait until every code cell has run."""
        for attempt in range(3):  # a click during the kernel's start-up can go unanswered: then click again
            self.page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt >> visible=true").first.click()
            self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            started = time.monotonic()
            while time.monotonic() - started < 10 and all(p.strip() in ("", "[ ]:") for p in self.prompts()):
                time.sleep(0.3)
            if not all(p.strip() in ("", "[ ]:") for p in self.prompts()):
                break
        deadline = time.monotonic() + timeout
        prompts = []
        while time.monotonic() < deadline:
            prompts = self.prompts()
            if prompts and all(re.search(r"\[\d+\]", p) for p in prompts) and self.kernel_status() == "idle":
                return
            if self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']").count():
                break
            time.sleep(1)
        self.shot("run-all")
        self.assert_no_errors()
        raise AssertionError(f"{self.stem}: Run All did not finish in {timeout:.0f} s: prompts {prompts}")

    def assert_no_errors(self) -> None:
        errors = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
        assert errors.count() == 0, f"{self.stem}: error output:\n" + "\n".join(errors.all_inner_texts())[-3000:]
        text = "\n".join(self.page.locator(".jp-Notebook").all_inner_texts())
        for bad in ERROR_TEXT:
            assert bad not in text, f"{self.stem}: {bad!r} on the page:\n{text[text.find(bad) - 500:][:2000]}"
        real = [c for c in self.console if not BENIGN_CONSOLE.search(c)]
        assert not real, f"{self.stem}: browser console errors: {real}"

    # ------------------------------------------------------------------ widgets
    def slider(self, root: str, label: str):
        return self.page.locator(f"{root} .widget-slider", has=self.page.locator(".widget-label", has_text=label)).first

    def drag(self, slider, fraction: float) -> None:
        """Drag the slider's handle with the mouse to `fraction` (0..1) of its track."""
        handle = slider.locator(".noUi-handle").first
        track = slider.locator(".noUi-base").first
        handle.scroll_into_view_if_needed()
        hb, tb = handle.bounding_box(), track.bounding_box()
        x0, y = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
        x1 = tb["x"] + max(0.0, min(1.0, fraction)) * tb["width"]
        self.page.mouse.move(x0, y)
        self.page.mouse.down()
        for step in range(1, 6):
            self.page.mouse.move(x0 + (x1 - x0) * step / 5, y)
        self.page.mouse.up()

    def settle(self, quiet: float = 1.5, timeout: float = 60) -> None:
        """Wait until the kernel has been idle for `quiet` seconds (every widget message handled)."""
        deadline, since = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.kernel_status() == "idle":
                since = since or time.monotonic()
                if time.monotonic() - since >= quiet:
                    return
            else:
                since = None
            time.sleep(0.2)
        raise AssertionError(f"{self.stem}: the kernel stayed busy for {timeout:.0f} s")

    def aria(self, slider) -> dict:
        self.settle()
        h = slider.locator(".noUi-handle").first
        return {k: float(h.get_attribute(f"aria-value{k}")) for k in ("min", "max", "now")}

    def img_src(self, selector: str) -> str:
        img = self.page.locator(f"{selector} img").first
        img.wait_for(state="visible")
        return img.get_attribute("src")

    def wait_img_change(self, selector: str, old: str, what: str, timeout: float = 45) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            imgs = self.page.locator(f"{selector} img")
            if imgs.count():
                src = imgs.first.get_attribute("src")
                if src and src != old:
                    return src
            self.assert_no_errors()
            time.sleep(0.3)
        self.assert_no_errors()
        raise AssertionError(f"{self.stem}: the picture did not change after {what}")

    def wait_text(self, selector: str, pattern: str, what: str, timeout: float = 45) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            loc = self.page.locator(selector)
            text = " ".join(loc.all_inner_texts()) if loc.count() else ""
            if re.search(pattern, text):
                return text
            self.assert_no_errors()
            time.sleep(0.3)
        raise AssertionError(f"{self.stem}: after {what}, {selector} shows {text!r}, expected /{pattern}/")

    def shot(self, what: str) -> None:
        """A screenshot for a failure report (in $TLKIT_BROWSER_SHOTS, default the system temp dir)."""
        import os
        import tempfile
        folder = os.environ.get("TLKIT_BROWSER_SHOTS", tempfile.gettempdir())
        path = os.path.join(folder, f"tlkit-{self.stem}-{what}.png")
        try:
            self.page.screenshot(path=path, full_page=True)
            print(f"screenshot: {path}")
        except Exception:
            pass

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def notebook(browser, lab):
    opened = []

    def open_(stem: str) -> Lab:
        nb = Lab(browser, lab, stem)
        opened.append(nb)
        nb.open()
        nb.run_all()
        nb.assert_no_errors()
        return nb

    yield open_
    for nb in opened:
        nb.close()
    lab.shutdown_kernels()


def test_augmentation_gallery(notebook):
    nb = notebook("02_augmentation_gallery")
    root, single, pipe = ".tlkit-gallery", ".tlkit-gallery-single", ".tlkit-gallery-pipeline"
    nb.page.locator(root).scroll_into_view_if_needed()
    src = nb.img_src(single)

    magnitude = nb.slider(root, "magnitude")
    before = nb.aria(magnitude)["now"]
    nb.drag(magnitude, 0.95)
    src = nb.wait_img_change(single, src, "dragging the magnitude slider")
    assert nb.aria(magnitude)["now"] > before
    nb.wait_text(".tlkit-gallery-single-title", r"@ magnitude 0\.9", "dragging the magnitude slider")

    nb.page.locator(f"{root} .widget-dropdown", has=nb.page.locator("label", has_text="transform")) \
        .locator("select").select_option("rotation")
    src = nb.wait_img_change(single, src, "choosing the rotation transform")
    nb.wait_text(".tlkit-gallery-single-title", r"rotation @", "choosing the rotation transform")

    nb.page.locator(f"{root} .widget-dropdown", has=nb.page.locator("label", has_text="image")) \
        .locator("select").select_option(index=1)
    src = nb.wait_img_change(single, src, "choosing another image")

    nb.page.locator(f"{root} button", has_text="resample").click()
    src = nb.wait_img_change(single, src, "clicking resample")

    nb.page.locator(f"{root} .lm-TabBar-tab", has_text="pipeline").click()
    psrc = nb.img_src(pipe)
    chain = nb.page.locator(f"{root} .widget-select-multiple select")
    chain.select_option([])  # deselect every entry
    psrc = nb.wait_img_change(pipe, psrc, "deselecting every pipeline entry")
    nb.wait_text(".tlkit-gallery-pipeline-title", r"\(nothing selected\)", "deselecting every pipeline entry")
    chain.select_option(["mirror", "color_shift"])
    nb.wait_img_change(pipe, psrc, "selecting two pipeline entries")
    nb.wait_text(".tlkit-gallery-pipeline-title", r"mirror -> color_shift", "selecting two entries")
    nb.assert_no_errors()


def test_lr_finder_view(notebook):
    nb = notebook("03_lr_finder")
    root, plot, text = ".tlkit-lrview", ".tlkit-lrview-plot", ".tlkit-lrview-text"
    nb.page.locator(root).scroll_into_view_if_needed()
    src = nb.img_src(plot)
    smoothing, start, end = (nb.slider(root, k) for k in ("smoothing", "skip start", "skip end"))
    budget = nb.aria(start)["max"] + nb.aria(end)["now"]  # = points - MIN_POINTS: what the trims may remove

    nb.drag(smoothing, 0.2)
    src = nb.wait_img_change(plot, src, "dragging the smoothing slider")

    nb.drag(start, 1.0)  # as far right as it goes: every point the trims may remove, less skip end's
    src = nb.wait_img_change(plot, src, "dragging skip start to its end")
    s, e = nb.aria(start), nb.aria(end)
    assert s["now"] + e["now"] == budget, (s, e, budget)

    nb.drag(end, 1.0)  # skip end cannot take more: the curve keeps its MIN_POINTS points
    s, e = nb.aria(start), nb.aria(end)
    assert s["now"] + e["now"] <= budget, (s, e, budget)
    nb.wait_text(text, r"min10|steep|valley", "trimming both ends")
    nb.assert_no_errors()

    nb.drag(start, 0.0)  # the room skip start gave up is now skip end's
    src = nb.wait_img_change(plot, src, "moving skip start back to 0")
    nb.drag(end, 1.0)
    src = nb.wait_img_change(plot, src, "dragging skip end to its end")
    s, e = nb.aria(start), nb.aria(end)
    assert s["now"] == 0 and e["now"] == budget, (s, e, budget)
    nb.drag(end, 0.0)
    nb.wait_img_change(plot, src, "moving skip end back to 0")
    nb.wait_text(text, r"min10|steep|valley", "moving the trims back")
    nb.assert_no_errors()


def test_schedule_explorer_and_saved_state(notebook, lab, browser):
    nb = notebook("04_sgdr")
    root = ".tlkit-schedule"
    nb.page.locator(root).scroll_into_view_if_needed()
    src = nb.img_src(root)
    title = nb.wait_text(".tlkit-schedule-title", r"3 cycles x 1 epochs, cycle_mult=2: 7 epochs \(no warm-up\)",
                         "Run All")

    nb.drag(nb.slider(root, "n_cycles"), 0.0)
    src = nb.wait_img_change(root, src, "dragging n_cycles")
    nb.wait_text(".tlkit-schedule-title", r"^1 cycles", "dragging n_cycles to 1")

    nb.drag(nb.slider(root, "warmup"), 0.25)
    src = nb.wait_img_change(root, src, "dragging warmup")
    nb.wait_text(".tlkit-schedule-title", r"\+ 0\.5 warm-up = 1\.5 epochs", "dragging warmup to 0.5")

    nb.drag(nb.slider(root, "lr_max"), 0.0)   # 1e-5
    nb.drag(nb.slider(root, "lr_min"), 1.0)   # 1e-1: above lr_max
    nb.wait_text(".tlkit-schedule-refused", r"above lr_max", "setting lr_min above lr_max")
    assert nb.page.locator(f"{root} img").count() == 0  # nothing upside down is drawn
    nb.drag(nb.slider(root, "lr_min"), 0.0)
    nb.wait_img_change(root, "", "lowering lr_min again")
    assert nb.page.locator(".tlkit-schedule-refused").count() == 0
    nb.assert_no_errors()

    # saved and reopened without a kernel: the widget state was saved (saveState), nothing is "not found"
    nb.page.keyboard.press("Control+s")
    nb.page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000)
    lab.shutdown_kernels()
    nb.close()
    again = Lab(browser, lab, "04_sgdr")
    try:
        Lab.opened += 1
        again.page.goto(f"{lab.url}/lab/workspaces/t{Lab.opened}/tree/04_sgdr.ipynb?reset")
        again.page.wait_for_selector(f"{root}", timeout=60_000)
        again.wait_text(".tlkit-schedule-title", r"warm-up", "reopening the saved notebook")
        again.page.wait_for_timeout(1000)
        again.assert_no_errors()
    finally:
        again.close()
