"""Schedules against torch's own schedulers, the SGDR formulas, and parameter-group ratios."""
import math

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, CosineAnnealingWarmRestarts, MultiStepLR, OneCycleLR

from tlkit import schedules as S
from tlkit.lessons import l04_sgdr

BASE_LR = 0.1


def torch_lrs(make_scheduler, n_steps, base_lr=BASE_LR):
    """LR a torch scheduler sets before each of `n_steps` optimizer steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(n_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(lrs)


@pytest.mark.parametrize("n_cycles, cycle_len, cycle_mult, min_frac, steps_per_epoch", [
    (4, 1, 1, 0.0, 7),
    (3, 2, 1, 0.05, 5),
    (4, 1, 2, 0.0, 6),
    (3, 2, 3, 0.01, 4),
    (5, 0.5, 2, 0.0, 10),   # a cycle shorter than an epoch
])
def test_sgdr_equals_torch_cosine_annealing_warm_restarts(n_cycles, cycle_len, cycle_mult, min_frac, steps_per_epoch):
    schedule = S.sgdr(n_cycles, cycle_len, cycle_mult, min_frac)
    ours = S.lr_values(schedule, steps_per_epoch=steps_per_epoch, base_lr=BASE_LR)
    t0 = round(cycle_len * steps_per_epoch)
    ref = torch_lrs(lambda opt: CosineAnnealingWarmRestarts(opt, T_0=t0, T_mult=cycle_mult, eta_min=min_frac * BASE_LR),
                    len(ours))
    assert len(ours) == round(schedule.total_epochs * steps_per_epoch)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("n_cycles, cycle_len, cycle_mult", [(3, 1, 1), (4, 2, 1), (4, 1, 2), (3, 3, 3), (6, 0.5, 2)])
def test_sgdr_total_epochs_formula(n_cycles, cycle_len, cycle_mult):
    schedule = S.sgdr(n_cycles, cycle_len, cycle_mult)
    cycle_lengths = [cycle_len * cycle_mult ** i for i in range(n_cycles)]
    assert schedule.total_epochs == pytest.approx(sum(cycle_lengths))
    if cycle_mult == 1:
        assert schedule.total_epochs == n_cycles * cycle_len
    else:
        assert schedule.total_epochs == pytest.approx(cycle_len * (cycle_mult ** n_cycles - 1) / (cycle_mult - 1))
    assert schedule.cycle_ends[-1] == pytest.approx(schedule.total_epochs)


@pytest.mark.parametrize("cycle_mult", [1, 2])
def test_sgdr_restart_indices_are_where_the_lr_jumps_up(cycle_mult):
    steps_per_epoch = 8
    schedule = S.sgdr(4, 1, cycle_mult)
    lrs = S.lr_values(schedule, steps_per_epoch=steps_per_epoch)
    jumps = [i for i in range(1, len(lrs)) if lrs[i] > lrs[i - 1]]
    expected = [1, 2, 3] if cycle_mult == 1 else [1, 3, 7]
    assert schedule.restarts == expected
    assert S.restart_steps(schedule, steps_per_epoch) == [e * steps_per_epoch for e in expected] == jumps
    assert all(lrs[i] == 1.0 for i in jumps)           # every cycle restarts at the base LR
    assert lrs[jumps[0] - 1] < 0.05                   # ... after annealing close to min_frac


def test_warmup_ramps_linearly_then_shifts_the_schedule():
    inner, warm = S.sgdr(3, 1, 2), S.sgdr(3, 1, 2, warmup=0.5)
    assert warm.total_epochs == pytest.approx(inner.total_epochs + 0.5)
    assert warm.restarts == [r + 0.5 for r in inner.restarts]
    assert [warm(t) for t in (0.0, 0.125, 0.25)] == pytest.approx([0.0, 0.25, 0.5])
    for t in np.linspace(0, inner.total_epochs - 1e-3, 50):
        assert warm(t + 0.5) == pytest.approx(inner(t), abs=1e-12)


def test_cosine_equals_torch_cosine_annealing_lr():
    steps_per_epoch, epochs = 9, 5
    ours = S.lr_values(S.cosine(epochs, min_frac=0.02), epochs, steps_per_epoch, base_lr=BASE_LR)
    ref = torch_lrs(lambda opt: CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch, eta_min=0.02 * BASE_LR),
                    len(ours))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-8)


def test_step_decay_equals_torch_multistep_lr():
    steps_per_epoch, milestones = 5, [2, 4]
    ours = S.lr_values(S.step_decay(milestones, gamma=0.3), 6, steps_per_epoch, base_lr=BASE_LR)
    ref = torch_lrs(lambda opt: MultiStepLR(opt, [m * steps_per_epoch for m in milestones], gamma=0.3), len(ours))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_one_cycle_matches_torch_one_cycle_lr():
    # torch counts phases in steps (ending at step N-1), ours in continuous epochs: equal up to O(1/N).
    total_steps = 4000
    ours = S.lr_values(S.one_cycle(1, pct_start=0.3, div=25, final_div=1e4), 1, total_steps, base_lr=BASE_LR)
    ref = torch_lrs(lambda opt: OneCycleLR(opt, max_lr=BASE_LR, total_steps=total_steps, pct_start=0.3,
                                           div_factor=25, final_div_factor=1e4, cycle_momentum=False), total_steps)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=BASE_LR * 2e-3)
    assert ours.max() == pytest.approx(BASE_LR) and ours[0] == pytest.approx(BASE_LR / 25)


def test_constant_is_one_everywhere():
    assert set(S.lr_values(S.constant(), 3, 4)) == {1.0}


def test_schedule_keeps_parameter_group_ratios_through_a_real_optimizer():
    """Drive AdamW with two groups (lr 1e-3 and 1e-2) the way the fit loop does; ratios must hold at every step."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    base = [1e-3, 1e-2]
    opt = torch.optim.AdamW([{"params": net[0].parameters(), "lr": base[0]},
                             {"params": net[2].parameters(), "lr": base[1]}])
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    schedule, steps_per_epoch = S.sgdr(3, 1, 2, min_frac=0.01), 5
    x, y = torch.randn(20, 4), torch.randint(0, 2, (20,))
    seen = []
    for step in range(round(schedule.total_epochs * steps_per_epoch)):
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * schedule(step / steps_per_epoch)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        seen.append([g["lr"] for g in opt.param_groups])
    seen = np.array(seen)
    np.testing.assert_allclose(seen[:, 1] / seen[:, 0], 10.0, rtol=1e-12)
    np.testing.assert_allclose(seen[:, 1], S.lr_values(schedule, steps_per_epoch=steps_per_epoch, base_lr=1e-2))


