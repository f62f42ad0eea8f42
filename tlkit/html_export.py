"""HTML copies of executed notebooks that read offline: no CDN script, math as MathML, no empty widget outputs.

nbconvert's default page loads require.js, MathJax and (with widget state) the widget renderer from
CDNs: offline its formulas show as raw ``$$...$$`` and every widget output is empty. `export_html`
writes a page that needs no network at all:

* math in Markdown cells (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``) and ``text/latex``
  outputs is converted to MathML (latex2mathml) before export; browsers render MathML natively;
* a widget output keeps its static picture (the tlkit widgets leave a PNG in headless runs) and
  drops the widget reference; a tqdm bar is written as its final text line (from the saved widget
  state) or dropped when it had closed; any other widget becomes a one-line note;
* the template leaves out require.js, MathJax, mermaid and the widget-state / embed-amd.js scripts.
"""
from __future__ import annotations

import copy
import html
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["export_html", "offline_notebook", "offline_html", "tex_to_mathml", "WIDGET_NOTE",
           "markdown_math_to_mathml", "tqdm_line", "STATIC_KEYS", "WIDGET_STATE", "WIDGET_VIEW"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_NOTE = "[interactive widget: open this notebook in JupyterLab and run it to use the controls]"
STATIC_KEYS = ("image/png", "image/jpeg", "image/svg+xml", "text/html", "text/markdown", "text/latex")
_TQDM_TEXT = re.compile(r"^.*?\d+%\|.*\|")  # tqdm's text fallback: 'desc:  0%|          | 0/3 [...]'

_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

# fenced code and inline code are left alone; then display math before inline math
_MATH = re.compile(
    r"(?P<fence>^(?P<ticks>```|~~~).*?^(?P=ticks)[ \t]*$)"
    r"|(?P<code>(?P<bt>`+).+?(?P=bt))"
    r"|\$\$(?P<dd>.+?)\$\$"
    r"|\\\[(?P<db>.+?)\\\]"
    r"|\\\((?P<ib>.+?)\\\)"
    r"|(?<![\\$\w])\$(?P<id>[^$\s](?:[^$\n]*?[^$\s\\])?)\$(?!\d)",
    re.S | re.M)


def tex_to_mathml(tex: str, display: bool = False) -> str:
    """MathML for one TeX formula; if it cannot be converted, the TeX source in a <code> (never raw `$`)."""
    try:
        from latex2mathml.converter import convert
        return convert(tex.strip(), display="block" if display else "inline")
    except Exception:  # an unsupported command, or latex2mathml missing: readable source, no dollars
        tag = "pre" if display else "code"
        return f'<{tag} class="tlkit-tex">{html.escape(tex.strip())}</{tag}>'


def markdown_math_to_mathml(source: str) -> str:
    """Replace the math of a Markdown cell by MathML (code blocks and code spans untouched)."""
    def repl(m: re.Match) -> str:
        if m.group("fence") or m.group("code"):
            return m.group(0)
        display = m.group("dd") is not None or m.group("db") is not None
        tex = next(g for g in (m.group("dd"), m.group("db"), m.group("ib"), m.group("id")) if g is not None)
        out = tex_to_mathml(tex, display)
        return f"\n\n{out}\n\n" if display else out
    return _MATH.sub(repl, source)


def _widget_state(nb) -> dict:
    return (nb.metadata.get("widgets") or {}).get(WIDGET_STATE, {}).get("state", {})


def _child(state: dict, ref: Any) -> dict:
    if isinstance(ref, str) and ref.startswith("IPY_MODEL_"):
        return state.get(ref[len("IPY_MODEL_"):], {})
    return {}


def _strip_tags(value: str) -> str:
    return html.unescape(re.sub(r"<[^>]*>", "", value or "")).strip()


def tqdm_line(state: dict, model_id: str) -> str | None:
    """The final text line of a saved tqdm notebook bar (HBox: HTML, FloatProgress, HTML), or None."""
    model = state.get(model_id)
    if not model or model.get("model_name") != "HBoxModel":
        return None
    children = [_child(state, c) for c in model.get("state", {}).get("children", [])]
    names = [c.get("model_name") for c in children]
    if names != ["HTMLModel", "FloatProgressModel", "HTMLModel"]:
        return None
    desc = _strip_tags(children[0]["state"].get("value", ""))
    bar = children[1]["state"]
    right = _strip_tags(children[2]["state"].get("value", ""))
    value, most = float(bar.get("value") or 0), float(bar.get("max") or 0)
    if most > 0:
        frac = min(max(value / most, 0.0), 1.0)
        filled = int(round(frac * 10))
        left = desc if desc.endswith("%") else f"{desc} {frac:4.0%}".strip()  # tqdm puts the % in the left text
        return f"{left}|{'#' * filled}{' ' * (10 - filled)}| {right}"
    return f"{desc} {right}".strip()


def _static_output(output, state: dict):
    """The output without its widget reference; None when nothing worth keeping is left."""
    data = output.get("data", {})
    view = data.get(WIDGET_VIEW)
    if view is None:
        return output
    rest = {k: v for k, v in data.items() if k != WIDGET_VIEW}
    if any(k in rest for k in STATIC_KEYS):  # a picture (tlkit widgets in headless runs) or HTML
        output["data"] = rest
        return output
    model_id = view.get("model_id", "") if isinstance(view, dict) else ""
    text = rest.get("text/plain", "")
    text = "".join(text) if isinstance(text, list) else text
    line = tqdm_line(state, model_id)
    if line is None and _TQDM_TEXT.match(text or ""):
        if model_id not in state:
            return None  # a progress bar that closed itself (leave=False): the live notebook hid it too
        line = text
    output["data"] = {"text/plain": line if line is not None else WIDGET_NOTE}
    return output


def offline_notebook(nb):
    """A copy of `nb` ready for an offline page: math as MathML, widget outputs made static, no widget state."""
    nb = copy.deepcopy(nb)
    state = _widget_state(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = markdown_math_to_mathml(cell.source)
        elif cell.cell_type == "code":
            outputs = []
            for out in cell.get("outputs", []):
                if out.get("output_type") in ("display_data", "execute_result"):
                    data = out.get("data", {})
                    if "text/latex" in data and "text/html" not in data:
                        tex = "".join(data["text/latex"]) if isinstance(data["text/latex"], list) else data["text/latex"]
                        data["text/html"] = markdown_math_to_mathml(tex)
                    out = _static_output(out, state)
                    if out is None:
                        continue
                outputs.append(out)
            cell.outputs = outputs
    nb.metadata.pop("widgets", None)
    return nb


def offline_html(nb) -> str:
    """The HTML page of `nb` (a NotebookNode) that makes no network request."""
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(extra_loaders=[jinja2.DictLoader({"tlkit_offline.html.j2": _TEMPLATE})],
                            template_file="tlkit_offline.html.j2")
    body, _ = exporter.from_notebook_node(offline_notebook(nb))
    return body


def export_html(nb_path: Path) -> str | None:
    """Write an offline HTML copy of an executed notebook next to it; returns its file name (None on failure)."""
    nb_path = Path(nb_path)
    try:
        import nbformat
        body = offline_html(nbformat.read(str(nb_path), as_version=4))
    except Exception as exc:  # an export problem must not fail the lesson
        print(f"HTML export of {nb_path.name} failed: {exc}", file=sys.stderr)
        return None
    target = nb_path.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target.name
