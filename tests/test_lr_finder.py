"""LR range test: schedule, smoothing, divergence point on a quadratic, exact state restore, suggestions."""
import copy
import math
import random
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from tlkit.errors import ParameterError
from tlkit.lessons.l03_lr_finder import best_lr, lr_grid, plot_lr_grid
from tlkit.lr_finder import (LRFinderResult, divergence_lr, lr_find, lr_from_finder, plot_lr_curves, smooth_losses,
                             suggest, suggest_steep, suggest_valley)
from tlkit.widgets import lr_finder_view as view

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: one thread is faster


# ----------------------------------------------------------------------------- helpers


class NoisyQuadratic(nn.Module):
    """f_batch(w) = mean_b 0.5 (w - c_b)^T A (w - c_b): Hessian exactly A for every batch, noise in the centres."""

    def __init__(self, largest_curvature: float, dim: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        eig = torch.linspace(largest_curvature / 10, largest_curvature, dim, dtype=torch.float64)
        self.register_buffer("root", q @ torch.diag(eig.sqrt()) @ q.T)  # A = root @ root, eig(A) = eig
        self.w = nn.Parameter(torch.full((dim,), 3.0, dtype=torch.float64))

    def forward(self, centres):
        return (self.w - centres) @ self.root


def quadratic_loss(out, _target):
    return 0.5 * (out ** 2).sum(1).mean()


def quadratic_sweep(L, seed, end=10.0, beta=0.98, num_it=400, batch=4, loss_floor=0.0):
    """Plain SGD (no momentum) sweep from 0.1/L to end/L over `num_it` noisy batches of `batch` centres."""
    model = NoisyQuadratic(L, seed=seed)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_it, batch, 8, generator=g, dtype=torch.float64)
    batches = [(c, c[:, 0]) for c in centres]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)
    # A's largest eigenvalue is L by construction; check it rather than trust it
    assert torch.linalg.eigvalsh(model.root @ model.root).max().item() == pytest.approx(L, rel=1e-9)
    return lr_find(model, batches, loss_fn=quadratic_loss, optimizer=opt, start_lr=0.1 / L, end_lr=end / L,
                   num_it=num_it, smooth=beta, warn=False, loss_floor=loss_floor)


def noise_level(L, dim=8):
    """The quadratic's expected batch loss at its optimum, 0.5 tr(A): what the sweep's loss falls to, and
    no lower (the eigenvalues are linspace(L / 10, L))."""
    return 0.5 * float(torch.linspace(L / 10, L, dim, dtype=torch.float64).sum())


