"""Helpers the test modules import (conftest.py holds the fixtures; tests/browser has a conftest of its own)."""
from __future__ import annotations

import os
from pathlib import Path

# A full-size dataset folder, if the developer has one (conftest moves TLKIT_DATA here before the tests run).
FULL_DATA = Path(os.environ["TLKIT_FULL_DATA"]) if os.environ.get("TLKIT_FULL_DATA") else None


def recorded_claims(metrics: dict, expected_ids) -> dict[int, dict]:
    """A lesson's recorded verdicts, checked against the contract: one per expected claim, each verdict the
    one its interval implies, the effect inside its interval. Returns them by claim id."""
    from tlkit.claims import verdict_of
    entries = {e["id"]: e for e in metrics["claims"]}
    assert sorted(entries) == sorted(expected_ids)
    for e in entries.values():
        low, high = e["ci"]
        assert low <= e["effect"] <= high, e
        assert e["verdict"] == verdict_of(low, high), e
        assert e["n"] >= 2 and e["what"], e
    return entries


def write_notebook(path: Path, params: str, *cells: str) -> Path:
    """A python3 notebook on disk: a `parameters`-tagged cell, then one code cell per string in `cells`."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    tagged = nbformat.v4.new_code_cell(params)
    tagged.metadata["tags"] = ["parameters"]
    nb.cells = [tagged] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))
    return path