def test_schedule_explorer_callback_returns_the_sgdr_lr_array():
    from tlkit.widgets.schedule_explorer import schedule_curve

    lrs, total = schedule_curve(n_cycles=3, cycle_len=2, cycle_mult=2, lr_max=1e-2, lr_min=1e-4, steps_per_epoch=4)
    assert total == 14
    np.testing.assert_allclose(lrs, S.lr_values(S.sgdr(3, 2, 2, min_frac=1e-2), steps_per_epoch=4, base_lr=1e-2))
    assert lrs.max() == pytest.approx(1e-2) and lrs.min() >= 1e-4 - 1e-15


def test_plot_schedule_marks_restarts():
    import matplotlib
    matplotlib.use("Agg")
    ax = S.plot_schedule({"sgdr": S.sgdr(3, 1, 2)}, steps_per_epoch=4)
    vertical = [line for line in ax.lines if len(set(line.get_xdata())) == 1]
    assert sorted(line.get_xdata()[0] for line in vertical) == [4, 12]
    assert not math.isnan(ax.lines[0].get_ydata().sum())


class TwoGroupNet(torch.nn.Sequential):
    """A tiny net with layer groups, as `tlkit.optim.param_groups` expects."""

    @property
    def groups(self):
        return [self[0], self[2]]


def test_learner_fit_applies_the_schedule_to_every_group_keeping_ratios():
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    from tlkit.train import Learner

    torch.manual_seed(0)
    x, y = torch.randn(24, 4), torch.randint(0, 2, (24,))
    dls = SimpleNamespace(train=DataLoader(TensorDataset(x, y), batch_size=6), val=DataLoader(TensorDataset(x, y)))
    learn = Learner(TwoGroupNet(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), dls, progress=False)
    schedule, seen = S.sgdr(2, 1, 2, min_frac=0.05), []
    log = lambda event, l: seen.append([g["lr"] for g in l.opt.param_groups]) if event == "after_batch" else None  # noqa: E731
    learn.fit(int(schedule.total_epochs), [2e-3, 3e-2], schedule=schedule, callbacks=[log])
    seen = np.array(seen)
    np.testing.assert_allclose(seen[:, 1] / seen[:, 0], 15.0, rtol=1e-12)
    np.testing.assert_allclose(seen, np.outer(S.lr_values(schedule, steps_per_epoch=4), [2e-3, 3e-2]), rtol=1e-12)


def test_compare_trains_each_schedule_for_its_budget_from_the_same_start():
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    from tlkit.train import Learner

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 5, generator=g), torch.randint(0, 2, (32,), generator=g)

    def make_learner():   # shuffling seeded from the global RNG, as compare() reseeds it
        dls = SimpleNamespace(train=DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
                              val=DataLoader(TensorDataset(x, y), batch_size=16))
        return Learner(torch.nn.Linear(5, 2), dls, opt="sgd", progress=False)

    table, learners = l04_sgdr.compare(make_learner, {"a": S.constant(3), "b": S.step_decay([], total_epochs=3),
                                               "c": S.sgdr(2, 1, 2)}, lr=0.1, seed=3)
    assert list(table["epochs"]) == [3, 3, 3]
    assert table.loc["a", "val_loss"] == table.loc["b", "val_loss"]     # same seed, same schedule: same run
    assert table.loc["a", "val_loss"] != table.loc["c", "val_loss"]
    assert torch.equal(learners["a"].net.weight, learners["b"].net.weight)
    with pytest.raises(ValueError, match="whole number"):
        l04_sgdr.compare(make_learner, {"half": S.sgdr(1, 0.5)}, lr=0.1)


def test_schedule_explorer_has_the_sgdr_sliders():
    import matplotlib
    matplotlib.use("Agg")
    from tlkit.widgets.schedule_explorer import schedule_explorer

    ui = schedule_explorer(steps_per_epoch=5)
    names = {w.description for w in ui.children if hasattr(w, "value") and w.description}
    assert {"n_cycles", "cycle_len", "cycle_mult", "lr_max", "lr_min"} <= names
