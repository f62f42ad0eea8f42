"""The fit cache: a rerun with the same inputs reads the fit back, any changed input trains again, and a damaged,
foreign or half-written entry is never served."""
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlkit import Learner, NonFiniteLossError, data, fit_cache, schedules
from tlkit.train import on

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The fit cache on, in a folder of its own, for this test only."""
    monkeypatch.delenv("TLKIT_FIT_CACHE", raising=False)
    folder = fit_cache.use(tmp_path / "fits")
    yield folder
    fit_cache.use(None)


def images(n=40, seed=0):
    """Random 12x12 photos of two classes (the brighter class is 1), with an augmenting transform."""
    rng = np.random.default_rng(seed)
    targets = [i % 2 for i in range(n)]
    items = [np.clip(rng.normal(90 + 60 * t, 30, (12, 12, 3)), 0, 255).astype(np.uint8) for t in targets]
    return data.ImageList(items, targets, ["dark", "bright"], data.train_transform(8, augment=True))


def net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(4, 2))


def learner(seed=0, loader_seed=0, **kw):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(loader_seed)
    train = DataLoader(images(), batch_size=8, sampler=torch.utils.data.RandomSampler(images(), generator=generator))
    val = DataLoader(images(16, seed=1).with_transform(data.eval_transform(8)), batch_size=8)
    return Learner(net(), data.DataLoaders(train, val, ["dark", "bright"], None), progress=False, **kw)


def end_state(learn):
    """What a fit leaves behind that later code can see."""
    return {"weights": {k: v.clone() for k, v in learn.net.state_dict().items()},
            "modes": [m.training for m in learn.net.modules()],
            "next_draw": torch.rand(3), "opt_lr": [g["lr"] for g in learn.opt.param_groups],
            "sampler": learn.dls.train.sampler.generator.get_state()}


def assert_same(a, b):
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert a["modes"] == b["modes"] and a["opt_lr"] == b["opt_lr"]
    assert torch.equal(a["next_draw"], b["next_draw"]) and torch.equal(a["sampler"], b["sampler"])


def test_a_second_fit_with_the_same_inputs_is_read_back_and_leaves_exactly_what_training_would(cache):
    fit_cache.use(None)
    trained = learner()
    h_trained = trained.fit(2, 1e-2, schedule=schedules.cosine(2))
    h_trained_next = trained.fit(1, 1e-3)       # a second fit on the same learner: sampler and RNGs moved on
    expected = end_state(trained)

    fit_cache.use(cache)
    first = learner()
    first.fit(2, 1e-2, schedule=schedules.cosine(2))
    first.fit(1, 1e-3)
    assert len(list(cache.glob("*.pt"))) == 2

    again = learner()
    calls = []
    h_read = again.fit(2, 1e-2, schedule=schedules.cosine(2))
    h_read_next = again.fit(1, 1e-3)
    assert_same(end_state(again), expected)
    pd_cols = ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    assert h_read[pd_cols].equals(h_trained[pd_cols]) and h_read_next[pd_cols].equals(h_trained_next[pd_cols])
    assert len(again.history) == 3 and torch.equal(again.last_losses, trained.last_losses)
    # the read-back history keeps the timings of the run that trained (not a fraction of a second)
    assert h_read["seconds"].tolist() == first.history["seconds"].tolist()[:2]
    # a callback must see every batch: that fit trains, and is not stored
    again.fit(1, 1e-3, callbacks=[on("after_batch", lambda learn: calls.append(learn.step))])
    assert len(calls) == 5 and len(list(cache.glob("*.pt"))) == 2


def _changes():
    """One changed input each; every one must give a different key."""
    def weight(learn):
        with torch.no_grad():
            learn.net[0].weight[0, 0, 0, 0] += 1e-6

    def frozen(learn):
        learn.net[0].weight.requires_grad_(False)

    def mode(learn):
        learn.net[1].eval()

    def pixel(learn):
        learn.dls.train.dataset.items[3][0, 0, 0] ^= 1

    def label(learn):
        learn.dls.train.dataset.targets[0] = 1

    def crop(learn):
        learn.dls.train.dataset.transform = data.train_transform(9, augment=True)

    def hidden_setting(learn):     # a transform attribute its printed form does not show
        learn.dls.train.dataset.transform.transforms[-1].note = 1

    def module_setting(learn):     # an attribute its printed form does not show (timm's drop_rate, say)
        learn.net[0].note = 1

    def layout(learn):                # the Learner made it channels-last
        learn.net.to(memory_format=torch.contiguous_format)

    def rng(learn):
        pass   # `key` draws one number before describing this learner

    def sampler(learn):
        learn.dls.train.sampler.generator.manual_seed(1)

    def smoothing(learn):
        learn.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def pieces(learn):
        learn.micro_batch = 4

    def threads(learn):
        torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2)

    def wd(learn):
        learn.wd = 0.0

    return {f.__name__: f for f in (weight, frozen, mode, pixel, label, crop, hidden_setting, module_setting, layout,
                                    rng, sampler, smoothing, pieces, threads, wd)}


@pytest.mark.parametrize("change", sorted(_changes()))
def test_every_input_of_a_fit_is_in_its_key(change):
    def key(learn, epochs=2, lr=1e-2, schedule=None, seed=5):
        learn.opt = learn.make_optimizer(lr)
        torch.manual_seed(seed)                  # the same random state at each description
        if change == "rng" and learn is changed:
            torch.rand(1)
        return fit_cache.describe(learn, epochs, lr, schedule, True, 5)

    threads = torch.get_num_threads()
    changed = None
    base = key(learner())
    assert key(learner()) == base                # the same inputs name the same fit (nothing unstable in it)
    try:
        changed = learner()
        _changes()[change](changed)
        assert key(changed) != base
    finally:
        torch.set_num_threads(threads)
    assert key(learner(), epochs=3) != base and key(learner(), lr=2e-2) != base
    assert key(learner(), schedule=schedules.cosine(2)) != key(learner(), schedule=schedules.one_cycle(2))


EPS = 0.0


class ShiftedLoss(nn.Module):
    """A loss whose forward reads a module-level setting."""

    def forward(self, out, y):
        return F.cross_entropy(out + EPS, y)


def test_code_is_named_by_what_it_does_not_where_it_is_written(monkeypatch):
    constant, decaying = [lambda t: 1.0, lambda t: 0.1 ** t]      # one line, one qualified name
    assert fit_cache.value_id(constant) != fit_cache.value_id(decaying)
    before = fit_cache.value_id(ShiftedLoss())
    monkeypatch.setattr(sys.modules[__name__], "EPS", 1.0)
    assert fit_cache.value_id(ShiftedLoss()) != before               # a global its method reads
    import random
    assert fit_cache.value_id(random.Random(0)) != fit_cache.value_id(random.Random(1))


def test_numpy_numbers_as_fit_arguments_are_keyed_like_python_ones(cache):
    learner().fit(np.int64(1), np.float64(1e-2), validate=np.int64(1))
    assert len(list(cache.glob("*.pt"))) == 1


def test_fits_whose_inputs_cannot_be_named_always_train(cache):
    class Marked(nn.Linear):
        pass
    exec_globals = {"nn": nn, "__name__": "notebook"}
    exec("class Built(nn.Module):\n    def forward(self, x):\n        return x\n", exec_globals)   # no source file

    lock = threading.Lock()
    cases = {
        "class without source": lambda l: l.net.append(exec_globals["Built"]()),
        "captured object": lambda l: setattr(l, "loss_fn", lambda out, y: F.cross_entropy(out, y) if lock else None),
        "custom sampler": lambda l: setattr(l.dls, "train", DataLoader(
            l.dls.train.dataset, batch_size=8, sampler=torch.utils.data.SubsetRandomSampler(range(40)))),
    }
    for name, change in cases.items():
        learn = learner()
        change(learn)
        learn.opt = learn.make_optimizer(1e-2)
        with pytest.raises(fit_cache.Uncachable):
            fit_cache.describe(learn, 1, 1e-2, None, True, 5)
        learn.fit(1, 1e-2)
        assert not list(cache.glob("*.pt")), name
    # a class from a file with its source at hand is named by its source
    learn = learner()
    learn.net.append(Marked(2, 2))
    learn.fit(1, 1e-2)
    assert len(list(cache.glob("*.pt"))) == 1


def test_a_damaged_or_foreign_entry_is_rebuilt_not_served(cache):
    trained = learner()
    trained.fit(1, 1e-2)
    expected = end_state(trained)
    learner().fit(2, 1e-2)
    one, two = sorted(cache.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)

    one.write_bytes(one.read_bytes()[:1000])                 # truncated, e.g. by a full disk
    damaged = learner()
    damaged.fit(1, 1e-2)
    assert_same(end_state(damaged), expected)
    assert torch.load(one, weights_only=True)["key"]          # written again, whole

    one.write_bytes(two.read_bytes())                         # another fit's entry under this fit's name
    foreign = learner()
    foreign.fit(1, 1e-2)
    assert_same(end_state(foreign), expected)
    assert torch.load(one, weights_only=True)["history"][-1]["epoch"] == 1


def test_a_fit_that_fails_stores_nothing(cache):
    learn = learner()
    learn.net[-1].weight.data.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError):
        learn.fit(1, 1e-2)
    assert not list(cache.glob("*.pt"))


def test_the_environment_switches_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_FIT_CACHE", "0")
    assert fit_cache.use(tmp_path) is None and fit_cache.active_folder() is None
    learner().fit(1, 1e-2)
    assert not list(tmp_path.glob("*.pt"))


def test_computing_features_leaves_the_random_state_and_the_layout_as_reading_them_does():
    from tlkit import features, models
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    wrapped = models.Net(body, nn.Linear(4, 2), [body, nn.Linear(4, 2)], 4, data.DEFAULT_NORM, "tiny", False)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for layout in (torch.contiguous_format, torch.channels_last):
        body.to(memory_format=layout)
        features.compute_features(wrapped, images().with_transform(data.eval_transform(8)), batch_size=16,
                                  progress=False, channels_last=layout is not torch.channels_last)
        assert torch.equal(torch.get_rng_state(), before)
        assert body[0].weight.is_contiguous(memory_format=layout) and (
            layout is torch.channels_last) != body[0].weight.is_contiguous()


SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    from test_fit_cache import learner
    from tlkit import env, fit_cache
    env.seed_everything(0)   # as a lesson's setup does: python's and numpy's generators are inputs too
    fit_cache.use(sys.argv[1])
    learn = learner()
    hist = learn.fit(3, 1e-2)
    digest = sum(float(v.double().sum()) for v in learn.net.state_dict().values())
    print(json.dumps({{"val_loss": hist.val_loss.tolist(), "weights": digest, "next": torch.rand(1).item()}}))
""")