class SmallNet(nn.Module):
    """Conv + BatchNorm + Dropout: buffers, RNG use and train/eval modes all matter for a restore."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.bn(self.conv(x)).relu().mean((2, 3))
        return self.fc(self.drop(x))


class RandomDataset(torch.utils.data.Dataset):
    """Draws from python's and numpy's global RNGs in __getitem__, like random augmentations do."""

    def __init__(self, n=48):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        scale = 1 + 0.1 * random.random() + 0.1 * float(np.random.rand())
        return self.x[i] * scale, self.y[i]


def full_state(model, opt):
    """An independent deep copy of everything lr_find promises to restore."""
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "opt": copy.deepcopy(opt.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
        "np_rng": np.random.get_state(),
    }


def assert_same_state(before, after):
    assert before["weights"].keys() == after["weights"].keys()
    for k in before["weights"]:
        assert torch.equal(before["weights"][k], after["weights"][k]), k
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["modes"] == after["modes"]
    assert before["opt"]["param_groups"] == after["opt"]["param_groups"]
    sa, sb = before["opt"]["state"], after["opt"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].keys() == sb[k].keys()
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name])), (k, name)
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    assert before["py_rng"] == after["py_rng"]
    b_np, a_np = before["np_rng"], after["np_rng"]
    assert b_np[0] == a_np[0] and np.array_equal(b_np[1], a_np[1]) and b_np[2:] == a_np[2:]


def trained_setup(opt_name):
    """A model and optimizer with non-trivial state: stepped twice, grads left, a submodule in eval mode."""
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    model = SmallNet()
    loader = torch.utils.data.DataLoader(RandomDataset(), batch_size=8, shuffle=True)
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if opt_name == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-3))
    for x, y in list(loader)[:2]:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.drop.eval()  # a mixed-mode model: lr_find must not leave it all in train (or all in eval)
    return model, loader, opt


# ----------------------------------------------------------------------------- schedule & smoothing
@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_the_optimizer_sees_the_schedule(mode):
    model, loader, opt = trained_setup("sgd")
    seen = []

    def spy_loss(out, y):  # called once per step, after the LR for that step is set
        seen.append(opt.param_groups[0]["lr"])
        return nn.functional.cross_entropy(out, y)

    r = lr_find(model, loader, loss_fn=spy_loss, optimizer=opt, start_lr=1e-4, end_lr=1e-1, num_it=15,
                mode=mode, diverge=None, warn=False)
    assert len(r.lrs) == 15 and np.allclose(seen, r.lrs, rtol=1e-12)
    assert r.lrs[0] == pytest.approx(1e-4) and r.lrs[-1] == pytest.approx(1e-1)
    steps = np.diff(np.log(r.lrs)) if mode == "exp" else np.diff(r.lrs)
    assert np.allclose(steps, steps[0])
    assert not r.stopped_early and r.stop_reason == "completed"


def test_smoothing_is_pandas_adjusted_ewm():
    losses = np.random.default_rng(0).gamma(2.0, size=60)
    for beta in (0.0, 0.5, 0.98):
        ref = pd.Series(losses).ewm(alpha=1 - beta, adjust=True).mean().to_numpy()
        assert np.allclose(smooth_losses(losses, beta), ref, rtol=1e-12)


def test_sweep_records_raw_and_smoothed_consistently():
    model, loader, opt = trained_setup("sgd")
    r = lr_find(model, loader, optimizer=opt, start_lr=1e-4, end_lr=1.0, num_it=20, smooth=0.9, warn=False)
    assert np.allclose(r.smoothed, smooth_losses(r.losses, 0.9), rtol=1e-12)


def test_bad_arguments_are_rejected():
    model, loader, _ = trained_setup("sgd")
    with pytest.raises(ValueError, match="start_lr"):
        lr_find(model, loader, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="mode"):
        lr_find(model, loader, mode="cosine")
    with pytest.raises(ValueError, match="smooth"):
        lr_find(model, loader, smooth=1.0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        lr_find(model, loader)


# ----------------------------------------------------------------------------- divergence on a quadratic
@pytest.mark.parametrize("L,seed", [(0.5, 0), (4.0, 1), (4.0, 2), (100.0, 3)])
def test_fine_sweep_stops_between_2_and_3_over_L(L, seed):
    """Plain SGD on a quadratic diverges exactly when lr > 2/L; the stop must come after, and soon."""
    r = quadratic_sweep(L, seed)
    assert r.stopped_early and r.stop_reason.startswith("diverged")
    assert 2 / L <= r.lrs[-1] <= 3 / L
    assert r.losses.max() > 4 * r.losses.min()  # it did see a blow-up, not a fluke of smoothing


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_never_stops_below_2_over_L_although_the_noise_could_fool_a_raw_rule(seed):
    """Below 2/L the loss only falls (plus noise): the smoothed rule runs to the end, the unsmoothed one does not."""
    L = 2.0
    below = quadratic_sweep(L, seed, end=1.95)
    assert not below.stopped_early and below.lrs[-1] == pytest.approx(1.95 / L)
    raw_rule = quadratic_sweep(L, seed, beta=0.0)  # the same noise without smoothing: a false alarm
    assert raw_rule.stopped_early and raw_rule.lrs[-1] < 2 / L


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_a_loss_floor_at_the_noise_level_silences_the_false_alarms_and_keeps_the_real_divergence(seed):
    """Unsmoothed, the rule alarms on noise around the optimum's loss 0.5 tr(A) far below 2/L; with that
    loss as the floor it runs calmly to 1.2/L (where SGD's noise is still at most 1.5x its low-LR level,
    lr L / (2 - lr L)), and a sweep past 2/L still stops by 3/L, and not before 1.8/L (from there the
    noise along the steepest direction is 9x or more, so an unsmoothed rule may see it first)."""
    L, floor = 2.0, noise_level(2.0)
    assert quadratic_sweep(L, seed, end=1.2, beta=0.0).lrs[-1] < 1 / L       # no floor: a false alarm
    below = quadratic_sweep(L, seed, end=1.2, beta=0.0, loss_floor=floor)
    assert not below.stopped_early and below.loss_floor == floor
    past = quadratic_sweep(L, seed, beta=0.0, loss_floor=floor)
    assert past.stopped_early and 1.8 / L <= past.lrs[-1] <= 3 / L
    assert divergence_lr(past) >= 1.2 / L


def test_a_bad_loss_floor_is_refused():
    model = nn.Linear(2, 2)
    loader = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
    for bad in (-0.1, float("nan"), "0.1"):
        with pytest.raises(ParameterError, match="loss_floor"):
            lr_find(model, loader, loss_floor=bad)


# ----------------------------------------------------------------------------- exact restore
@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("ending", ["normal", "diverged", "exception", "nan"])
def test_state_is_restored_bit_for_bit(opt_name, ending):
    model, loader, opt = trained_setup(opt_name)
    before = full_state(model, opt)
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        if ending == "exception" and len(calls) == 7:
            raise RuntimeError("boom mid-sweep")
        if ending == "nan" and len(calls) == 7:
            return out.sum() * float("nan")
        return nn.functional.cross_entropy(out, y)

    end_lr = {"normal": 1e-2, "diverged": 1e4}.get(ending, 1e-2)
    kwargs = dict(loss_fn=loss_fn, optimizer=opt, start_lr=1e-3, end_lr=end_lr, num_it=30, warn=False)
    if ending == "exception":
        with pytest.raises(RuntimeError, match="boom"):
            lr_find(model, loader, **kwargs)
    else:
        r = lr_find(model, loader, **kwargs)
        expected = {"normal": "completed", "diverged": "diverged", "nan": "non-finite"}[ending]
        assert r.stop_reason.startswith(expected) and r.weights_restored
        assert len(r.lrs) == (30 if ending == "normal" else len(r.losses)) and len(r.lrs) >= 6
    assert len(calls) >= 7  # the sweep really trained (and drew random numbers) before ending
    assert_same_state(before, full_state(model, opt))


def test_restored_model_trains_exactly_as_if_lr_find_never_ran():
    """Same weights, optimizer buffers and RNG: the next training step is bit-identical."""
    def next_step(run_finder):
        model, loader, opt = trained_setup("sgd")
        if run_finder:
            lr_find(model, loader, optimizer=opt, start_lr=1e-3, end_lr=10, num_it=20, warn=False)
        x, y = next(iter(loader))
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(next_step(False), next_step(True))


def test_parameter_groups_are_scaled_together():
    model, loader, _ = trained_setup("sgd")
    opt = torch.optim.SGD([{"params": model.conv.parameters(), "lr": 1e-3},
                           {"params": model.bn.parameters(), "lr": 1e-2},
                           {"params": model.fc.parameters(), "lr": 4e-2}], momentum=0.9)
    seen = []

    def spy_loss(out, y):
        seen.append([g["lr"] for g in opt.param_groups])
        return nn.functional.cross_entropy(out, y)

    r = lr_find(model, loader, loss_fn=spy_loss, optimizer=opt, start_lr=1e-4, end_lr=1e-1, num_it=12,
                diverge=None, warn=False)
    seen = np.array(seen)
    assert np.allclose(seen[:, 2], r.lrs)  # the reported LR is the largest group's
    assert np.allclose(seen / seen[:, 2:], [1e-3 / 4e-2, 1e-2 / 4e-2, 1.0])
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2, 4e-2]


def test_default_optimizer_trains_only_trainable_parameters():
    model, loader, _ = trained_setup("sgd")
    model.zero_grad(set_to_none=True)
    model.conv.requires_grad_(False)
    frozen, head = model.conv.weight.detach().clone(), model.fc.weight.detach().clone()
    changed = []

    def spy_loss(out, y):  # during the sweep: the frozen conv stays put, the head moves
        assert torch.equal(model.conv.weight, frozen)
        changed.append(not torch.equal(model.fc.weight, head))
        return nn.functional.cross_entropy(out, y)

    r = lr_find(model, loader, loss_fn=spy_loss, start_lr=1e-5, end_lr=1.0, num_it=15, warn=False)
    assert len(r.lrs) >= 5 and r.weights_restored and any(changed)
    assert torch.equal(model.fc.weight, head) and model.fc.weight.grad is None


# ----------------------------------------------------------------------------- suggestions
def fastai_valley_index(losses):
    """fastai.callback.schedule.valley, transcribed (O(n^2) loops) as the reference."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def u_curve(n=120, noise=0.0, seed=0, lr_drop=1e-3, lr_blow=1.0):
    """A typical range-test curve: a plateau, a tanh drop centred on `lr_drop`, a blow-up towards `lr_blow`."""
    lrs = np.geomspace(1e-6, 10, n)
    x = np.log10(lrs)
    loss = 2 - np.tanh((x - np.log10(lr_drop)) / 0.5) + 3 * np.exp((x - np.log10(lr_blow)) * 3)
    return lrs, loss * (1 + noise * np.random.default_rng(seed).standard_normal(n))


