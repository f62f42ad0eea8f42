"""Snapshots are taken at the cycle ends, round-trip exactly, and ensemble by averaging probabilities."""
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tlkit import schedules, snapshots
from tlkit.train import Learner
from tlkit.lessons import l04_sgdr


def tiny_learner(steps_per_epoch=4):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8 * steps_per_epoch, 6, generator=g), torch.randint(0, 3, (8 * steps_per_epoch,), generator=g)
    dls = SimpleNamespace(train=DataLoader(TensorDataset(x, y), batch_size=8),
                          val=DataLoader(TensorDataset(x[:12], y[:12]), batch_size=5))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    return Learner(net, dls, opt="sgd", progress=False)


def state_copy(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_snapshot_file_round_trips_bit_for_bit(tmp_path):
    learn = tiny_learner()
    path = snapshots.save_snapshot(learn.net, tmp_path / "s.pt", epoch=3.0)
    fresh = tiny_learner().net
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    meta = snapshots.load_snapshot(fresh, path)
    assert meta == {"epoch": 3.0}
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in learn.net.state_dict().items())


@pytest.mark.parametrize("cycle_mult", [1, 2])
def test_saver_takes_one_snapshot_at_the_end_of_every_cycle(tmp_path, cycle_mult):
    learn = tiny_learner()
    schedule = schedules.sgdr(3, 1, cycle_mult, min_frac=0.01)
    saver = snapshots.SnapshotSaver(tmp_path, schedule)
    after_epoch = {}
    record = lambda event, l: after_epoch.__setitem__(l.epoch + 1, state_copy(l.net)) if event == "after_epoch" else None  # noqa: E731
    learn.fit(int(schedule.total_epochs), 0.05, schedule=schedule, callbacks=[saver, record])

    assert saver.epochs == schedule.cycle_ends == ([1, 2, 3] if cycle_mult == 1 else [1, 3, 7])
    assert [p.name for p in saver.paths] == ["snapshot_00.pt", "snapshot_01.pt", "snapshot_02.pt"]
    for path, end in zip(saver.paths, schedule.cycle_ends):
        net = tiny_learner().net
        snapshots.load_snapshot(net, path)
        assert all(torch.equal(v, after_epoch[end][k]) for k, v in net.state_dict().items())


def test_ensemble_is_the_mean_of_the_snapshots_softmax_and_weights_are_restored(tmp_path):
    learn = tiny_learner()
    schedule = schedules.sgdr(2, 1, 1)
    saver = snapshots.SnapshotSaver(tmp_path, schedule)
    learn.fit(2, 0.1, schedule=schedule, callbacks=[saver])
    with torch.no_grad():
        learn.net[0].weight.add_(0.5)   # current weights differ from every snapshot
    current = state_copy(learn.net)

    probs, targets = snapshots.snapshot_predictions(learn, saver.paths)
    assert all(torch.equal(v, learn.net.state_dict()[k]) for k, v in current.items())

    x, y = (torch.cat(t) for t in zip(*learn.dls.val))
    manual = []
    for path in saver.paths:
        net = tiny_learner().net
        snapshots.load_snapshot(net, path)
        with torch.no_grad():
            manual.append(net(x).softmax(1))
    torch.testing.assert_close(probs, torch.stack(manual))
    assert torch.equal(targets, y)
    ensemble = snapshots.ensemble_probs(probs)
    torch.testing.assert_close(ensemble, (manual[0] + manual[1]) / 2)
    torch.testing.assert_close(ensemble.sum(1), torch.ones(len(y)))
    table = l04_sgdr.snapshot_table(probs, targets, saver.epochs)
    assert list(table["model"]) == ["snapshot 0 (epoch 1)", "snapshot 1 (epoch 2)", "ensemble of last 2"]
    assert table["acc"].iloc[-1] == pytest.approx((ensemble.argmax(1) == y).float().mean().item())
