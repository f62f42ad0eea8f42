"""Bad input at the edge: lesson parameters and dataset folders are refused (or repaired) before any work,
with errors that name the argument; property-based tests for parameter validation and folder scanning."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

import tlkit
from tlkit import data
from tlkit.errors import DatasetLayoutError, ParameterError


def photo(path: Path, seed: int = 0, size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------- lesson parameters

QUICK = dict(epochs=2, head_epochs=3, image_size=96, batch_size=16, lr=3e-3, head_lr=1e-3, n_cycles=4,
             cycle_len=1, cycle_mult=1, max_train=300, lr_find_iters=30, sweep_images=40, finetune_from=2,
             max_workers=2, ratio_similar=10, grid_lrs=[1e-3, 1e-2], subset=1.0, curve_every=3)


@pytest.mark.parametrize("name, value", [
    ("epochs", -1), ("epochs", 0), ("head_epochs", -3), ("image_size", 0), ("batch_size", -4), ("lr", -0.1),
    ("lr", 0.0), ("head_lr", float("nan")), ("n_cycles", 0), ("cycle_len", 0), ("cycle_mult", -1),
    ("max_train", 0), ("lr_find_iters", -5), ("sweep_images", 0), ("finetune_from", -1), ("max_workers", -1),
    ("ratio_similar", 0), ("grid_lrs", [1e-3, -1e-2]), ("subset", 0.0), ("curve_every", 0)])
def test_setup_refuses_values_that_would_do_harm(name, value):
    with pytest.raises(ParameterError) as err:
        tlkit.setup(preset="quick", quick=QUICK, verbose=False, **{name: value})
    assert f"{name}=" in str(err.value) and "e.g." in str(err.value)


def test_setup_keeps_every_valid_preset_value():
    cfg = tlkit.setup(preset="quick", quick=QUICK, verbose=False, max_train=None)
    assert cfg.values == {**QUICK, "max_train": 300}


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(["epochs", "image_size", "batch_size", "n_cycles", "max_val", "lr_find_iters"]),
       value=st.integers(-10**6, 10**6))
def test_setup_accepts_a_count_exactly_when_it_is_positive(name, value):
    quick = {name: 3}
    if value >= 1:
        assert tlkit.setup(preset="quick", quick=quick, verbose=False, **{name: value}).values[name] == value
    else:
        with pytest.raises(ParameterError, match=f"{name}={value}"):
            tlkit.setup(preset="quick", quick=quick, verbose=False, **{name: value})


@settings(max_examples=150, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_setup_accepts_a_learning_rate_exactly_when_it_is_finite_and_positive(value):
    ok = np.isfinite(value) and value > 0
    if ok:
        assert tlkit.setup(preset="quick", quick={"lr": 1e-3}, verbose=False, lr=value).lr == value
    else:
        with pytest.raises(ParameterError, match="lr="):
            tlkit.setup(preset="quick", quick={"lr": 1e-3}, verbose=False, lr=value)


# ---------------------------------------------------------------- dataset folders

def test_empty_class_folders_are_dropped_with_a_warning_that_names_them(tmp_path):
    for cls in ("ants", "bees"):
        for k in range(5):
            photo(tmp_path / "ds" / cls / f"{k}.jpg", k)
    (tmp_path / "ds" / "wasps").mkdir()
    (tmp_path / "ds" / "moths").mkdir()
    (tmp_path / "ds" / "moths" / "readme.txt").write_text("no photos yet")
    data.scan_folder.cache_clear()
    with pytest.warns(UserWarning, match=r"ignored 2 class folder\(s\) with no usable image: moths, wasps"):
        splits = data.get_splits(tmp_path / "ds", val_fraction=0.4)
    assert splits.classes == ["ants", "bees"] and sorted(set(splits.train.targets)) == [0, 1]


def test_a_single_usable_class_is_a_layout_error(tmp_path):
    for k in range(6):
        photo(tmp_path / "ds" / "ants" / f"{k}.jpg", k)
    (tmp_path / "ds" / "bees").mkdir()
    data.scan_folder.cache_clear()
    with pytest.raises(DatasetLayoutError, match="at least two"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.get_splits(tmp_path / "ds")


@pytest.mark.parametrize("kwargs, name", [({"val_fraction": 1.0}, "val_fraction"), ({"val_fraction": 0}, "val_fraction"),
                                          ({"image_size": 0}, "image_size")])
def test_get_splits_names_the_argument_it_refuses(kwargs, name):
    with pytest.raises(ParameterError, match=f"{name}="):
        data.get_splits("hymenoptera", **kwargs)


@pytest.mark.parametrize("kwargs, name", [({"image_size": 0}, "image_size"), ({"batch_size": 0}, "batch_size"),
                                          ({"fraction": 1.5}, "fraction"), ({"image_size": -32}, "image_size")])
def test_dataloaders_refuse_before_any_image_is_decoded(kwargs, name, monkeypatch):
    splits = data.get_splits("digits")
    decoded = []
    monkeypatch.setattr(data.ImageList, "image", lambda self, i: decoded.append(i))
    with pytest.raises(ParameterError, match=f"{name}="):
        data.dataloaders(splits, **kwargs)
    assert decoded == []


def test_a_split_too_small_for_every_class_says_what_to_do(tmp_path):
    for cls in ("a", "b", "c"):
        for k in range(2):
            photo(tmp_path / "ds" / cls / f"{k}.jpg", k)
    data.scan_folder.cache_clear()
    with pytest.raises(DatasetLayoutError, match=r"cannot split 6 images of 3 classes.*val_fraction=0.2"):
        data.get_splits(tmp_path / "ds", val_fraction=0.2)


@pytest.mark.parametrize("n_train, batch_size", [(33, 16), (17, 8), (49, 16)])
def test_training_never_sees_a_batch_of_one(n_train, batch_size):
    """At 32 px a last batch of one image broke BatchNorm; whether it happened hung on len(train) % batch_size."""
    digits = data.get_splits("digits")
    splits = data.Splits(digits.train.take(range(n_train)), digits.val.take(range(20)), digits.classes)
    dls = data.dataloaders(splits, image_size=32, batch_size=batch_size, augment=False, seed=0)
    assert min(len(y) for _, y in dls.train) > 1
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    learn = tlkit.Learner(net, dls, progress=False)
    learn.fit(2, 1e-3)                                      # raised "Expected more than 1 value per channel"
    assert len(dls.train) == n_train // batch_size and len(learn.history) == 2


# property-based folder scanning: random mixes of good, corrupt, empty and non-image files
KINDS = st.sampled_from(["photo", "png", "truncated", "garbage", "empty", "text", "gif"])


def write(path: Path, kind: str, seed: int) -> bool:
    """Write one file of `kind`; return whether it is a usable image."""
    if kind == "photo":
        photo(path.with_suffix(".jpg"), seed)
    elif kind == "png":
        photo(path.with_suffix(".png"), seed)
    elif kind == "truncated":
        good = photo(path.with_suffix(".jpg"), seed, size=(64, 48))
        good.write_bytes(good.read_bytes()[:200])
    elif kind == "garbage":
        path.with_suffix(".jpg").write_bytes(bytes(np.random.default_rng(seed).integers(0, 255, 300, dtype=np.uint8)))
    elif kind == "empty":
        path.with_suffix(".jpeg").write_bytes(b"")
    elif kind == "text":
        path.with_suffix(".txt").write_text("notes")
    elif kind == "gif":
        Image.new("RGB", (8, 8)).save(path.with_suffix(".gif"))
    return kind in ("photo", "png")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.lists(st.lists(KINDS, max_size=6), min_size=1, max_size=4))
def test_scanning_keeps_every_valid_image_and_reports_every_other_file(layout, tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    valid, invalid = set(), set()
    for c, kinds in enumerate(layout):
        (root / f"class{c}").mkdir()
        for k, kind in enumerate(kinds):
            good = write(root / f"class{c}" / f"f{k}", kind, 10 * c + k)
            target = next((root / f"class{c}").glob(f"f{k}.*"))
            (valid if good else invalid).add(str(target))
    usable_classes = sum(any(kind in ("photo", "png") for kind in kinds) for kinds in layout)
    data.scan_folder.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if usable_classes < 2:
            with pytest.raises(DatasetLayoutError):
                data.scan_folder(str(root))
            return
        scan = data.scan_folder(str(root))
    assert {p for p, _ in scan.samples} == valid
    assert {p for p, _ in scan.skipped} == invalid
    assert len(scan.classes) == usable_classes
    for path, label in scan.samples:                        # labels follow the kept class folders
        assert Path(path).parent.name == scan.classes[label]
