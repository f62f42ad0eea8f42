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


def crops_folder(root: Path, source: Path, classes: list[str], per_class: int, size: int = 96, seed: int = 0) -> Path:
    """A class-folder dataset of real photos, as large as asked: seeded random crops (half to all of the
    shorter side, mirrored at random) of a shipped dataset's images, `size` px JPEGs, no train/val split.

    Why: big-folder and any-folder tests need thousands of real images without shipping them.
    """
    import random

    from PIL import Image, ImageOps
    rng = random.Random(seed)
    for cls in classes:
        photos = sorted(p for p in source.rglob(f"{cls}/*.jpg"))
        assert photos, f"no photos of {cls} under {source}"
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            with Image.open(photos[i % len(photos)]) as im:
                im = im.convert("RGB")
                side = int(min(im.size) * rng.uniform(0.5, 1.0))
                x, y = rng.randint(0, im.width - side), rng.randint(0, im.height - side)
                crop = im.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
                if rng.random() < 0.5:
                    crop = ImageOps.mirror(crop)
                crop.save(root / cls / f"{cls}_{i:05d}.jpg", quality=85)
    return root