def test_valley_matches_fastai_reference():
    rng = np.random.default_rng(0)
    curves = [u_curve()[1], u_curve(noise=0.2, seed=3)[1]]
    curves += [np.round(rng.standard_normal(40).cumsum(), 0) for _ in range(20)]  # with ties
    lrs = np.geomspace(1e-5, 1, 200)
    for losses in curves:
        idx = fastai_valley_index(list(losses))
        s = suggest_valley(lrs[: len(losses)], losses)
        if s.lr is not None:
            assert s.lr == lrs[idx]


def test_steep_and_min10_on_a_curve_with_known_shape():
    lrs, loss = u_curve(n=400)
    s = suggest(lrs, loss)
    assert s["steep"].lr == pytest.approx(1e-3, rel=0.05)  # the tanh is steepest at its centre
    lr_at_min = lrs[np.argmin(loss)]
    assert s["min10"].lr == pytest.approx(lr_at_min / 10) and s["min10"].anchor[0] == lr_at_min
    assert s["min10"].point[0] == s["min10"].lr  # marked on the curve where the suggested LR lies
    assert s["valley"].lr < lr_at_min and s["steep"].lr < lr_at_min
    slopes = np.diff(loss) / np.diff(np.log(lrs))  # fastai's steep formula
    assert suggest_steep(lrs, loss, span=0).lr == lrs[np.argmin(slopes)]


