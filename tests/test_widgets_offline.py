"""Run reports that read offline (no browser): the progress factory, offline HTML export, saveState overrides."""
import io
import json
import re
from pathlib import Path

import nbformat
import pytest

from tlkit import html_export as H
from tlkit import progress as P

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- progress
def test_headless_bars_print_one_final_line(monkeypatch):
    monkeypatch.setenv("TLKIT_HEADLESS", "1")
    monkeypatch.delenv("TLKIT_PROGRESS", raising=False)
    out = io.StringIO()
    for _ in P.progress(range(3), desc="epochs", leave=False, file=out):
        for _ in P.progress(range(5), desc="epoch", leave=False, file=out):
            pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and re.match(r"epochs: 100%\|#+\| 3/3 \[", lines[0]), lines
    bar = P.progress(total=10, desc="download", file=out)
    bar.update(4)
    bar.close()
    bar.close()  # a second close prints nothing more
    assert out.getvalue().splitlines()[1].startswith("download:  40%|") and len(out.getvalue().splitlines()) == 2


def test_progress_off_with_tlkit_progress_0(monkeypatch):
    monkeypatch.setenv("TLKIT_HEADLESS", "1")
    monkeypatch.setenv("TLKIT_PROGRESS", "0")
    out = io.StringIO()
    assert list(P.progress(range(3), desc="x", file=out)) == [0, 1, 2] and out.getvalue() == ""


def test_interactive_use_outside_a_kernel_is_tqdm(monkeypatch):
    monkeypatch.delenv("TLKIT_HEADLESS", raising=False)
    from tqdm.std import tqdm
    bar = P.progress(range(2), desc="x", disable=True)
    assert isinstance(bar, tqdm) and list(bar) == [0, 1]
    assert P.headless() is False
    monkeypatch.setenv("TLKIT_HEADLESS", "1")
    assert P.headless() is True


def test_saved_notebook_keeps_no_stale_0_percent(tmp_path, monkeypatch):
    """In a kernel (JupyterLab-like, not headless) each bar's saved text is its final state, or nothing."""
    from nbclient import NotebookClient
    monkeypatch.delenv("TLKIT_HEADLESS", raising=False)
    monkeypatch.delenv("TLKIT_PROGRESS", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from tlkit.progress import progress\n"
        "for i in progress(range(3), desc='kept'):\n    pass\n"
        "for i in progress(range(3), desc='gone', leave=False):\n    pass")]
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    texts = ["".join(o["data"].get("text/plain", "")) for o in nb.cells[0].outputs if o.get("data")]
    views = [o for o in nb.cells[0].outputs if H.WIDGET_VIEW in o.get("data", {})]
    assert len(views) == 1  # the closed leave=False bar left no widget reference behind
    assert any(re.match(r"kept: 100%\|.*\| 3/3", t) for t in texts), texts
    assert not any(re.search(r"(^|\s)0%\|", t) for t in texts), texts


# ----------------------------------------------------------------------------- HTML export
def test_markdown_math_becomes_mathml_and_code_stays():
    src = "Inline $a_i$, display $$x^2$$ and \\(y\\); `$HOME` and costs $5 and $10.\n\n```\n$$not$$\n```"
    out = H.markdown_math_to_mathml(src)
    assert out.count("<math") == 3 and 'display="block"' in out
    assert "`$HOME`" in out and "$5 and $10" in out and "$$not$$" in out


def test_unconvertible_tex_shows_as_code_not_dollars(monkeypatch):
    import latex2mathml.converter
    monkeypatch.setattr(latex2mathml.converter, "convert", lambda *a, **k: 1 / 0)
    assert H.tex_to_mathml("x^2", display=True) == '<pre class="tlkit-tex">x^2</pre>'


def widget_nb():
    """A notebook as JupyterLab / nbclient saves widgets: views in outputs, state in the metadata."""
    nb = nbformat.v4.new_notebook()
    view = lambda mid: {"model_id": mid, "version_major": 2, "version_minor": 0}  # noqa: E731
    outputs = [
        nbformat.v4.new_output("display_data", {H.WIDGET_VIEW: view("bar"), "text/plain": "epochs:   0%|    | 0/3"}),
        nbformat.v4.new_output("display_data", {H.WIDGET_VIEW: view("closed"), "text/plain": "steps:   0%| | 0/4"}),
        nbformat.v4.new_output("display_data", {H.WIDGET_VIEW: view("pic"), "image/png": "iVBORw0KGgo=",
                                                "text/plain": "gallery"}),
        nbformat.v4.new_output("display_data", {H.WIDGET_VIEW: view("box"), "text/plain": "VBox(...)"}),
    ]
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=outputs)]
    model = lambda name, **state: {"model_name": name, "model_module": "@jupyter-widgets/controls",  # noqa: E731
                                   "model_module_version": "2.0.0", "state": state}
    nb.metadata["widgets"] = {H.WIDGET_STATE: {"version_major": 2, "version_minor": 0, "state": {
        "bar": model("HBoxModel", children=["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]),
        "l": model("HTMLModel", value="epochs: 100%"), "p": model("FloatProgressModel", value=3, max=3),
        "r": model("HTMLModel", value=" 3/3 [00:02&lt;00:00,  1.4it/s]"),
        "pic": model("VBoxModel"), "box": model("VBoxModel")}}}
    return nb


def test_widget_outputs_become_static():
    nb = H.offline_notebook(widget_nb())
    outs = nb.cells[0].outputs
    assert "widgets" not in nb.metadata and len(outs) == 3  # the closed bar is dropped
    assert outs[0]["data"] == {"text/plain": "epochs: 100%|##########| 3/3 [00:02<00:00,  1.4it/s]"}
    assert set(outs[1]["data"]) == {"image/png", "text/plain"}
    assert outs[2]["data"] == {"text/plain": H.WIDGET_NOTE}


def test_offline_page_loads_nothing_from_the_network(tmp_path):
    nb = widget_nb()
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("$$\\frac{a}{b}$$"))
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, str(path))
    assert H.export_html(path) == "run.html"
    page = (tmp_path / "run.html").read_text()
    assert not re.findall(r"<script[^>]+src=", page) and not re.findall(r"<link[^>]+href=[\"']?https?:", page)
    assert "embed-amd" not in page and "require.min.js" not in page and "MathJax.Hub" not in page
    assert "widget-state+json" not in page and "$$" not in page and "<math" in page


def test_export_failure_is_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "broken.ipynb"
    bad.write_text("{not json")
    assert H.export_html(bad) is None and "HTML export of broken.ipynb failed" in capsys.readouterr().err


# ----------------------------------------------------------------------------- saveState, pins
def test_widget_save_state_is_shipped():
    overrides = json.loads((REPO / "binder" / "overrides.json").read_text())
    assert overrides["@jupyter-widgets/jupyterlab-manager:plugin"]["saveState"] is True
    assert "install_overrides.py" in (REPO / "binder" / "postBuild").read_text()
    assert "install_overrides.py" in (REPO / "Makefile").read_text()
