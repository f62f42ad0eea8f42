"""Reliability of training: bad arguments refused before any step, unsafe or damaged files refused, atomic saves."""
import math
import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlkit import schedules, tta
from tlkit.data import DataLoaders
from tlkit.errors import CheckpointError, ParameterError
from tlkit.lessons.l03_lr_finder import lr_grid
from tlkit.lr_finder import lr_find
from tlkit.train import Learner
from tlkit.lessons import l06_tta_ensembles

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: one thread is faster




def tiny_learner(seed=0):
    """Two separable blobs of 2x4x4 'images' and a linear net: a fit epoch takes milliseconds."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(32) % 2
    x = torch.randn(32, 2, 4, 4, generator=g) + (y.float() * 2 - 1).view(-1, 1, 1, 1)
    dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
                      DataLoader(TensorDataset(x, y), batch_size=16), ["a", "b"], None)
    torch.manual_seed(seed)
    return Learner(nn.Sequential(nn.Flatten(), nn.Linear(32, 2)), dls, progress=False)


def weights(learn):
    return {k: v.clone() for k, v in learn.net.state_dict().items()}


def unchanged(learn, before) -> bool:
    return all(torch.equal(v, learn.net.state_dict()[k]) for k, v in before.items())


class Counter:
    """A fit callback counting training steps, and a forward hook counting forward passes."""

    def __init__(self, net=None):
        self.steps = self.forwards = 0
        if net is not None:
            net.register_forward_hook(self.hook)

    def __call__(self, event, learn):
        self.steps += event == "after_batch"

    def hook(self, *_):
        self.forwards += 1


def assert_names(exc_info, *parts):
    message = str(exc_info.value)
    for part in parts:
        assert part in message, (part, message)


# ----------------------------------------------------------------------------- fit arguments
FIT_CASES = [
    ({"epochs": 0}, "epochs=0"),
    ({"epochs": -2}, "epochs=-2"),
    ({"epochs": 2.5}, "epochs=2.5"),
    ({"lr": -0.1}, "lr=-0.1"),
    ({"lr": 0}, "lr=0"),
    ({"lr": math.nan}, "lr=nan"),
    ({"lr": math.inf}, "lr=inf"),
    ({"lr": "0.1"}, "lr='0.1'"),
    ({"lr": slice(-1e-3, 1e-2)}, "lr=slice(-0.001, 0.01, None)"),
    ({"lr": slice(0)}, "lr=slice(None, 0, None)"),
    ({"lr": [1e-3, -1e-3]}, "lr=[0.001, -0.001]"),
    ({"lr": []}, "lr=[]"),
    ({"schedule": "cosine"}, "schedule='cosine'"),
    ({"resume": True}, "resume=True"),
    ({"callbacks": print}, "callbacks=<built-in function print>"),
    ({"callbacks": ["after_batch"]}, "callbacks=['after_batch']"),
]


@pytest.mark.parametrize("kwargs,named", FIT_CASES, ids=[named for _, named in FIT_CASES])
def test_fit_refuses_bad_arguments_before_any_step(kwargs, named):
    learn, counter = tiny_learner(), Counter()
    before = weights(learn)
    args = {"epochs": 1, "lr": 0.05, "callbacks": [counter], **kwargs}
    with pytest.raises(ParameterError) as exc_info:
        learn.fit(**args)
    assert_names(exc_info, named, "e.g.")
    assert counter.steps == 0 and unchanged(learn, before) and learn.opt is None and learn.history.empty


def test_fit_refuses_a_negative_schedule_multiplier_before_the_step():
    learn, counter = tiny_learner(), Counter()
    before = weights(learn)
    with pytest.raises(ParameterError) as exc_info:
        learn.fit(1, 0.05, schedule=lambda t: -1.0, callbacks=[counter])
    assert_names(exc_info, "schedule=", "-1.0")
    assert counter.steps == 0 and unchanged(learn, before)


# ----------------------------------------------------------------------------- lr_find / lr_grid arguments
LR_FIND_CASES = [
    ({"start_lr": -1e-7}, "start_lr=-1e-07"),
    ({"start_lr": 0}, "start_lr=0"),
    ({"end_lr": math.nan}, "end_lr=nan"),
    ({"start_lr": 1.0, "end_lr": 0.1}, "start_lr=1.0"),
    ({"num_it": 1}, "num_it=1"),
    ({"num_it": 0}, "num_it=0"),
    ({"smooth": 1.0}, "smooth=1.0"),
    ({"smooth": -0.1}, "smooth=-0.1"),
    ({"diverge": 0.5}, "diverge=0.5"),
    ({"mode": "cosine"}, "mode='cosine'"),
    ({"skip_end": -1}, "skip_end=-1"),
    ({"skip_start": -3}, "skip_start=-3"),
    ({"group_lrs": slice(-1e-3, 1e-2)}, "group_lrs=slice(-0.001, 0.01, None)"),
]


@pytest.mark.parametrize("kwargs,named", LR_FIND_CASES, ids=[named for _, named in LR_FIND_CASES])
@pytest.mark.parametrize("on", ["learner", "model"])
def test_lr_find_refuses_bad_arguments_before_any_step(kwargs, named, on):
    learn = tiny_learner()
    counter, before = Counter(learn.net), weights(learn)
    target = learn if on == "learner" else learn.net
    loader = None if on == "learner" else learn.dls.train
    with pytest.raises(ParameterError) as exc_info:
        lr_find(target, loader, warn=False, **kwargs)
    assert_names(exc_info, named, "e.g.")
    assert counter.forwards == 0 and unchanged(learn, before)


def test_lr_grid_refuses_a_bad_rate_before_training_any():
    built = []
    with pytest.raises(ParameterError) as exc_info:
        lr_grid(lambda: built.append(1) or tiny_learner(), [1e-2, -1e-2], epochs=1)
    assert_names(exc_info, "lrs[1]=-0.01")
    assert built == []


# ----------------------------------------------------------------------------- schedules and TTA arguments
SCHEDULE_CASES = [
    (lambda: schedules.sgdr(0, 1), "n_cycles=0"),
    (lambda: schedules.sgdr(3, 0), "cycle_len=0"),
    (lambda: schedules.sgdr(3, -1.0), "cycle_len=-1.0"),
    (lambda: schedules.sgdr(3, 1, cycle_mult=0.5), "cycle_mult=0.5"),
    (lambda: schedules.sgdr(3, 1, min_frac=1.5), "min_frac=1.5"),
    (lambda: schedules.sgdr(3, 1, warmup=-1), "warmup=-1"),
    (lambda: schedules.cosine(0), "total_epochs=0"),
    (lambda: schedules.cosine(5, warmup=5), "warmup=5"),
    (lambda: schedules.cosine(5, min_frac=-0.1), "min_frac=-0.1"),
    (lambda: schedules.one_cycle(-10), "total_epochs=-10"),
    (lambda: schedules.one_cycle(10, pct_start=0), "pct_start=0"),
    (lambda: schedules.one_cycle(10, div=-25), "div=-25"),
    (lambda: schedules.step_decay([5], gamma=0), "gamma=0"),
    (lambda: schedules.step_decay([-1]), "milestones[0]=-1"),
    (lambda: schedules.constant(total_epochs=-5), "total_epochs=-5"),
    (lambda: schedules.with_warmup(schedules.cosine(10), 2, start_frac=2.0), "start_frac=2.0"),
    (lambda: schedules.lr_values(schedules.cosine(10), steps_per_epoch=0), "steps_per_epoch=0"),
    (lambda: schedules.lr_values(schedules.cosine(10), base_lr=-1e-3), "base_lr=-0.001"),
]


@pytest.mark.parametrize("make,named", SCHEDULE_CASES, ids=[named for _, named in SCHEDULE_CASES])
def test_schedule_constructors_refuse_bad_arguments(make, named):
    with pytest.raises(ParameterError) as exc_info:
        make()
    assert_names(exc_info, named, "e.g.")


PROBS = torch.tensor([[0.9, 0.1]])


TTA_CASES = [
    (lambda: tta.blend(PROBS, PROBS, beta=1.5), "beta=1.5"),
    (lambda: tta.blend(PROBS, PROBS, beta=-0.1), "beta=-0.1"),
    (lambda: l06_tta_ensembles.tta_table(torch.zeros(2, 10, 2), torch.zeros(2, dtype=torch.long), beta=2), "beta=2"),
    (lambda: l06_tta_ensembles.tta_table(torch.zeros(2, 10, 2), torch.zeros(2, dtype=torch.long), hows=["mean"]),
     "hows=['mean']"),
    (lambda: tta.AugViews(print, print, n=0), "n=0"),
    (lambda: tta.aug_transform(32, n=-1), "n=-1"),
    (lambda: tta.crop_views(torch.zeros(3, 8, 8), 4, mode="six"), "mode='six'"),
    (lambda: tta.CropViews(4, mode="bogus"), "mode='bogus'"),
    (lambda: tta.CropViews(-4), "size=-4"),
    (lambda: tta.merge(torch.zeros(1, 2, 2), how="median"), "how='median'"),
    (lambda: tta.view_transform(0), "size=0"),
    (lambda: tta.view_transform(32, crop_pct=1.5), "crop_pct=1.5"),
    (lambda: tta.seconds_per_image(nn.Identity(), torch.zeros(2, 3), views=0), "views=0"),
]


@pytest.mark.parametrize("call,named", TTA_CASES, ids=[named for _, named in TTA_CASES])
def test_tta_entry_points_refuse_bad_arguments(call, named):
    with pytest.raises(ParameterError) as exc_info:
        call()
    assert_names(exc_info, named, "e.g.")


def test_predict_views_refuses_a_bad_chunk_size_before_any_forward():
    learn = tiny_learner()
    counter = Counter(learn.net)
    with pytest.raises(ParameterError) as exc_info:
        tta.predict_views(learn.net, learn.dls.val, max_batch=0)
    assert_names(exc_info, "max_batch=0", "e.g.")
    assert counter.forwards == 0


# ----------------------------------------------------------------------------- unsafe and damaged files
class CreatesMarker:
    """Unpickling this object opens (creates) the marker file: the stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_malicious(path, marker, kind):
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": CreatesMarker(marker), "epochs": 1, "lr": "0.05"}
    if kind == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))