def test_processes_share_entries_and_two_filling_one_entry_leave_one_good_entry(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT.format(tests=os.path.join(REPO, "tests")))
    env = {**os.environ, "PYTHONPATH": REPO, "TLKIT_FIT_CACHE": "1"}
    folder = tmp_path / "fits"
    both = [subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in both]
    assert all(p.returncode == 0 for p in both) and outs[0] == outs[1]
    entries = [p for p in folder.iterdir()]
    assert len(entries) == 1 and entries[0].suffix == ".pt"     # no temporary file left behind
    mtime = entries[0].stat().st_mtime_ns
    third = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, env=env,
                           timeout=300)
    assert json.loads(third.stdout.splitlines()[-1]) == outs[0]
    assert "read back from the fit cache" in third.stdout and entries[0].stat().st_mtime_ns == mtime


def test_a_step_timing_is_measured_once_per_machine_and_settings_and_then_read_back(cache):
    calls = []

    def measure(value):
        calls.append(value)
        return value

    learn = learner()
    assert fit_cache.remembered(learn, "seconds_per_image", lambda: measure(0.5)) == 0.5
    with torch.no_grad():
        learn.net[0].weight.mul_(2)        # other weights, the same work: read back
    assert fit_cache.remembered(learn, "seconds_per_image", lambda: measure(0.7)) == 0.5
    learn.net[0].weight.requires_grad_(False)   # less to train: measured again
    assert fit_cache.remembered(learn, "seconds_per_image", lambda: measure(0.3)) == 0.3
    (first, _) = sorted((cache / "measured").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    first.write_text("{not json")
    learn.net[0].weight.requires_grad_(True)
    assert fit_cache.remembered(learn, "seconds_per_image", lambda: measure(0.6)) == 0.6   # damaged: measured again
    assert calls == [0.5, 0.3, 0.6]
    fit_cache.use(None)
    assert fit_cache.remembered(learn, "seconds_per_image", lambda: measure(0.9)) == 0.9   # cache off: measured


def test_a_computation_is_read_back_on_the_same_inputs_and_random_state_and_leaves_that_state(cache):
    calls = []

    def views(model, x):
        calls.append(1)
        return model(x + torch.randn_like(x)), torch.arange(len(x))   # random views, as augmentation TTA draws them

    model = nn.Linear(3, 2)
    x = torch.ones(4, 3)
    torch.manual_seed(0)
    first = fit_cache.computed("views", {"model": model, "x": x}, lambda: views(model, x))
    after_first = torch.rand(1)
    torch.manual_seed(0)
    again = fit_cache.computed("views", {"model": model, "x": x}, lambda: views(model, x))
    assert len(calls) == 1 and torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert torch.equal(torch.rand(1), after_first)                 # the random state compute() left behind
    torch.manual_seed(1)                                          # another random state: other views
    fit_cache.computed("views", {"model": model, "x": x}, lambda: views(model, x))
    torch.manual_seed(0)
    with torch.no_grad():
        model.bias.add_(1)                                        # another model
    fit_cache.computed("views", {"model": model, "x": x}, lambda: views(model, x))
    assert len(calls) == 3
    entries = list((cache / "computed").glob("*.pt"))
    for entry in entries:
        entry.write_bytes(b"damaged")
    torch.manual_seed(0)
    fit_cache.computed("views", {"model": model, "x": x}, lambda: views(model, x))
    assert len(calls) == 4                                        # a damaged entry is computed again, not served
    assert sum(torch.load(e, weights_only=True)["key"] != "" for e in entries if e.stat().st_size > 100) == 1


def test_an_lr_sweep_that_its_finder_stops_is_read_back_with_its_curve(cache):
    from tlkit.lr_finder import lr_find
    results, stamps = [], []
    for _ in range(2):
        learn = learner()
        results.append(lr_find(learn, num_it=12, start_lr=1e-4, end_lr=10.0, skip_end=0))
        stamps.append({p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")})
    first, again = results
    assert len(stamps[0]) == 1 and stamps[1] == stamps[0]          # one entry, not written again: read back
    assert first.stop_reason == again.stop_reason and len(first.lrs) > 0
    np.testing.assert_array_equal(first.losses, again.losses)
    np.testing.assert_array_equal(first.lrs, again.lrs)
    assert again.weights_restored


def test_the_cache_keeps_to_its_size_by_removing_the_oldest_entries(tmp_path, monkeypatch):
    for i, name in enumerate(["a.pt", "computed/b.pt", "c.pt", "d.pt"]):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, ns=(10 ** 18 + i * 10 ** 9, 10 ** 18 + i * 10 ** 9))   # written one second apart
    removed = fit_cache.prune(tmp_path, limit=2500)
    assert sorted(p.name for p in removed) == ["a.pt", "b.pt"] and (tmp_path / "d.pt").exists()
    monkeypatch.setenv("TLKIT_FIT_CACHE_GB", "0.5")
    assert fit_cache.limit_bytes() == 2 ** 29
    monkeypatch.setenv("TLKIT_FIT_CACHE_GB", "much")
    assert fit_cache.limit_bytes() == 2 * 2 ** 30
