"""Discriminative learning rates: slice semantics, parameter-group membership, schedules keeping ratios."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlkit import schedules as S
from tlkit.models import Net, freeze_to, unfreeze
from tlkit.optim import lrs_for_groups, param_groups
from tlkit.train import Learner


def tiny_net(extra_ungrouped: bool = False, shared: bool = False) -> Net:
    """A 3-body-group + head Net small enough to train in milliseconds."""
    early = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    middle = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
    late = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
    layers = [early, middle, late, nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if extra_ungrouped:
        layers.append(nn.Linear(8, 8))  # in no layer group
    body = nn.Sequential(*layers)
    head = nn.Linear(8, 3)
    groups = [nn.ModuleList([early]), nn.ModuleList([middle, early[1]] if shared else [middle]),
              nn.ModuleList([late]), head]
    return Net(body, head, groups, 8, ((0.5,) * 3, (0.5,) * 3), "tiny", pretrained=False)


def fastai_even_mults(start: float, stop: float, n: int) -> list[float]:
    """fastai's `even_mults` (what `slice(lo, hi)` expands to), written from its definition."""
    if n == 1:
        return [stop]
    mult = stop / start
    step = mult ** (1 / (n - 1))
    return [start * step ** i for i in range(n)]


# ---------------------------------------------------------------- slice semantics

@pytest.mark.parametrize("lo, hi, n", [(1e-5, 1e-3, 3), (1e-6, 1e-2, 4), (3e-4, 1e-3, 2), (1e-4, 8.1e-3, 5),
                                       (2e-3, 2e-3, 4)])
def test_slice_lo_hi_is_a_geometric_spread_with_exact_endpoints(lo, hi, n):
    rates = lrs_for_groups(slice(lo, hi), n)
    assert len(rates) == n
    assert rates[0] == lo and rates[-1] == hi  # exact, not approximately
    np.testing.assert_allclose(rates, fastai_even_mults(lo, hi, n), rtol=1e-12)
    ratios = np.array(rates[1:]) / np.array(rates[:-1])
    np.testing.assert_allclose(ratios, (hi / lo) ** (1 / (n - 1)), rtol=1e-12)


