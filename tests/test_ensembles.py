"""Ensembles and weight averaging (tlkit.ensembles)."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlkit import ensembles, tta
from tlkit.features import FeatureSet
from tlkit.lessons import l06_tta_ensembles
from tlkit import metrics


def small_cnn(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    net.train()
    net(torch.randn(8, 3, 6, 6) + seed)  # move BatchNorm's running statistics away from their defaults
    return net.eval()


def loader(n=10, seed=0, batch_size=4):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 3, 6, 6, generator=g), torch.arange(n) % 3),
                      batch_size=batch_size)


def test_weight_average_of_identical_models_is_the_identity():
    net = small_cnn(0)
    soup = ensembles.average_weights([net, copy.deepcopy(net), copy.deepcopy(net)])
    for key, value in net.state_dict().items():
        assert torch.equal(soup.state_dict()[key], value), key
    x = torch.randn(5, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(soup(x), net(x))


def test_weight_average_is_the_mean_of_every_float_tensor():
    nets = [small_cnn(s) for s in range(3)]
    soup = ensembles.average_weights(nets).state_dict()
    for key, value in soup.items():
        stacked = torch.stack([n.state_dict()[key] for n in nets])
        if value.is_floating_point():
            torch.testing.assert_close(value, stacked.mean(0), msg=key)
        else:
            assert torch.equal(value, stacked[0]), key   # counters (num_batches_tracked) are the first's


def test_interpolation_by_hand_and_a_mismatch_is_refused():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    mid = ensembles.interpolate_weights(a, b, 0.25)
    torch.testing.assert_close(mid.weight, (0.75 * a.weight + 0.25 * b.weight).detach())
    assert torch.equal(ensembles.interpolate_weights(a, b, 0).weight, a.weight)
    assert torch.equal(ensembles.interpolate_weights(a, b, 1).weight, b.weight)
    with pytest.raises(ValueError):
        ensembles.average_weights([a, nn.Linear(2, 3, bias=False)])


def test_averaging_linear_models_averages_their_logits():
    # a linear model is linear in its weights: weight averaging == logit averaging, the one case where they agree
    heads = [nn.Linear(5, 3) for _ in range(4)]
    x = torch.randn(7, 5)
    with torch.no_grad():
        mean_logits = torch.stack([h(x) for h in heads]).mean(0)
        torch.testing.assert_close(ensembles.average_weights(heads)(x), mean_logits)


def test_ensemble_predict_is_the_mean_of_member_probabilities():
    nets = [small_cnn(s) for s in range(3)]
    probs, targets = ensembles.ensemble_predict(nets, loader())
    x, y = loader(batch_size=10).dataset.tensors
    with torch.no_grad():
        expected = torch.stack([n(x).softmax(-1) for n in nets]).mean(0)
        torch.testing.assert_close(probs, expected)
        assert torch.equal(targets, y)
        # the Ensemble module gives the same probabilities through its log-mean-probability output
        torch.testing.assert_close(ensembles.Ensemble(nets)(x).softmax(-1), expected)


def test_accuracy_vs_members_first_row_is_the_single_model():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]],      # member 0: right, wrong, right
                           [[0.0, 3.0], [3.0, 0.0], [0.0, 1.0]],      # member 1: wrong, right, right
                           [[1.0, 0.0], [2.0, 0.0], [1.0, 0.0]]])     # member 2: right, right, wrong
    targets = torch.tensor([0, 0, 1])
    table = l06_tta_ensembles.accuracy_vs_members(logits, targets).set_index("members")
    assert table.loc[1, "acc"] == pytest.approx(2 / 3)
    assert table.loc[1, "single_acc_mean"] == pytest.approx(2 / 3)
    # by hand: the mean probabilities of all three get items 0 and 1 right, item 2 wrong
    assert table.loc[3, "acc"] == pytest.approx(metrics.accuracy(logits.softmax(-1).mean(0), targets))


def test_ensemble_accepts_models_on_any_device_and_leaves_them_there():
    nets = [small_cnn(s) for s in range(2)]
    nets[0].train()
    reference, _ = ensembles.ensemble_predict(nets, loader())
    moved, _ = ensembles.ensemble_predict(nets, loader(), device="cpu")
    torch.testing.assert_close(moved, reference)
    assert nets[0].training and not nets[1].training          # modes restored
    assert all(tta.model_device(n).type == "cpu" for n in nets)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ensemble_mixes_cpu_and_cuda_models():
    nets = [small_cnn(s) for s in range(3)]
    cpu_probs, _ = ensembles.ensemble_predict(nets, loader())
    nets[1].cuda()
    mixed, _ = ensembles.ensemble_predict(nets, loader())
    torch.testing.assert_close(mixed, cpu_probs, rtol=1e-4, atol=1e-5)
    on_gpu, _ = ensembles.ensemble_predict(nets, loader(), device="cuda")
    torch.testing.assert_close(on_gpu, cpu_probs, rtol=1e-4, atol=1e-5)
    assert tta.model_device(nets[1]).type == "cuda" and tta.model_device(nets[0]).type == "cpu"


def test_train_heads_follow_their_seeds_and_shared_init():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 6, generator=g), torch.randint(0, 2, (48,), generator=g)
    train, val = FeatureSet(x, y, classes=["a", "b"]), FeatureSet(x[:8], y[:8], classes=["a", "b"])
    a, b, c = l06_tta_ensembles.train_heads(train, val, seeds=[0, 0, 1], epochs=2, hidden=8, batch_size=16)
    for key in a.state_dict():
        assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()["0.weight"], c.state_dict()["0.weight"])
    # with a shared init and no training steps, heads of different seeds start identical
    d, e = l06_tta_ensembles.train_heads(train, val, seeds=[2, 3], epochs=1, lr=1e-12, hidden=8, init_seed=7,
                                 batch_size=16)
    torch.testing.assert_close(d.state_dict()["0.weight"], e.state_dict()["0.weight"], rtol=0, atol=1e-9)


def test_outputs_vs_weights_reuses_member_logits_and_is_exact_for_identical_members():
    nets = [small_cnn(s) for s in range(3)]
    fresh = l06_tta_ensembles.outputs_vs_weights(nets, loader())
    logits, _ = ensembles.member_logits(nets, loader())
    assert l06_tta_ensembles.outputs_vs_weights(nets, loader(), logits=logits) == fresh
    probs, y = ensembles.ensemble_predict(nets, loader())
    assert fresh["output_avg_acc"] == metrics.accuracy(probs, y)
    clones = [nets[0], copy.deepcopy(nets[0])]
    same = l06_tta_ensembles.outputs_vs_weights(clones, loader())
    assert same["weight_avg_acc"] == same["output_avg_acc"] == same["member_acc_mean"]


# ---------------------------------------------------------------- claim 20: verdicts and cost against M

def _logits_from_predictions(preds, k=3):
    """Member logits [M, N, K] that predict `preds[m][n]` (one-hot times 5)."""
    import torch
    preds = torch.as_tensor(preds)
    return torch.nn.functional.one_hot(preds, k).float() * 5


def test_ensemble_gain_is_the_vote_minus_the_share_of_members_right():
    import numpy as np
    import torch
    targets = torch.zeros(600, dtype=torch.long)
    # three members, each wrong on its own third of the images: the average is right everywhere
    preds = torch.zeros(3, 600, dtype=torch.long)
    for m in range(3):
        preds[m, m * 200:(m + 1) * 200] = 1 + m % 2
    logits = _logits_from_predictions(preds)
    assert metrics.correct(logits, targets).mean() == pytest.approx(2 / 3)
    v = l06_tta_ensembles.verdict_ensemble_gain(logits, targets)
    assert v.id == 20 and v.effect == pytest.approx(1 / 3) and v.verdict == "supported" and v.n == 600
    same = _logits_from_predictions(preds[[0, 0, 0]])      # identical members: no gain, an interval of zero width
    assert l06_tta_ensembles.verdict_ensemble_gain(same, targets).effect == 0.0
    weight_avg = _logits_from_predictions(torch.ones(600, dtype=torch.long))   # a collapsed weight average
    w = l06_tta_ensembles.verdict_outputs_vs_weights(logits, weight_avg, targets)
    assert w.effect == pytest.approx(1.0) and w.verdict == "supported"
    text = l06_tta_ensembles.part_sentence(w, "outputs, not weights")
    assert text.startswith("*Claim 20, outputs, not weights:* in this run,") and "**Claim" not in text
    assert np.isclose(metrics.correct(logits, targets)[0, :200].sum(), 0)


def test_cost_vs_members_grows_with_the_members():
    import torch
    from torch import nn
    torch.manual_seed(0)
    # members of ~20 ms each: long enough that per-call overheads and a busy machine's jitter stay small
    nets = [nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 10)) for _ in range(4)]
    table = l06_tta_ensembles.cost_vs_members(nets, torch.randn(512, 512), repeats=5)
    assert list(table["members"]) == [1, 2, 3, 4]
    assert (table["cost_low"] <= table["cost_ratio"]).all() and (table["cost_ratio"] <= table["cost_high"]).all()
    assert table["cost_ratio"].iloc[-1] > 2          # four networks of the same size cost several times one
