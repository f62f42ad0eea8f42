"""The fit loop: learning, schedules, NaN handling, checkpoints and resume."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlkit import Learner, NonFiniteLossError
from tlkit.data import DataLoaders


class NoisyBlobs(Dataset):
    """Two Gaussian blobs as 1x8x8 'images'; a random flip per item exercises the RNG."""

    def __init__(self, n=96, seed=0, augment=True):
        self.augment = augment
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, 1, 8, 8, generator=g) + (self.y.float() * 2 - 1).view(-1, 1, 1, 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.augment and torch.rand(()) < 0.5:  # augmentation drawn from the global RNG
            x = x.flip(-1)
        return x, self.y[i]


def tiny_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(0.1), nn.Linear(4, 2))


def make_learner(seed=0, **kw):
    torch.manual_seed(seed)
    dls = DataLoaders(DataLoader(NoisyBlobs(), batch_size=16, shuffle=True),
                      DataLoader(NoisyBlobs(48, seed=1, augment=False), batch_size=32), ["neg", "pos"], None)
    return Learner(tiny_net(), dls, progress=False, **kw)


def test_fit_learns_and_records_history():
    learn = make_learner()
    hist = learn.fit(4, 0.05)
    assert list(hist.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert hist["val_acc"].iloc[-1] > 0.9 and hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    learn.fit(1, 0.01)
    assert len(learn.history) == 5


def test_schedule_sets_each_groups_lr_every_step():
    learn = make_learner(opt="sgd")
    seen = []
    learn.fit(2, 0.1, schedule=lambda t: 1 - t / 2, callbacks=[
        lambda ev, l: seen.append((l.step, l.opt.param_groups[0]["lr"])) if ev == "after_batch" else None])
    assert len(seen) == 12
    for step, lr in seen:
        assert lr == pytest.approx(0.1 * (1 - step / 6 / 2), rel=1e-12)


def test_nan_loss_stops_before_the_bad_step():
    learn = make_learner()
    learn.fit(1, 0.01)
    state = {k: v.clone() for k, v in learn.net.state_dict().items()}

    def poison(event, l):
        if event == "before_epoch":
            l.loss_fn = lambda out, y: out.sum() * float("nan")

    with pytest.raises(NonFiniteLossError, match="10x lower"):
        learn.fit(1, 0.01, callbacks=[poison])
    after = learn.net.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state if "running" not in k and "num_batches" not in k)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    reference = make_learner(seed=3)
    reference.fit(3, 0.05, checkpoint=tmp_path / "ref")
    def stop_in_epoch_three(event, l):
        if event == "after_batch" and l.epoch == 2 and l.step % 6 == 2:
            raise KeyboardInterrupt

    torch.manual_seed(3)
    interrupted = make_learner(seed=3)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(3, 0.05, checkpoint=tmp_path / "run", callbacks=[stop_in_epoch_three])
    assert len(interrupted.history) == 2

    torch.manual_seed(999)
    resumed = make_learner(seed=42)       # fresh weights: everything must come from the checkpoint
    hist = resumed.fit(3, 0.05, checkpoint=tmp_path / "run", resume=True)
    assert list(hist["epoch"]) == [1, 2, 3]
    ref_state, new_state = reference.net.state_dict(), resumed.net.state_dict()
    for k in ref_state:
        assert torch.equal(ref_state[k], new_state[k]), k


def test_resume_with_other_settings_is_refused(tmp_path):
    learn = make_learner()
    learn.fit(1, 0.05, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="same settings"):
        make_learner().fit(2, 0.05, checkpoint=tmp_path, resume=True)


def test_save_load_roundtrip_and_preds(tmp_path):
    learn = make_learner()
    learn.fit(1, 0.05)
    path = learn.save(tmp_path / "m.pt", classes=["neg", "pos"])
    other = make_learner(seed=7)
    state = other.load(path)
    assert state["classes"] == ["neg", "pos"]
    p1, y1 = learn.get_preds()
    p2, y2 = other.get_preds()
    assert torch.equal(p1, p2) and torch.equal(y1, y2)
    assert torch.allclose(p1.sum(1), torch.ones(len(p1)))
    ev = learn.evaluate()
    assert ev["acc"] == pytest.approx((p1.argmax(1) == y1).float().mean().item())
    # per-item log-losses: minus the log of each item's probability for its class, averaging to the loss
    expected = -p1.gather(1, y1[:, None]).log().squeeze(1)
    assert learn.last_losses.shape == y1.shape and torch.allclose(learn.last_losses, expected, atol=1e-5)
    assert ev["loss"] == pytest.approx(expected.mean().item(), abs=1e-5)


def test_bf16_autocast_trains_on_cpu():
    learn = make_learner(precision="bf16")
    hist = learn.fit(3, 0.05)
    assert hist["val_acc"].iloc[-1] > 0.8


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        make_learner(opt="rmsprop-typo")
    with pytest.raises(ValueError, match="precision"):
        make_learner(precision="int4")
    with pytest.raises(ValueError, match="epochs=0"):
        make_learner().fit(0)


@pytest.mark.parametrize("train", [True, False])
def test_seconds_per_image_leaves_weights_buffers_and_gradients_as_they_were(train):
    learn = make_learner()
    learn.fit(1, 0.05)
    before = {k: v.clone() for k, v in learn.net.state_dict().items()}
    learn.net.eval()
    seconds = learn.seconds_per_image(2, train=train)
    assert seconds > 0
    assert all(torch.equal(before[k], v) for k, v in learn.net.state_dict().items())   # BN statistics included
    assert all(p.grad is None for p in learn.net.parameters()) and not learn.net.training


def test_seconds_per_image_leaves_the_random_state_and_the_batch_order_as_they_were():
    """A timing read back from the fit cache draws nothing: so a timing taken must leave every generator as it was."""
    learn = make_learner()
    order = torch.Generator().manual_seed(3)
    learn.dls = DataLoaders(DataLoader(NoisyBlobs(), batch_size=16, shuffle=True, generator=order), learn.dls.val,
                            ["neg", "pos"], None)
    torch.manual_seed(1)
    global_before, order_before = torch.get_rng_state(), order.get_state()
    learn.seconds_per_image(2)     # NoisyBlobs flips from the global RNG, the sampler shuffles with `order`
    assert torch.equal(torch.get_rng_state(), global_before) and torch.equal(order.get_state(), order_before)


def test_seconds_per_image_needs_two_batches():
    learn = make_learner()
    learn.dls = DataLoaders(DataLoader(NoisyBlobs(16), batch_size=16), learn.dls.val, ["neg", "pos"], None)
    with pytest.raises(ValueError, match="at least 2 training batches"):
        learn.seconds_per_image()


# ---------------------------------------------------------------- events and cancelling

class Recorder:
    """A callback object: one method per event it cares about."""

    def __init__(self):
        self.seen = []

    def before_fit(self, learn):
        self.seen.append("before_fit")

    def before_batch(self, learn):
        self.seen.append("before_batch")

    def after_loss(self, learn):
        self.seen.append(("after_loss", float(learn.loss.detach())))

    def after_batch(self, learn):
        self.seen.append(("after_batch", learn.last_loss))

    def after_fit(self, learn):
        self.seen.append("after_fit")


def test_events_come_in_order_and_after_loss_sees_the_loss_the_step_used():
    learn, rec = make_learner(), Recorder()
    learn.fit(1, 1e-2, callbacks=[rec])
    steps = len(learn.dls.train)
    assert rec.seen[0] == "before_fit" and rec.seen[-1] == "after_fit" and len(rec.seen) == 2 + 3 * steps
    for i in range(steps):
        before, (loss_name, loss), (batch_name, last) = rec.seen[1 + 3 * i: 4 + 3 * i]
        assert (before, loss_name, batch_name) == ("before_batch", "after_loss", "after_batch") and loss == last


@pytest.mark.parametrize("make", [lambda: tlkit_on("after_bach", print),
                                  lambda: make_learner().fit(1, 1e-2, callbacks=[type("Typo", (), {
                                      "after_epcoh": lambda self, learn: None})()])])
def test_a_misspelled_event_is_refused_with_the_list_of_events(make):
    from tlkit.errors import ParameterError
    with pytest.raises(ParameterError, match="after_epoch"):
        make()


def tlkit_on(event, fn):
    from tlkit.train import on
    return on(event, fn)


def test_cancel_epoch_skips_the_rest_of_the_batches_but_still_validates():
    from tlkit.train import CancelEpoch
    learn, calls = make_learner(), []

    def stop_after_two(l):
        calls.append(l.step)
        if l.step % len(l.dls.train) == 1:
            raise CancelEpoch

    hist = learn.fit(3, 1e-2, callbacks=[tlkit_on("after_batch", stop_after_two)])
    assert len(hist) == 3 and len(calls) == 6 and hist["val_acc"].notna().all()


def test_cancel_fit_keeps_the_finished_epochs_and_after_fit_still_runs():
    from tlkit.train import CancelFit
    learn, ended = make_learner(), []

    def stop_in_second_epoch(l):
        if l.epoch == 1:
            raise CancelFit

    hist = learn.fit(4, 1e-2, callbacks=[tlkit_on("after_batch", stop_in_second_epoch),
                                         tlkit_on("after_fit", lambda l: ended.append(len(l.history)))])
    assert len(hist) == 1 and ended == [1] and len(learn.history) == 1


def test_after_fit_runs_when_fit_raises():
    learn, ended = make_learner(), []

    def poison(l):
        l.loss.data.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError):
        learn.fit(2, 1e-2, callbacks=[tlkit_on("after_loss", poison), tlkit_on("after_fit", ended.append)])
    assert ended == [learn]


def test_batch_timestamps_bracket_the_wait_for_data():
    import time as _time

    class Slow(NoisyBlobs):
        def __getitem__(self, i):
            _time.sleep(0.002)
            return super().__getitem__(i)

    learn, waits = make_learner(), []
    learn.dls.train = DataLoader(Slow(), batch_size=16)
    learn.fit(1, 1e-2, callbacks=[tlkit_on("before_batch", lambda l: waits.append(l.batch_ready_at
                                                                                  - l.batch_requested_at))])
    assert len(waits) == 6 and min(waits) >= 16 * 0.002


def test_validate_every_k_epochs_scores_those_and_the_last_and_trains_the_same_weights():
    from types import SimpleNamespace

    from tlkit.errors import ParameterError
    torch.manual_seed(0)
    x = torch.randn(48, 2)
    y = (x[:, 0] > 0).long()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]   # lists: scoring draws no random number
    runs = {}
    for validate in (True, 2, False):
        torch.manual_seed(0)
        learn = Learner(nn.Linear(2, 2), SimpleNamespace(train=batches, val=batches), progress=False)
        runs[validate] = (learn.fit(5, 0.1, validate=validate), learn)
    every, sparse, none = (runs[k][0] for k in (True, 2, False))
    assert sparse["val_acc"].notna().tolist() == [False, True, False, True, True]
    assert none["val_loss"].isna().all() and every["val_loss"].notna().all()
    scored = sparse["val_loss"].notna()
    assert sparse["val_loss"][scored].tolist() == pytest.approx(every["val_loss"][scored].tolist(), rel=1e-6)
    for a, b in zip(runs[True][1].net.parameters(), runs[2][1].net.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ParameterError, match="validate"):
        runs[2][1].fit(2, 0.1, validate=0)


# ---------------------------------------------------------------- micro-batches (gradient accumulation)

def one_step_grads(net, x, y, micro_batch):
    """The gradients `Learner` leaves after one step on (x, y), read before the optimizer applies them."""
    seen = {}
    dls = DataLoaders(DataLoader(list(zip(x, y)), batch_size=len(y)), None, ["neg", "pos"], None)
    learn = Learner(net, dls, opt="sgd", wd=0.0, progress=False, channels_last=False, micro_batch=micro_batch)
    learn.fit(1, 1e-3, validate=False, callbacks=[tlkit_on("after_loss", lambda l: seen.update(
        {n: p.grad.clone() for n, p in l.net.named_parameters()}))])
    return seen, learn


def test_micro_batches_add_up_to_each_pieces_own_gradient_weighted_by_its_size():
    """Reference: autograd on each piece alone (10 images as 4 + 4 + 2), BatchNorm statistics per piece."""
    torch.manual_seed(0)
    net = nn.Sequential(*tiny_net()[:5], tiny_net()[-1])   # no dropout: the same sums every time
    data = NoisyBlobs(10, augment=False)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    got, learn = one_step_grads(net, data.x, data.y, micro_batch=4)
    net.load_state_dict(start)
    net.zero_grad()
    net.train()                         # BatchNorm in training mode: each piece is normalised on its own
    for xs, ys in zip(data.x.split(4), data.y.split(4)):
        (nn.functional.cross_entropy(net(xs), ys) * len(ys) / 10).backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-7)
    assert learn.last_loss == pytest.approx(float(learn.loss)) and learn.loss.grad_fn is None


def test_micro_batches_change_nothing_without_batch_statistics():
    """No layer in training mode depends on other images of the batch, so 16 as 4 x 4 is the batch of 16."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    data = NoisyBlobs(16, augment=False)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    whole, learn_whole = one_step_grads(net, data.x, data.y, micro_batch=None)
    net.load_state_dict(start)
    pieces, learn_pieces = one_step_grads(net, data.x, data.y, micro_batch=4)
    for name in whole:
        torch.testing.assert_close(pieces[name], whole[name], rtol=1e-5, atol=1e-7)
    assert learn_pieces.last_loss == pytest.approx(learn_whole.last_loss, rel=1e-6)
    assert learn_pieces.history["train_acc"].iloc[0] == learn_whole.history["train_acc"].iloc[0]


def test_a_nan_in_a_later_piece_stops_before_the_step():
    learn = make_learner(micro_batch=4)
    before = {k: v.clone() for k, v in learn.net.named_parameters()}
    calls = []

    def poison_third_piece(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 3 else output

    learn.net[-1].register_forward_hook(poison_third_piece)
    with pytest.raises(NonFiniteLossError):
        learn.fit(1, 1e-2)
    assert len(calls) == 4           # the first batch of 16, as four pieces: then it stopped
    for k, v in learn.net.named_parameters():     # (BatchNorm's running statistics move in every forward pass)
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("bad", [0, -2, 2.5, "8"])
def test_micro_batch_must_be_a_positive_whole_number(bad):
    from tlkit.errors import ParameterError
    with pytest.raises(ParameterError, match="micro_batch"):
        make_learner(micro_batch=bad)