@pytest.mark.parametrize("factor, n", [(10, 4), (3, 4), (10, 3), (2.6, 5)])
def test_slice_for_a_fixed_step_between_groups(factor, n):
    """slice(hi / factor**(n-1), hi): every group gets `factor` times less than the next (the lesson's 10x / 3x)."""
    hi = 1e-3
    rates = lrs_for_groups(slice(hi / factor ** (n - 1), hi), n)
    np.testing.assert_allclose(np.array(rates[1:]) / np.array(rates[:-1]), factor, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_slice_hi_gives_head_hi_and_every_other_group_a_tenth(n):
    rates = lrs_for_groups(slice(3e-3), n)
    assert rates[-1] == 3e-3
    assert rates[:-1] == [3e-3 / 10] * (n - 1)


def test_float_and_list_expand_as_given():
    assert lrs_for_groups(1e-3, 4) == [1e-3] * 4
    assert lrs_for_groups([1e-5, 1e-4, 1e-3], 3) == [1e-5, 1e-4, 1e-3]
    assert lrs_for_groups(np.array([1e-5, 1e-4]), 2) == [1e-5, 1e-4]


@pytest.mark.parametrize("bad", [slice(1e-5, 1e-3, 2), slice(0, 1e-3), slice(-1e-4, 1e-3), slice(None),
                                 slice(1e-3, -1.0), [1e-4, 1e-3]])
def test_bad_lr_specs_are_refused(bad):
    with pytest.raises(ValueError):
        lrs_for_groups(bad, 3)


# ---------------------------------------------------------------- group membership

def group_ids(groups):
    return [[id(p) for p in g["params"]] for g in groups]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("lr", [1e-3, slice(1e-3), slice(1e-6, 1e-3), [1e-6, 1e-5, 1e-4, 1e-3]])
def test_every_trainable_param_in_exactly_one_group_and_frozen_ones_in_none(n, lr):
    net = freeze_to(tiny_net(), n)
    if n == 4:  # everything frozen: nothing to optimise is an error, not an empty optimizer
        with pytest.raises(ValueError, match="frozen"):
            param_groups(net, lr)
        return
    groups = param_groups(net, lr)
    ids = [i for g in group_ids(groups) for i in g]
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    frozen = {id(p) for p in net.parameters() if not p.requires_grad}
    assert len(ids) == len(set(ids)), "a parameter sits in two optimizer groups"
    assert set(ids) == trainable
    assert not set(ids) & frozen
    # each optimizer group carries its layer group's LR (and initial_lr for schedules)
    rates = lrs_for_groups(lr, len(net.groups))
    for g in groups:
        assert g["lr"] == g["initial_lr"] == rates[g["layer_group"]]
        layer_params = {id(p) for p in net.groups[g["layer_group"]].parameters()}
        assert {id(p) for p in g["params"]} <= layer_params
    assert [g["layer_group"] for g in groups] == list(range(n, len(net.groups)))
    torch.optim.AdamW(groups)  # torch accepts them: no duplicates, no empty groups


def test_ungrouped_params_follow_group_0_and_shared_ones_count_once():
    net = unfreeze(tiny_net(extra_ungrouped=True, shared=True))
    groups = param_groups(net, slice(1e-6, 1e-3))
    ids = [i for g in group_ids(groups) for i in g]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    extra = net.body[5]
    owner = next(g for g in groups if any(p is extra.weight for p in g["params"]))
    assert owner["lr"] == 1e-6
    bn = net.groups[0][0][1]  # listed by groups 0 and 1: stays with group 0
    owner = [g for g in groups if any(p is bn.weight for p in g["params"])]
    assert len(owner) == 1 and owner[0]["layer_group"] == 0


# ---------------------------------------------------------------- schedules keep ratios in a real fit

def tiny_loaders(n_train=48, batch_size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (n_train,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)
    return SimpleNamespace(train=train, val=val)


class LRRecorder:
    """Callback: every group's lr after each optimizer step (the lr that step used)."""

    def __init__(self):
        self.steps, self.lrs = [], []

    def __call__(self, event, learn):
        if event == "after_batch":
            self.steps.append(learn.step)
            self.lrs.append([g["lr"] for g in learn.opt.param_groups])


SCHEDULES = {
    "constant": S.constant(3),
    "step": S.step_decay([1, 2], gamma=0.1, total_epochs=3),
    "cosine": S.cosine(3, min_frac=0.01),
    "cosine_warmup": S.cosine(3, warmup=0.5),
    "sgdr": S.sgdr(2, 1, cycle_mult=2),
    "one_cycle": S.one_cycle(3),
}


LR_SPECS = [(slice(1e-5, 1e-2), 0), (slice(3e-3), 0), ([1e-4, 3e-4, 1e-3, 3e-3], 1)]
CASES = [(name, *spec, "adamw") for name in sorted(SCHEDULES) for spec in LR_SPECS] + \
        [("sgdr", *LR_SPECS[0], "sgd"), ("one_cycle", *LR_SPECS[2], "sgd")]


@pytest.mark.parametrize("name, lr, freeze, opt", CASES)
def test_schedule_keeps_group_lr_ratios_at_every_step_of_fit(name, lr, freeze, opt):
    schedule = SCHEDULES[name]
    net = freeze_to(tiny_net(), freeze)
    dls = tiny_loaders()
    learn = Learner(net, dls, opt=opt, progress=False, device="cpu")
    rec = LRRecorder()
    epochs = 3
    learn.fit(epochs, lr, schedule=schedule, callbacks=[rec])
    spe = len(dls.train)
    base = lrs_for_groups(lr, len(net.groups))[freeze:]
    lrs = np.array(rec.lrs)
    assert lrs.shape == (epochs * spe, len(net.groups) - freeze)
    assert rec.steps == list(range(epochs * spe))
    # each group follows base * f(t) at every step ...
    factors = np.array([schedule(s / spe) for s in rec.steps])
    np.testing.assert_allclose(lrs, factors[:, None] * np.array(base)[None, :], rtol=1e-12, atol=1e-300)
    # ... so the ratios to the head never change (steps where a warm-up starts from 0 have no ratio)
    live = lrs[:, -1] > 0
    assert live.sum() >= len(lrs) - 1
    expected_ratios = np.broadcast_to(np.array(base) / base[-1], lrs[live].shape)
    np.testing.assert_allclose(lrs[live] / lrs[live, -1:], expected_ratios, rtol=1e-12)
    if name != "constant":  # the schedule really moved the LR (the test would notice a no-op)
        assert lrs[live, -1].max() / lrs[live, -1].min() > 5


def test_fit_without_schedule_keeps_the_given_rates():
    net = unfreeze(tiny_net())
    learn = Learner(net, tiny_loaders(), progress=False, device="cpu")
    rec = LRRecorder()
    learn.fit(1, slice(1e-6, 1e-3), callbacks=[rec])
    assert all(row == lrs_for_groups(slice(1e-6, 1e-3), 4) for row in rec.lrs)


def test_differential_rates_move_groups_in_proportion_with_sgd():
    """One plain-SGD step changes each group by lr * grad: the update ratios equal the LR ratios."""
    torch.manual_seed(0)
    net = unfreeze(tiny_net()).double()  # float64: a 1e-4 step must not vanish in rounding
    net.eval()  # BatchNorm in eval: the gradient does not depend on batch statistics
    rates = [1e-4, 1e-3, 1e-2, 1e-1]
    opt = torch.optim.SGD(param_groups(net, rates))
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    nn.functional.cross_entropy(net(x), y).backward()
    grads = {id(p): p.grad.clone() for p in net.parameters()}
    before = {id(p): p.detach().clone() for p in net.parameters()}
    opt.step()
    for i, group in enumerate(net.groups):
        for p in group.parameters():
            torch.testing.assert_close(before[id(p)] - p.detach(), rates[i] * grads[id(p)], rtol=1e-9, atol=1e-15)


def test_differential_lrs_steps_every_group_by_the_ratio():
    from tlkit.optim import default_group_ratio, differential_lrs
    assert lrs_for_groups(differential_lrs(0.09, 3, 3), 3) == pytest.approx([0.01, 0.03, 0.09])  # [lr/9, lr/3, lr]
    assert lrs_for_groups(differential_lrs(1e-3, 10, 4), 4) == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3])
    assert differential_lrs(1e-3, 1, 4) == 1e-3  # ratio 1 is a uniform rate
    assert default_group_ratio("hymenoptera") == 10 and default_group_ratio("dtd10") == 3
    assert default_group_ratio("/a/folder/of/my/own") == 3  # unknown data: the cautious rule
