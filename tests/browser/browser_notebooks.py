"""Short copies of lessons 02, 03 and 04 for the browser tests: tiny parameters, cut after the widget cell.

The cells after each lesson's widget train networks for minutes; the widgets only need what comes
before them. Each copy keeps every cell up to and including the widget cell (so "Run All" still runs
the lesson's own code in order) and appends the tiny parameters to the lesson's parameters cell.
"""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

LESSONS = {
    "02_augmentation_gallery": ("show_gallery(", dict(
        preset="quick", image_size=32, subset=0.2, pca_images=6, draws=3)),
    "03_lr_finder": ("lr_finder_view(result", dict(
        preset="quick", image_size=64, batch_size=8, subset=0.25, num_it=40)),
    "04_sgdr": ("schedule_explorer(", dict(preset="quick")),
}


def widget_cell_index(cells: list, marker: str) -> int:
    for i, cell in enumerate(cells):
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and marker in src and "import" not in src.split(marker)[0].splitlines()[-1]:
            return i
    raise LookupError(f"no code cell calls {marker!r}")


def short_copy(stem: str, dest: Path) -> Path:
    """Write the short copy of lesson `stem` into `dest`; returns its path."""
    marker, params = LESSONS[stem]
    nb = json.loads((REPO / "notebooks" / f"{stem}.ipynb").read_text())
    cells = nb["cells"][: widget_cell_index(nb["cells"], marker) + 1]
    p = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    extra = "\n# browser test: tiny parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items()) + "\n"
    p["source"] = "".join(p["source"]) + extra
    for c in cells:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    nb["cells"] = cells
    path = dest / f"{stem}.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    return path