def spread_of_suggestions(beta, steep_span=0.5, noise=0.05, runs=30):
    """Std of log10(suggested LR) over noisy copies of one curve: the run-to-run instability users report."""
    out = []
    for seed in range(runs):
        lrs, loss = u_curve(noise=noise, seed=seed)
        curve = smooth_losses(loss, beta)
        s = suggest(lrs, curve, rules=("min10", "valley"), skip_start=12, skip_end=5, warn=False)
        s["steep"] = suggest_steep(lrs[12:-5], curve[12:-5], span=steep_span)
        out.append(s)
    return {r: np.std(np.log10([x[r].lr for x in out])) for r in ("min10", "steep", "valley")}


def test_smoothing_makes_suggestions_stable_on_noisy_curves():
    raw, smooth = spread_of_suggestions(0.0, steep_span=0), spread_of_suggestions(0.9, steep_span=0)
    assert smooth["steep"] < raw["steep"] / 4  # fastai's pointwise slope of raw noise is mostly noise
    assert smooth["min10"] < raw["min10"] / 2
    assert smooth["valley"] < raw["valley"]


def test_steep_over_half_a_decade_is_stable_even_unsmoothed():
    pointwise, windowed = spread_of_suggestions(0.0, steep_span=0), spread_of_suggestions(0.0, steep_span=0.5)
    assert windowed["steep"] < pointwise["steep"] / 4