def refuse(entry, learn, path):
    """Load `path` through `entry`; returns the pytest ExceptionInfo of the CheckpointError."""
    counter = Counter()
    with pytest.raises(CheckpointError) as exc_info:
        if entry == "load":
            learn.load(path)
        else:
            learn.fit(1, 0.05, checkpoint=path.parent, resume=True, callbacks=[counter])
    assert counter.steps == 0
    return exc_info


FIXES = {"load": "save the model again", "resume": "resume=False"}


@pytest.mark.parametrize("kind", ["torch.save", "raw pickle"])
@pytest.mark.parametrize("entry", ["load", "resume"])
def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path, kind, entry):
    path, marker = tmp_path / "run" / "last.pt", tmp_path / "marker"
    write_malicious(path, marker, kind)
    learn = tiny_learner()
    before = weights(learn)
    exc_info = refuse(entry, learn, path)
    assert not marker.exists()
    assert_names(exc_info, str(path), FIXES[entry])
    if kind == "torch.save":
        assert_names(exc_info, "io.open", "could run any code")
    assert unchanged(learn, before) and learn.opt is None


def damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random bytes":
        path.write_bytes(random.Random(0).randbytes(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    else:  # a plain state dict: loadable, but not a file tlkit wrote
        torch.save(tiny_learner().net.state_dict(), path)


@pytest.mark.parametrize("how", ["truncated", "random bytes", "empty", "not a tlkit file"])
@pytest.mark.parametrize("entry", ["load", "resume"])
def test_a_damaged_file_names_its_path_and_what_to_do(tmp_path, how, entry):
    writer = tiny_learner()
    writer.fit(1, 0.05, checkpoint=tmp_path / "run")
    path = tmp_path / "run" / "last.pt"
    damage(path, how)
    learn = tiny_learner(seed=1)
    before = weights(learn)
    exc_info = refuse(entry, learn, path)
    assert_names(exc_info, str(path), FIXES[entry])
    assert unchanged(learn, before)


# ----------------------------------------------------------------------------- what files hold; atomic writes
def test_checkpoints_and_saved_models_load_with_weights_only(tmp_path):
    learn = tiny_learner()
    learn.fit(1, np.float64(0.05), checkpoint=tmp_path / "run")  # numpy numbers end up in history and opt state
    saved = learn.save(tmp_path / "m.pt", classes=np.array(["a", "b"]), mean=np.float32(0.5))
    for path in (tmp_path / "run" / "last.pt", saved):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        torch.load(path, weights_only=True)
    state = tiny_learner(seed=1).load(saved)
    assert state["classes"] == ["a", "b"] and state["mean"] == 0.5


def test_save_refuses_extras_that_only_unpickling_code_could_restore(tmp_path):
    learn = tiny_learner()
    path = learn.save(tmp_path / "m.pt")
    before = path.read_bytes()
    with pytest.raises(ParameterError) as exc_info:
        learn.save(path, meta=CreatesMarker(tmp_path / "marker"))
    assert_names(exc_info, "meta=", "e.g.")
    assert path.read_bytes() == before


def half_written_save(obj, f, *args, **kwargs):
    """torch.save that dies half-way, as on a full disk or a killed process."""
    f = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    f.write(b"PK\x03\x04 half a file")
    f.flush()
    raise OSError("No space left on device")


WRITERS = {"save": (lambda learn, folder: learn.save(folder / "m.pt"), "m.pt"),
           "epoch checkpoint": (lambda learn, folder: learn.fit(1, 0.05, checkpoint=folder), "last.pt")}


@pytest.mark.parametrize("writer", WRITERS)
def test_an_interrupted_save_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path, monkeypatch, writer):
    write, name = WRITERS[writer]
    learn = tiny_learner()
    write(learn, tmp_path)
    before = (tmp_path / name).read_bytes()
    monkeypatch.setattr(torch, "save", half_written_save)
    with pytest.raises(OSError, match="No space"):
        write(learn, tmp_path)
    assert (tmp_path / name).read_bytes() == before
    assert os.listdir(tmp_path) == [name]
