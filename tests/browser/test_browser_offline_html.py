"""The HTML copy of an executed notebook reads offline: chromium with every non-file request aborted."""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

from tlkit.html_export import export_html

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

WIDGET_CELLS = {
    "gallery": "from tlkit.widgets.augment_gallery import show_gallery, skimage_photos\n"
               "show_gallery(skimage_photos(['chelsea'], size=48), n=2)",
    "schedule": "from tlkit.widgets.schedule_explorer import schedule_explorer\nschedule_explorer(5)",
    "progress": "from tlkit.progress import progress\n"
                "for epoch in progress(range(3), desc='epochs', leave=False):\n"
                "    for step in progress(range(4), desc='steps', leave=False):\n        pass",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small notebook (math + widgets + progress bars) executed headless as the runner does, then exported."""
    from nbclient import NotebookClient
    folder = tmp_path_factory.mktemp("html")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Offline page\n\nInline $a_i^2$ and a display formula:\n\n"
                                              "$$x^2 + \\frac{1}{2}$$\n\nCode stays code: `$HOME`.")]
    nb.cells += [nbformat.v4.new_code_cell(src, metadata={"tags": [name]}) for name, src in WIDGET_CELLS.items()]
    env = dict(os.environ, TLKIT_HEADLESS="1", MPLBACKEND="module://matplotlib_inline.backend_inline")
    env.pop("TLKIT_PROGRESS", None)
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits the runner's environment
    try:
        NotebookClient(nb, timeout=180, kernel_name="python3",
                       resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    path = folder / "offline.ipynb"
    nbformat.write(nb, str(path))
    assert export_html(path) == "offline.html"
    return nb, folder / "offline.html"


def test_exported_page_needs_no_network(exported, browser):
    nb, html_path = exported
    assert nb.metadata.get("widgets")  # the executed notebook did hold widget state: the page must not need it
    context = browser.new_context()
    page = context.new_page()
    blocked, failed, console = [], [], []

    def route(r):
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("requestfailed", lambda req: failed.append(req.url))
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(str(e)))
    try:
        page.goto(Path(html_path).as_uri())
        page.wait_for_load_state("load")
        page.wait_for_timeout(500)
        assert blocked == [] and failed == [], f"network requests: {blocked + failed}"
        assert console == [], console

        body = page.locator("body").inner_text()
        assert "$$" not in body and "$a_i" not in body, "raw TeX on the page"
        assert page.locator("math[display='block']").count() == 1 and page.locator("math").count() == 2
        assert page.locator("math").first.bounding_box()["width"] > 5  # rendered (MathML), not collapsed
        assert "$HOME" in body  # code spans are left alone

        cells = page.locator(".jp-CodeCell")
        assert cells.count() == len(WIDGET_CELLS)
        for i, name in enumerate(WIDGET_CELLS):
            out = cells.nth(i).locator(".jp-OutputArea-output")
            assert out.count() >= 1, f"{name}: empty output"
            text = " ".join(out.all_inner_texts())
            if name == "progress":
                assert re.search(r"epochs: 100%\|#+\| 3/3", text), text
                assert "0%|" not in text.replace("100%|", "")
            else:
                img = out.locator("img").first
                img.wait_for(state="visible")
                box = img.bounding_box()
                assert box["width"] > 100 and box["height"] > 50, f"{name}: picture not drawn ({box})"
                assert page.evaluate("i => i.naturalWidth", img.element_handle()) > 100
        assert "Error displaying widget" not in body and "model not found" not in body
    finally:
        context.close()
