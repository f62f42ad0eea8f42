"""Build tlkit's embedded quick-preset data pack (tlkit/pack/) from full-size copies of the datasets.

    python tools/make_data_pack.py SOURCE            # rebuild tlkit/pack from SOURCE/<folder>/...
    python tools/make_data_pack.py SOURCE --check    # rebuild into a temporary folder and compare manifests

SOURCE holds `hymenoptera_data/`, `dtd10/` and `imagenette_subset/` at full size, each with its
PROVENANCE.txt (e.g. the folders tlkit downloads into ~/.cache/tlkit, or the course's development
copies). Every image is re-encoded by `tlkit.fetch.downscale` (shorter side SHORTER_SIDE[folder], Lanczos,
JPEG quality QUALITY), so the pack serves every quick preset in under 25 MB: image sizes up to 139 px,
and up to 195 px for hymenoptera, whose lesson 08 needs them (its probe and recipe at 192 px).
Each dataset keeps its PROVENANCE.txt, extended by this derivation, and gets a fresh MANIFEST.sha256.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

import PIL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tlkit import fetch  # noqa: E402
from tlkit.data import largest_image_size  # noqa: E402

PACK = Path(__file__).resolve().parent.parent / "tlkit" / "pack"
SHORTER_SIDE = {"hymenoptera_data": 224, "dtd10": 160, "imagenette_subset": 160}
QUALITY = 80
IMAGENETTE_PACK_PER_CLASS = {"train": 30, "val": 10}   # seeded from imagenette_subset's 150 + 50
PHOTO_SUFFIXES = {".jpg", ".jpeg"}


def every_file(src: Path) -> list[Path]:
    """All data files of a dataset folder (manifest and provenance excluded), in a fixed order."""
    return [p for p in sorted(src.rglob("*")) if p.is_file() and p.name not in fetch.METADATA_FILES]


def imagenette_pick(src: Path) -> list[Path]:
    """A seeded sample per class and split: one random.Random(0), classes sorted, train then val."""
    rng = random.Random(0)
    picked = []
    for cls in sorted(d.name for d in (src / "train").iterdir() if d.is_dir()):
        for split, n in IMAGENETTE_PACK_PER_CLASS.items():
            picked += rng.sample(sorted((src / split / cls).iterdir()), n)
    return picked


DATASETS = {
    "hymenoptera_data": (every_file, "all 397 photos; the placeholder train/ants/imageNotFound.gif is copied "
                                     "unchanged, so the pack skips it exactly as the official download does"),
    "dtd10": (every_file, "all 1200 images (120 per class)"),
    "imagenette_subset": (imagenette_pick, "a seeded sample of 30 train + 10 val images per class "
                                           "(random.Random(0); classes sorted; train then val)"),
}


def derivation_note(folder: str, what: str, n: int) -> str:
    """The text appended to a dataset's PROVENANCE.txt."""
    side = SHORTER_SIDE[folder]
    return (f"\n--- tlkit embedded quick-preset pack (tools/make_data_pack.py) ---\n"
            f"derived from the full-size '{folder}' above: {what}; {n} files.\n"
            f"each photo converted to RGB, shorter side resized to {side} px (Lanczos, never upscaled),\n"
            f"saved as JPEG quality {QUALITY} under its original name (Pillow {PIL.__version__}); "
            f"other files copied unchanged.\n"
            f"enough for image sizes up to {largest_image_size(side)} px; larger sizes use a "
            f"full-size copy (downloaded when online).\n")


def build(source: Path, out: Path) -> dict:
    """Write the pack into `out`; return its index (PACK.json's content)."""
    index = {}
    for folder, (pick, what) in DATASETS.items():
        src, dst = source / folder, out / folder
        files = pick(src)
        for path in files:
            target = dst / path.relative_to(src)
            if path.suffix.lower() in PHOTO_SUFFIXES:
                fetch.downscale(path, target, SHORTER_SIDE[folder], QUALITY)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        provenance = (src / "PROVENANCE.txt").read_text() if (src / "PROVENANCE.txt").is_file() else ""
        (dst / "PROVENANCE.txt").write_text(provenance + derivation_note(folder, what, len(files)))
        fetch.write_manifest(dst)
        index[folder] = {"shorter_side": SHORTER_SIDE[folder], "jpeg_quality": QUALITY, "files": len(files),
                         "bytes": sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())}
    (out / "PACK.json").write_text(json.dumps({"datasets": index}, indent=2) + "\n")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder holding the full-size dataset folders")
    parser.add_argument("--check", action="store_true", help="rebuild into a temporary folder and compare")
    args = parser.parse_args(argv)
    missing = [f for f in DATASETS if not (args.source / f).is_dir()]
    if missing:
        parser.error(f"{args.source} lacks {', '.join(missing)}")
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(args.source, Path(tmp))
            differ = [f for f in DATASETS
                      if (Path(tmp) / f / fetch.MANIFEST).read_text() != (PACK / f / fetch.MANIFEST).read_text()]
        print("pack matches a rebuild" if not differ else f"pack differs from a rebuild: {', '.join(differ)}")
        return 1 if differ else 0
    shutil.rmtree(PACK, ignore_errors=True)
    index = build(args.source, PACK)
    for folder, entry in index.items():
        print(f"{folder:18s} {entry['files']:5d} files {entry['bytes'] / 1e6:6.2f} MB")
    print(f"{'total':18s} {sum(e['files'] for e in index.values()):5d} files "
          f"{sum(e['bytes'] for e in index.values()) / 1e6:6.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
