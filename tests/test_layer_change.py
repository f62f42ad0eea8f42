"""Relative weight change per layer group, and reproducible fine-tuning runs from a shared start."""
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlkit.lr_finder import smooth_losses
from tlkit.models import Net, copy_state, unfreeze
from tlkit.optim import differential_lrs, param_groups
from tlkit.train import Learner
from tlkit.lessons import l05_differential_lr as lc

matplotlib.use("Agg")


def tiny_net(extra_ungrouped: bool = False) -> Net:
    torch.manual_seed(0)
    early = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    middle = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
    late = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
    layers = [early, middle, late, nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if extra_ungrouped:
        layers.append(nn.Linear(8, 8))
    head = nn.Linear(8, 3)
    return Net(nn.Sequential(*layers), head, [early, middle, late, head], 8, ((0.5,) * 3, (0.5,) * 3), "tiny", False)


def tiny_loaders(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(40, 3, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return SimpleNamespace(train=train, val=DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16))


def test_relative_change_of_a_scaled_tensor_is_the_scale():
    before = {"w": torch.randn(5, 7)}
    assert lc.relative_change(before, {"w": before["w"] * 1.1}) == pytest.approx(0.1, rel=1e-6)
    assert lc.relative_change(before, {"w": before["w"].clone()}) == 0.0


def test_relative_change_pools_tensors_like_one_concatenated_vector():
    torch.manual_seed(1)
    before = {"a": torch.randn(3, 4), "b": torch.randn(10), "c": torch.randn(2, 2)}
    after = {k: v + 0.01 * torch.randn_like(v) for k, v in before.items()}
    flat = lambda d, keys: torch.cat([d[k].flatten() for k in keys]).double()
    keys = ["a", "b"]
    ref = torch.linalg.vector_norm(flat(after, keys) - flat(before, keys)) / torch.linalg.vector_norm(flat(before, keys))
    assert lc.relative_change(before, after, keys) == pytest.approx(ref.item(), rel=1e-6)


def test_group_names_match_the_optimizer_groups():
    net = unfreeze(tiny_net(extra_ungrouped=True))
    names = lc.group_param_names(net)
    all_names = [n for g in names for n in g]
    assert sorted(all_names) == sorted(n for n, _ in net.named_parameters())  # a partition
    name_of = {id(p): n for n, p in net.named_parameters()}
    for g in param_groups(net, 1e-3):
        assert {name_of[id(p)] for p in g["params"]} <= set(names[g["layer_group"]])
    assert "body.5.weight" in names[0]  # the ungrouped Linear follows group 0, as in param_groups


def test_change_by_group_equals_lr_times_gradient_after_one_sgd_step():
    net = unfreeze(tiny_net()).double().eval()
    rates = [1e-4, 1e-3, 1e-2, 1e-1]
    opt = torch.optim.SGD(param_groups(net, rates))
    before = lc.weights_of(net)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    nn.functional.cross_entropy(net(x), y).backward()
    expected = []
    for group, lr in zip(net.groups, rates):
        step = torch.cat([(lr * p.grad).flatten() for p in group.parameters()])
        weights = torch.cat([p.detach().flatten() for p in group.parameters()])
        expected.append((torch.linalg.vector_norm(step) / torch.linalg.vector_norm(weights)).item())
    opt.step()
    np.testing.assert_allclose(lc.relative_change_by_group(net, before), expected, rtol=1e-4)


def test_change_by_tensor_lists_weight_matrices_in_network_order():
    net = tiny_net()
    before = lc.weights_of(net)
    with torch.no_grad():
        net.head.weight.mul_(1.5)
    table = lc.relative_change_by_tensor(net, before)
    assert list(table["name"]) == ["body.0.0.weight", "body.1.0.weight", "body.2.0.weight", "head.weight"]
    assert list(table["depth"]) == [0, 1, 2, 3] and list(table["group"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(table["rel_change"], [0, 0, 0, 0.5], atol=1e-7)


def test_finetune_from_is_reproducible_and_a_frozen_group_does_not_move():
    from tlkit.models import freeze_to
    net = unfreeze(tiny_net())
    learn = Learner(net, tiny_loaders(), progress=False, device="cpu")
    start = copy_state(net)
    lc.finetune_from(learn, start, 1e-2, 1, seed=3)  # consumes the loader's generator and the global RNG
    freeze_to(net, 2)                                # groups 0 and 1 get no rate at all (fit refuses a rate of 0)
    a = lc.finetune_from(learn, start, [1e-3, 1e-3, 1e-3, 1e-2], 2, seed=3, label="a")
    weights_a = lc.weights_of(net)
    b = lc.finetune_from(learn, start, [1e-3, 1e-3, 1e-3, 1e-2], 2, seed=3, label="b")
    assert all(torch.equal(weights_a[k], v) for k, v in lc.weights_of(net).items())  # same batches, same result
    assert a.acc == b.acc and a.rel_change == b.rel_change
    assert a.rel_change[0] == a.rel_change[1] == 0.0 and a.rel_change[2] > 0 and a.rel_change[3] > 0
    assert a.lrs == [1e-3, 1e-3, 1e-3, 1e-2]


def test_runs_per_ratio_give_every_run_the_same_head_lr_and_steps_below():
    from tlkit.schedules import sgdr
    net = unfreeze(tiny_net())
    learn = Learner(net, tiny_loaders(), progress=False, device="cpu")
    start = copy_state(net)
    runs = {lc.ratio_label(r): lc.finetune_from(learn, start, differential_lrs(1e-2, r, 4), 1, sgdr(1, 1),
                                                label=lc.ratio_label(r)) for r in (1, 3, 10)}
    assert runs["uniform"].lrs == [1e-2] * 4
    np.testing.assert_allclose(runs["10x"].lrs, [1e-5, 1e-4, 1e-3, 1e-2], rtol=1e-12)
    np.testing.assert_allclose(runs["3x"].lrs, [1e-2 / 27, 1e-2 / 9, 1e-2 / 3, 1e-2], rtol=1e-12)
    # Adam moves each weight by roughly the lr per step: the early group follows its lr
    assert runs["10x"].rel_change[0] < runs["3x"].rel_change[0] < runs["uniform"].rel_change[0]
    table = lc.change_table(list(runs.values()))
    assert len(table) == 12 and list(table["run"].unique()) == ["uniform", "3x", "10x"]
    ax = lc.plot_change_by_group(list(runs.values()))
    assert len([p for p in ax.patches if p.get_height() > 0]) == 12


def test_differential_lrs_is_a_slice_with_the_asked_step():
    s = differential_lrs(1e-3, 3, 4)
    assert s.stop == 1e-3 and s.start == pytest.approx(1e-3 / 27)
    assert differential_lrs(1e-3, 1, 4) == 1e-3
    assert lc.group_labels(4) == ["0 early", "1 middle", "2 late", "3 head"]
    assert lc.group_labels(3)[-1] == "2 head"
    assert [lc.ratio_label(r) for r in (1, 10, 3, 2.5)] == ["uniform", "10x", "3x", "2.5x"]


def test_frozen_bn_stats_keeps_running_statistics_and_still_trains_the_affine_part():
    net = unfreeze(tiny_net())
    bn = net.body[0][1]
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    learn = Learner(net, tiny_loaders(), progress=False, device="cpu")
    run = lc.finetune_from(learn, copy_state(net), 1e-2, 1, bn_stats=False)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert not torch.equal(bn.weight.detach(), torch.ones_like(bn.weight)) and run.rel_change[0] > 0
    net.train()
    with lc.frozen_bn_stats(net):
        net(torch.randn(4, *next(iter(tiny_loaders().train))[0].shape[1:]))
    assert bn.training  # each layer leaves the block in the mode it entered
    net.train()
    assert bn.training  # the hooks are gone after the block
    lc.finetune_from(learn, copy_state(net), 1e-2, 1, bn_stats=True)
    assert not torch.equal(bn.running_mean, mean)


# ---------------------------------------------------------------- lesson 05's study: seeds x settings, intervals

def test_group_frozen_leaves_group_0_untouched_and_restores_the_flags():
    net = unfreeze(tiny_net())
    learn = Learner(net, tiny_loaders(), progress=False, device="cpu")
    start = copy_state(net)
    with lc.group_frozen(net, 0):
        run = lc.finetune_from(learn, start, 1e-2, 1, seed=1)
    assert run.rel_change[0] == 0.0 and run.first_filter_change == 0.0 and run.rel_change[1] > 0
    assert all(p.requires_grad for p in net.parameters())
    assert run.correct.shape == (16,) and run.correct.mean() == pytest.approx(run.acc)
    assert torch.equal(run.first_filters, net.body[0][0].weight.detach())
    assert lc.first_conv(net) is net.body[0][0]


def test_finetune_from_restarts_a_sampler_generator_too():
    """Loaders whose order lives in the sampler's generator (lesson 01's tasks) replay the same batches."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    ds = TensorDataset(x, y)
    sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0))
    dls = SimpleNamespace(train=DataLoader(ds, batch_size=8, sampler=sampler),
                          val=DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16))
    net = unfreeze(tiny_net())
    learn = Learner(net, dls, progress=False, device="cpu")
    start = copy_state(net)
    a = lc.finetune_from(learn, start, 1e-2, 1, seed=5)
    b = lc.finetune_from(learn, start, 1e-2, 1, seed=5)
    assert a.rel_change == b.rel_change


def test_study_runs_every_setting_per_seed_and_the_verdicts_read_its_correctness(monkeypatch):
    from tlkit.claims import verdict_of
    net = unfreeze(tiny_net())
    learn = Learner(net, tiny_loaders(), progress=False, device="cpu")
    start = copy_state(net)
    found = {"uniform": (None, 1e-3), "3x": (None, 3e-3), "10x": (None, 1e-2)}
    st = lc.study_on(learn, start, "tiny", "dissimilar", 3, 0.5, found, seeds=[0, 1], epochs=1)
    assert list(st.runs) == ["uniform", "3x", "10x", lc.FROZEN0] and all(len(r) == 2 for r in st.runs.values())
    assert st.runs["10x"][0].lrs == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2])
    assert st.runs[lc.FROZEN0][0].lrs == [0.0, 1e-3, 1e-3, 1e-3] and st.runs[lc.FROZEN0][1].rel_change[0] == 0
    assert st.correct("3x").shape == (2, 16) and st.ratio_settings == ["uniform", "3x", "10x"]
    table = st.table()
    assert list(table["setting"]) == ["head only", "uniform", "3x", "10x", lc.FROZEN0]
    assert st.losses("3x").shape == (2, 16) and (st.losses("3x") > 0).all()
    # verdicts on synthetic per-image log-losses (accuracy beside them) with a known answer
    n = 600
    rng = np.random.default_rng(3)

    def fake(losses):
        """Runs whose per-image log-loss has the given mean (exponential) and accuracy about exp(-loss)."""
        return {k: [SimpleNamespace(losses=rng.exponential(m, n), correct=rng.random(n) < np.exp(-m))
                    for _ in range(3)] for k, m in losses.items()}

    good = lc.Study("p", "similar", 10, 0.8, {}, {}, fake({"uniform": 0.6, "3x": 0.6, "10x": 0.3, lc.FROZEN0: 0.6}),
                    [0, 1, 2])
    bad = lc.Study("d", "dissimilar", 3, 0.8, {}, {}, fake({"uniform": 0.3, "3x": 0.6, "10x": 0.3, lc.FROZEN0: 0.3}),
                   [0, 1, 2])
    v = lc.verdict_ratio_rule(good, good)
    assert v.verdict == "supported" and v.effect == pytest.approx(0.3, abs=0.04) and v.n == 2 * n and v.runs == 3
    assert v.unit == "nats of log-loss" and v.aside.startswith("accuracy +")   # exp(-.3) - exp(-.6) = +19 points
    assert lc.verdict_ratio_rule(bad, bad).verdict == "contradicted"
    assert lc.verdict_ratio_rule(good, bad).effect == pytest.approx(0.0, abs=0.04)
    assert lc.verdict_relearn(bad).verdict == "not shown at this size"
    relearn = lc.verdict_relearn(good)
    assert relearn.effect == pytest.approx(0.0, abs=0.04) and relearn.verdict == verdict_of(*relearn.ci)
    frozen_better = lc.Study("d", "dissimilar", 3, 0.8, {}, {}, fake({"uniform": 0.6, "3x": 0.6, "10x": 0.6,
                                                                       lc.FROZEN0: 0.3}), [0, 1, 2])
    assert lc.verdict_relearn(frozen_better).verdict == "contradicted"
    assert lc.verdict_relearn(frozen_better).effect == pytest.approx(-0.3, abs=0.04)
    comp = lc.comparisons(good)
    assert len(comp) == 4 and comp.iloc[-1]["B"] == lc.FROZEN0
    assert comp.set_index(["A", "B"]).loc[("uniform", "10x"), "reads"] == "B better"
    assert "cannot tell" in lc.similar_set_note(bad)          # frozen and trained group 0 fit equally well there
    assert "n = 600 images, 3 seeds" in lc.similar_set_note(bad)      # n counts images, as in every verdict


def test_finder_smoothing_averages_about_one_decade_of_the_sweep():
    """1 - 1/(steps per decade): at the end of a 30-step sweep over 5 decades, about 1 - 1/e of the smoothed
    loss comes from the last decade's 6 steps (fastai's 0.98: a quarter; the rest is the sweep's history)."""
    assert lc.finder_smoothing(30, 1e-5, 1.0) == pytest.approx(1 - 1 / 6)
    assert lc.finder_smoothing(100, 1e-5, 1.0) == pytest.approx(0.95)
    assert lc.finder_smoothing(1000, 1e-7, 10.0) == 0.98          # never smoother than fastai's default
    assert lc.finder_smoothing(4, 1e-5, 1.0) == 0.5               # nor rougher than two steps
    last_decade_only = np.r_[np.zeros(24), np.ones(6)]            # a loss of 1 on the last 6 steps, 0 before
    share = smooth_losses(last_decade_only, lc.finder_smoothing(30, 1e-5, 1.0))[-1]
    assert 0.6 < share < 0.75
    assert smooth_losses(last_decade_only, 0.98)[-1] < 0.3


def test_loss_floor_is_a_share_of_the_chance_loss():
    net = tiny_net()                                               # 3 classes
    assert lc.loss_floor(net) == pytest.approx(lc.FLOOR_OF_CHANCE * np.log(3))
    probs = torch.full((1, 3), 1 / 3)
    chance = torch.nn.functional.nll_loss(probs.log(), torch.tensor([0])).item()
    assert lc.loss_floor(net) == pytest.approx(lc.FLOOR_OF_CHANCE * chance)
