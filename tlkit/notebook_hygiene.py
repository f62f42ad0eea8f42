"""Keep committed notebooks clean: no outputs, a `parameters` cell. `python -m tlkit.notebook_hygiene strip|check FILES`."""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

__all__ = ["problems", "strip"]


def problems(path: Path) -> list[str]:
    """Why a committed notebook is not clean (empty list when it is)."""
    nb = nbformat.read(str(path), as_version=4)
    found = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    if any(c.get("outputs") or c.get("execution_count") for c in code):
        found.append("has stored outputs (run `make strip`)")
    if not code or "parameters" not in code[0].metadata.get("tags", []):
        found.append("its first code cell is not tagged 'parameters'")
    return found


def strip(path: Path) -> bool:
    """Remove outputs and execution counts in place; True when the file changed."""
    nb = nbformat.read(str(path), as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count")):
            cell.outputs, cell.execution_count, changed = [], None, True
        for key in ("execution", "papermill"):
            if cell.metadata.pop(key, None) is not None:
                changed = True
    for key in ("papermill", "widgets"):
        if nb.metadata.pop(key, None) is not None:
            changed = True
    if changed:
        nbformat.write(nb, str(path))
    return changed


if __name__ == "__main__":
    verb, files = sys.argv[1], [Path(p) for p in sys.argv[2:]]
    if verb == "strip":
        for f in files:
            print(f"{f}: {'stripped' if strip(f) else 'clean'}")
    else:
        bad = {f: problems(f) for f in files}
        for f, why in bad.items():
            for w in why:
                print(f"{f}: {w}")
        sys.exit(1 if any(bad.values()) else 0)