def test_flat_curve_gives_no_suggestion_and_says_why():
    lrs = np.geomspace(1e-6, 1, 50)
    with pytest.warns(UserWarning, match="flat"):
        s = suggest(lrs, np.full(50, 2.3))
    assert all(x.lr is None and "flat" in x.reason for x in s.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(x.lr is None for x in suggest(lrs, 2.3 + 1e-6 * np.sin(np.arange(50)), warn=False).values())


def test_nan_tail_is_cut_and_all_nan_says_why():
    lrs, loss = u_curve()
    cut = 90
    loss_nan = loss.copy()
    loss_nan[cut:] = np.nan
    s = suggest(lrs, loss_nan)
    assert all(x.lr is not None and x.point[0] < lrs[cut] for x in s.values())
    assert s["min10"].anchor[0] == lrs[np.argmin(loss[:cut])]
    loss_nan[3:] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        s = suggest(lrs, loss_nan)
    assert all(x.lr is None and "NaN" in x.reason for x in s.values())


def test_rising_curve_says_start_lr_too_high():
    lrs = np.geomspace(1e-3, 10, 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = suggest(lrs, 1 + lrs)
    assert any("start_lr is too high" in str(w.message) for w in caught)
    assert s["min10"].lr is None and s["steep"].lr is None and s["valley"].lr is None


def test_unknown_rule_is_an_error():
    with pytest.raises(ValueError, match="unknown suggestion"):
        suggest(*u_curve(), rules=("min10", "slide"))


def test_sweep_that_diverges_to_nan_still_suggests():
    """A real sweep that ends in NaN: it stops, restores, and the rules use the finite part."""
    model = NoisyQuadratic(4.0)
    g = torch.Generator().manual_seed(0)
    batches = [(c, c[:, 0]) for c in torch.randn(200, 4, 8, generator=g, dtype=torch.float64)]
    r = lr_find(model, batches, loss_fn=quadratic_loss, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                start_lr=1e-3, end_lr=1e12, num_it=200, diverge=None, skip_start=0, warn=False)
    assert r.stopped_early and r.stop_reason.startswith("non-finite")
    assert r.lrs[-1] > 2 / 4.0 and r.weights_restored
    assert r.lr("min10") is not None and r.lr("min10") < 2 / 4.0
    assert torch.equal(model.w.detach(), torch.full((8,), 3.0, dtype=torch.float64))


def test_result_resuggest_and_plot():
    import matplotlib
    matplotlib.use("Agg")
    lrs, loss = u_curve(noise=0.1)
    r = LRFinderResult(lrs=lrs, losses=loss, smoothed=smooth_losses(loss, 0.9), suggestions={},
                       stopped_early=False, stop_reason="completed", num_it=len(lrs), beta=0.9)
    again = r.suggest(beta=0.9, skip_start=0, skip_end=0)
    assert again["steep"].lr == suggest(lrs, r.smoothed)["steep"].lr
    trimmed = r.suggest(skip_start=60, skip_end=0)  # trimming past the drop moves the steep point right
    assert trimmed["steep"].lr >= lrs[60]
    ax = r.plot()
    marked = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(marked) == 3 and math.isclose(marked[0].get_xdata()[0], again["min10"].point[0])


# ----------------------------------------------------------------------------- widget callback, grid, Learner
def curve_result(noise=0.1):
    lrs, loss = u_curve(noise=noise)
    return LRFinderResult(lrs=lrs, losses=loss, smoothed=smooth_losses(loss, 0.9), suggestions={},
                          stopped_early=False, stop_reason="completed", num_it=len(lrs), beta=0.9,
                          skip_start=12, skip_end=5)


def test_widget_callback_redraws_what_the_sliders_say():
    import matplotlib.pyplot as plt
    r = curve_result()
    fig, ax = plt.subplots()
    for beta, start, end in [(0.0, 0, 0), (0.9, 12, 5), (0.98, 30, 20)]:
        got = view.redraw(r, ax, smoothing=beta, skip_start=start, skip_end=end)
        want = suggest(r.lrs, smooth_losses(r.losses, beta), skip_start=start, skip_end=end, warn=False)
        assert {k: s.lr for k, s in got.items()} == {k: s.lr for k, s in want.items()}
        curve = [line for line in ax.get_lines() if line.get_label().startswith("smoothed")]
        assert len(curve) == 1  # the axes were cleared, not drawn over
        n = len(r.lrs) - start - end
        assert np.allclose(curve[0].get_ydata(), smooth_losses(r.losses, beta)[start:start + n])
    plt.close(fig)
    assert view.slider_ranges(r)["skip_start"] == (0, len(r.lrs) - 5)
    assert "none (" in view.describe(suggest(r.lrs, np.full(len(r.lrs), 1.0), warn=False))


def test_widget_builds_without_a_browser_and_follows_a_slider():
    r = curve_result()
    box = view.lr_finder_view(r)
    smoothing, start, end = box.children[0].children
    assert (smoothing.value, start.value, end.value) == (0.9, 12, 5)
    start.value = 40  # the observer reruns redraw; the suggestions shown follow the new trim
    text = box.children[2].value
    steep = r.suggest(skip_start=40)["steep"].lr
    assert f"{steep:.3g}" in text


def tiny_learner(lr_scale=1.0):
    """A Learner on a linearly separable toy problem (what `lr_grid` expects from its factory)."""
    from types import SimpleNamespace

    from tlkit import Learner
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long()
    ds = torch.utils.data.TensorDataset(x, y)
    dls = SimpleNamespace(train=torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False),
                          val=torch.utils.data.DataLoader(ds, batch_size=64))
    torch.manual_seed(0)
    return Learner(nn.Linear(5, 2), dls, opt="sgd", wd=0.0, progress=False)


def test_lr_grid_trains_each_lr_from_the_same_start_and_reports_divergence():
    grid = lr_grid(tiny_learner, [1e-4, 1e-1, 1e38], epochs=2)
    assert list(grid.diverged) == [False, False, True]
    again = tiny_learner().fit(2, 1e-1).iloc[-1]  # a fresh run reproduces the row: same start, same data
    assert grid.val_loss[1] == pytest.approx(again.val_loss, rel=1e-6)
    assert grid.val_loss[1] < grid.val_loss[0]  # 1e-4 for two epochs barely moves
    assert best_lr(grid) == 1e-1
    import matplotlib.pyplot as plt
    axes = plot_lr_grid(grid, curve_result().suggest())
    assert axes[0].get_yscale() == "log"
    plt.close("all")


def test_learner_lr_find_uses_its_optimizer_recipe_and_keeps_group_ratios():
    from tlkit import models
    body, head = nn.Sequential(nn.Linear(5, 4), nn.ReLU()), nn.Linear(4, 2)
    learn = tiny_learner()
    learn.net = net = models.Net(body, head, [body, head], feature_dim=4, norm=None, name="toy", pretrained=False)
    made = []
    learn.opt_factory = lambda groups, wd, real=learn.opt_factory: made.append(real(groups, wd)) or made[-1]
    seen = []

    def spy(out, y):
        seen.append([g["lr"] for g in made[-1].param_groups])
        return nn.functional.cross_entropy(out, y)

    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = lr_find(learn, loss_fn=spy, group_lrs=slice(1e-2, 1.0), start_lr=1e-4, end_lr=1.0, num_it=12, warn=False)
    assert len(made) == 1 and isinstance(made[0], torch.optim.SGD) and made[0].defaults["momentum"] == 0.9
    seen = np.array(seen)
    assert np.allclose(seen[:, 1], r.lrs) and np.allclose(seen[:, 0] / seen[:, 1], 1e-2)  # body at 1/100
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_plot_of_several_sweeps_marks_each():
    import matplotlib.pyplot as plt
    ax = plot_lr_curves({"a": curve_result(0.05), "b": curve_result(0.1)})
    assert sum(line.get_marker() == "o" for line in ax.get_lines()) == 2
    plt.close("all")


def test_plot_marks_a_rule_given_as_a_function_at_its_lr():
    import matplotlib.pyplot as plt
    r = curve_result(0.0)
    broke = divergence_lr(r)
    ax = plot_lr_curves({"a": r}, rule=divergence_lr)
    marks = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == pytest.approx(broke)
    assert "a divergence: " in marks[0].get_label()
    assert 0.1 < broke < 10          # the toy curve blows up towards lr = 1
    plt.close("all")


def test_suggestion_shifts_read_a_rule_given_as_a_function():
    from tlkit.lessons.l03_lr_finder import suggestion_shifts
    seen = []

    def rule(result):      # 1e-3 for every "before" sweep, 1e-2 for every "after" one: one decade up
        seen.append(result)
        return 1e-3 if len(seen) % 2 else 1e-2

    shifts, sweeps = suggestion_shifts(lambda s: tiny_learner(), lambda s: tiny_learner(), [0, 1], rule=rule,
                                       num_it=8, warn=False)
    assert [r for pair in sweeps.values() for r in (pair["before"], pair["after"])] == seen
    assert shifts["decades"].tolist() == pytest.approx([1.0, 1.0])


def seeded_tiny_learner(seed):
    """`tiny_learner` whose initial weights come from `seed` (what `rule_losses` expects from its factory)."""
    learn = tiny_learner()
    torch.manual_seed(seed)
    learn.net.reset_parameters()
    return learn


def test_rule_losses_sweeps_once_per_seed_and_trains_at_each_rules_own_lr():
    from tlkit.env import seed_everything
    from tlkit.lessons.l03_lr_finder import item_losses, rule_losses
    loader = tiny_learner().dls.val
    sweep = dict(start_lr=1e-4, end_lr=10.0, num_it=40, warn=False)
    losses, chosen = rule_losses(seeded_tiny_learner, ("min10", "steep"), 2, [0, 1], loader, **sweep)
    assert {k: v.shape for k, v in losses.items()} == {"min10": (2, 64), "steep": (2, 64)}
    assert list(chosen["seed"]) == [0, 1]
    for i, seed in enumerate([0, 1]):                    # each row is an independent sweep and fit, recomputed
        seed_everything(seed)
        result = lr_find(seeded_tiny_learner(seed), **sweep)
        for rule in ("min10", "steep"):
            assert chosen[rule][i] == pytest.approx(result.lr(rule), rel=1e-12)
            seed_everything(seed)
            learn = seeded_tiny_learner(seed)
            learn.fit(2, result.lr(rule))
            np.testing.assert_allclose(losses[rule][i], item_losses(learn, loader), rtol=1e-6)
    assert not np.allclose(losses["steep"][0], losses["steep"][1])   # the seeds really are different runs


class AutocastProbe(nn.Module):
    """A linear layer that records, on every forward, the autocast dtype and the input's memory layout."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 1), nn.Linear(2, 2)
        self.seen = []

    def forward(self, x):
        on = torch.is_autocast_enabled("cpu")
        self.seen.append((torch.get_autocast_dtype("cpu") if on else torch.float32,
                          x.is_contiguous(memory_format=torch.channels_last)))
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), (None, torch.float32)])
def test_lr_find_sweeps_a_learner_in_its_own_precision_and_layout(precision, dtype):
    from types import SimpleNamespace

    from tlkit import Learner
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    probe = AutocastProbe()
    learn = Learner(probe, SimpleNamespace(train=loader, val=loader), opt="sgd", precision=precision,
                    channels_last=True, progress=False)
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    r = lr_find(learn, start_lr=1e-4, end_lr=1e-1, num_it=10, diverge=None, warn=False)
    assert len(r.lrs) == 10 and r.weights_restored and len(probe.seen) == 10
    assert set(probe.seen) == {(dtype, True)}
    assert all(torch.equal(before[k], v) for k, v in probe.state_dict().items())


def test_lr_from_finder_is_ten_times_below_where_the_loss_doubled():
    lrs = np.geomspace(1e-5, 1, 11)
    flat_then_up = np.array([0.30, 0.28, 0.25, 0.26, 0.24, 0.27, 0.40, 0.45, 0.9, 2.0, 5.0])
    result = SimpleNamespace(lrs=lrs, smoothed=flat_then_up, stopped_early=True, lr=lambda rule: 3e-4)
    assert divergence_lr(result) == lrs[8]  # 0.9 >= 2 x 0.24 is the first doubling
    assert lr_from_finder(result) == pytest.approx(lrs[8] / 10)
    assert lr_from_finder(result, rise=4) == pytest.approx(lrs[9] / 10)
    calm = SimpleNamespace(lrs=lrs, smoothed=np.full(11, 0.3), stopped_early=False, lr=lambda rule: 3e-4)
    assert divergence_lr(calm) is None and lr_from_finder(calm) == 3e-4
    nan_end = SimpleNamespace(lrs=lrs[:4], smoothed=np.array([0.3, 0.3, 0.31, np.nan]), stopped_early=True,
                              lr=lambda rule: None)
    assert divergence_lr(nan_end) == lrs[3]
    blip = SimpleNamespace(lrs=lrs, smoothed=np.array([0.2, 0.5, 0.21, 0.2, 0.2, 0.2, 0.25, 0.3, 0.9, 2.0, 5.0]),
                           stopped_early=True, lr=lambda rule: None)
    assert divergence_lr(blip) == lrs[8]      # the early one-step doubling recovered: not a divergence


def test_divergence_counts_a_best_loss_below_the_floor_as_the_floor():
    lrs = np.geomspace(1e-5, 1, 11)
    near_zero = np.array([0.02, 0.01, 0.025, 0.03, 0.02, 0.04, 0.05, 0.06, 0.2, 0.5, 2.0])
    result = SimpleNamespace(lrs=lrs, smoothed=near_zero, stopped_early=True, loss_floor=0.0)
    assert divergence_lr(result) == lrs[2]          # 0.025 >= 2 x 0.01 and it never comes back: noise read as a break
    result.loss_floor = 0.05
    assert divergence_lr(result) == lrs[8]          # 0.2 >= 2 x 0.05: where the loss really took off
    assert lr_from_finder(result) == pytest.approx(lrs[8] / 10)


def test_lr_find_sweeps_a_learner_in_its_micro_batches():
    from tlkit import Learner
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    probe, sizes = AutocastProbe(), []
    probe.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
    learn = Learner(probe, SimpleNamespace(train=loader, val=loader), opt="sgd", progress=False, micro_batch=4)
    r = lr_find(learn, start_lr=1e-4, end_lr=1e-1, num_it=5, diverge=None, warn=False)
    assert len(r.lrs) == 5 and sizes == [4] * 20    # 5 steps of 16 images, each as 4 pieces
