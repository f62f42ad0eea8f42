"""One small fit loop for every lesson: per-step schedules, metrics, progress, history, checkpoints."""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
import reprlib
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import fit_cache
from .errors import CheckpointError, ParameterError
from .optim import param_groups
from .progress import progress as progress_bar
from .storage import atomic_save
from .validate import check_positive, check_positive_int
from .models import copy_state, eval_mode

__all__ = ["CancelEpoch", "CancelFit", "Learner", "NonFiniteLossError", "check_lr", "load_checkpoint", "on",
           "progress_enabled", "rng_state", "scores_after", "set_rng_state", "EVENTS", "OPTIMIZERS", "RESUME_KEYS",
           "autocast"]

Callback = Callable[[str, "Learner"], None]

# Where `fit` calls its callbacks, in order. A callback is a function `cb(event, learn)` (see `on`) or an
# object with methods named after these events, each taking the learner.
EVENTS = ("before_fit", "before_epoch", "before_batch", "after_loss", "after_batch", "after_epoch", "after_fit")


class CancelFit(Exception):
    """Raise in a callback to stop training: the finished epochs stay in the history and `after_fit` still runs."""


class CancelEpoch(Exception):
    """Raise in a callback to end this epoch's training batches: validation and `after_epoch` still run."""


def on(event: str, fn: Callable[["Learner"], None]) -> Callback:
    """A callback that calls `fn(learn)` at one event; a misspelled event name is refused here, not ignored."""
    _check_event(event)

    def callback(at: str, learn: "Learner") -> None:
        if at == event:
            fn(learn)
    callback.__qualname__ = f"on({event!r}, {getattr(fn, '__qualname__', fn)!r})"
    return callback


def _pieces(x: torch.Tensor, y: torch.Tensor, micro_batch: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batch as pieces of at most `micro_batch` items (one piece without a limit)."""
    if micro_batch is None or len(y) <= micro_batch:
        return [(x, y)]
    return list(zip(x.split(micro_batch), y.split(micro_batch)))


def _check_event(event: str) -> None:
    if event not in EVENTS:
        close = [e for e in EVENTS if e.split("_")[1] in event or event.split("_")[-1] in e]
        raise ParameterError(f"unknown callback event {event!r}; the events are {EVENTS}"
                             + (f" (did you mean {close[0]!r}?)" if close else ""))


def _as_function(cb) -> Callback:
    """A callback object's event methods as one `cb(event, learn)` function; a plain function as it is."""
    methods = {name for name in dir(cb) if name.startswith(("before_", "after_")) and callable(getattr(cb, name))}
    if not methods:
        if callable(cb):
            return cb
        raise ParameterError(f"callback {cb!r} must be a function cb(event, learner) or have methods named after "
                             f"the events {EVENTS}, e.g. tlkit.train.on('after_batch', fn).")
    for name in methods:
        _check_event(name)
    return lambda event, learn: getattr(cb, event)(learn) if event in methods else None


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the bad step was applied."""


def _sgd(groups, wd):
    return torch.optim.SGD(groups, momentum=0.9, weight_decay=wd)


def _adamw(groups, wd):
    return torch.optim.AdamW(groups, weight_decay=wd)


OPTIMIZERS = {"sgd": _sgd, "adamw": _adamw}


def autocast(device: str | torch.device, precision: str | None):
    """`torch.autocast` for "bf16" / "fp16" on `device`, or a no-op context for None / "fp32"."""
    if precision in (None, "fp32"):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype)


def progress_enabled() -> bool:
    """Progress bars are on unless TLKIT_PROGRESS=0 (CI logs stay short)."""
    return os.environ.get("TLKIT_PROGRESS", "1") != "0"


class Learner:
    """A network, its data and how to train it (fastai's vocabulary, a few dozen lines of loop)."""

    def __init__(self, net: nn.Module, dls, opt: str | Callable = "adamw", wd: float = 1e-4,
                 loss_fn: Callable | None = None, device: torch.device | str | None = None,
                 precision: str | None = None, channels_last: bool = True, progress: bool | None = None,
                 micro_batch: int | None = None):
        """`micro_batch` splits each batch into pieces of at most that many images for the forward and backward
        passes; their gradients add up to the batch's and the optimizer steps once per batch (gradient
        accumulation). Why: activation memory follows the piece, not the batch. BatchNorm layers in training
        mode normalise each piece on its own; frozen ones (eval mode) give the batch's result. `loss_fn` must
        average over the batch, as torch's losses do by default."""
        if isinstance(opt, str) and opt not in OPTIMIZERS:
            raise ValueError(f"opt={opt!r}: choose one of {sorted(OPTIMIZERS)} or pass a callable(groups, wd)")
        if precision not in (None, "fp32", "bf16", "fp16"):
            raise ValueError(f"precision={precision!r}: choose None (fp32), 'bf16' or 'fp16'")
        check_positive("wd", wd, 1e-4, allow_zero=True)
        if micro_batch is not None:
            check_positive_int("micro_batch", micro_batch, 8)
        self.micro_batch = micro_batch
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.net = net.to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.dls, self.opt_factory, self.wd = dls, OPTIMIZERS.get(opt, opt), wd
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.precision = None if precision == "fp32" else precision
        self.progress = progress_enabled() if progress is None else progress
        self.history = pd.DataFrame()
        self.opt: torch.optim.Optimizer | None = None
        self.epoch, self.step, self.last_loss = 0, 0, float("nan")
        self.last_correct: torch.Tensor | None = None
        self.last_losses: torch.Tensor | None = None   # per-item cross-entropy of the last `evaluate`
        self.loss: torch.Tensor | None = None      # the current batch's loss (callbacks read it at after_loss)
        self.batch_requested_at = self.batch_ready_at = 0.0
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    # ------------------------------------------------------------ pieces

    def make_optimizer(self, lr) -> torch.optim.Optimizer:
        """An optimizer over the trainable parameters, one group per layer group (discriminative LRs)."""
        if hasattr(self.net, "groups"):
            groups = param_groups(self.net, lr)
        else:
            groups = [{"params": [p for p in self.net.parameters() if p.requires_grad],
                       "lr": float(lr), "initial_lr": float(lr)}]
        return self.opt_factory(groups, self.wd)

    def autocast(self):
        """The mixed-precision context for forward passes (a no-op in fp32)."""
        return autocast(self.device, self.precision)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor):
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    # ------------------------------------------------------------ training

    def fit(self, epochs: int, lr: float | slice | Sequence[float] = 1e-3, schedule: Callable | None = None,
            checkpoint: str | os.PathLike | None = None, resume: bool = False,
            callbacks: Iterable[Callback] = (), validate: bool | int = True) -> pd.DataFrame:
        """Train for `epochs`; `schedule(t)` scales every group's base LR at `t` epochs elapsed.

        With `checkpoint`, a checkpoint is written after each epoch; `resume=True` continues from it
        and ends with the same weights as an uninterrupted run (bit for bit with num_workers=0).
        `callbacks` are called at each of `EVENTS`; one may raise `CancelEpoch` or `CancelFit`.
        Where the fit cache is on (the lessons: `tlkit.fit_cache`), a fit without checkpoint that ran before with
        exactly the same inputs is read back instead of trained again (with callbacks only if each one can say
        what it is and keep its state: `fit_cache_id`, `fit_cache_state`, `load_fit_cache_state`).
        `validate=False` skips the validation pass after each epoch (its columns are NaN); `validate=k` runs it
        after every k-th epoch and the last (`scores_after`). Why: a curve needs a few points, and on a small
        network each pass over the validation set is a large share of an epoch.
        """
        callbacks, given = _check_fit_args(epochs, lr, schedule, checkpoint, resume, callbacks)
        if not isinstance(validate, bool):
            check_positive_int("validate", validate, 3)
        ckpt = Path(checkpoint) / "last.pt" if checkpoint else None
        state = self._read_checkpoint(ckpt, epochs, lr) if ckpt and resume and ckpt.exists() else None
        self.opt = self.make_optimizer(lr)
        start, rows = self._resume(ckpt, state, epochs) if state else (0, [])
        model, train_loader = self._distributed_wrap()
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise ValueError("the training loader is empty: check the dataset and batch size")
        memo = fit_cache.lookup(self, epochs, lr, schedule, validate, steps_per_epoch, given) \
            if not (ckpt or model is not self.net) else None
        replayed = memo.replay(self) if memo else None
        if replayed is not None:
            new = pd.DataFrame(replayed)
            self.history = pd.concat([self.history, new], ignore_index=True) if len(new) else self.history
            return new
        epoch_bar = progress_bar(range(start, epochs), desc="epochs", disable=not self.progress, leave=False)
        try:
            self._emit("before_fit", callbacks)
            for epoch in epoch_bar:
                self.epoch = epoch
                self._emit("before_epoch", callbacks)
                t0 = time.perf_counter()
                if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
                    train_loader.sampler.set_epoch(epoch)
                train_loss, train_acc = self._train_epoch(model, train_loader, epoch, steps_per_epoch,
                                                          schedule, callbacks)
                scored = scores_after(epoch + 1, epochs, validate)
                val = self.evaluate() if scored else {"loss": float("nan"), "acc": float("nan")}
                row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                       "val_loss": val["loss"], "val_acc": val["acc"],
                       "lr": max(g["lr"] for g in self.opt.param_groups),
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                epoch_bar.set_postfix(train_loss=f"{train_loss:.3f}",
                                      **({"val_acc": f"{val['acc']:.3f}"} if scored else {}))
                if ckpt and _is_main_process():
                    self._save_checkpoint(ckpt, epoch + 1, epochs, lr, rows)
                self._emit("after_epoch", callbacks)
            if memo:
                memo.store(self, rows)
        except CancelFit:
            if memo:   # stopped by a callback the fit cache can name: as much the fit's result as its last epoch
                memo.store(self, rows)
        except KeyboardInterrupt:
            where = f"; resume with fit(..., checkpoint={str(checkpoint)!r}, resume=True)" if ckpt else ""
            print(f"Interrupted in epoch {self.epoch + 1}: the weights are kept as they are and "
                  f"learn.history holds the finished epochs{where}.")
            raise
        finally:
            epoch_bar.close()
            new = pd.DataFrame(rows)
            self.history = pd.concat([self.history, new], ignore_index=True) if len(new) else self.history
            self._emit("after_fit", callbacks)
        return pd.DataFrame(rows)

    def _train_epoch(self, model, loader, epoch, steps_per_epoch, schedule, callbacks):
        """One pass over `loader`, one optimizer step per batch: the only training step in tlkit.

        `batch_requested_at` / `batch_ready_at` bracket each wait for the loader, so a callback can tell
        data time from compute time without wrapping the loader.
        """
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        bar = progress_bar(loader, desc=f"epoch {epoch + 1}", disable=not self.progress, leave=False)
        self.batch_requested_at = time.perf_counter()
        try:
            for i, (x, y) in enumerate(bar):
                self.batch_ready_at = time.perf_counter()
                self.step = epoch * steps_per_epoch + i
                if schedule is not None:
                    factor = _schedule_factor(schedule, self.step / steps_per_epoch)
                    for g in self.opt.param_groups:
                        g["lr"] = g["initial_lr"] * factor
                self._emit("before_batch", callbacks)
                n, batch_correct = self._train_step(model, x, y, epoch, i, callbacks)
                loss_sum += self.last_loss * n
                correct += batch_correct
                total += n
                self._emit("after_batch", callbacks)
                self.batch_requested_at = time.perf_counter()
        except CancelEpoch:
            pass
        finally:
            bar.close()
        return (loss_sum / total, correct / total) if total else (float("nan"), float("nan"))

    def _train_step(self, model, x, y, epoch, i, callbacks) -> tuple[int, int]:
        """Forward, loss, backward and optimizer step on one batch; returns (images, correct predictions).

        The loss is checked before the step, so a NaN leaves the weights of the last good step.
        """
        x, y = self._to_device(x, y)
        self.opt.zero_grad(set_to_none=True)
        pieces = _pieces(x, y, self.micro_batch)
        losses, correct = [], 0
        for k, (xs, ys) in enumerate(pieces):
            sync = k == len(pieces) - 1 or not hasattr(model, "no_sync")   # DDP: all-reduce once per batch
            with contextlib.nullcontext() if sync else model.no_sync():
                with self.autocast():
                    out = model(xs)
                    loss = self.loss_fn(out, ys) if len(pieces) == 1 else self.loss_fn(out, ys) * (len(ys) / len(y))
                self.scaler.scale(loss).backward()
            losses.append(loss)
            correct += (out.argmax(1) == ys).sum().item() if out.dim() == 2 else 0
        self.loss = losses[0] if len(losses) == 1 else torch.stack([piece.detach() for piece in losses]).sum()
        self._emit("after_loss", callbacks)
        if not torch.isfinite(self.loss):
            lrs = ", ".join(f"{g['lr']:.2e}" for g in self.opt.param_groups)
            raise NonFiniteLossError(
                f"loss became {self.loss.item()} in epoch {epoch + 1}, step {i + 1} (lr {lrs}). The weights are "
                "those of the last good step. Try a learning rate about 10x lower (rerun the LR finder), "
                "or with fp16 use a GradScaler / precision='bf16'.")
        self.scaler.step(self.opt)
        self.scaler.update()
        self.last_loss = self.loss.item()
        return y.shape[0], correct

    def seconds_per_image(self, batches: int = 2, train: bool = True) -> float:
        """Measured seconds per image of one training step (loading, forward, backward) on training batches,
        or of a forward pass alone (`train=False`); the weights, buffers and gradients are left as they were.

        Why: a time budget has to be turned into a number of images before the work starts. One batch is
        run first and not timed (first-call overheads), then `batches` are timed through the real loader,
        so decoding and augmentation are counted. The random state is left as it was too, so a measurement
        read back from the fit cache (`fit_cache.remembered`) leaves the same state as one taken.
        """
        check_positive_int("batches", batches, 2)
        state = copy_state(self.net)
        was_training = self.net.training
        self.net.train(train)
        images, elapsed = 0, 0.0
        try:
            with _random_state_kept(self.dls.train, self.device):
                loader = iter(self.dls.train)
                for i in range(batches + 1):
                    t0 = time.perf_counter()
                    try:
                        x, y = next(loader)
                    except StopIteration:
                        break
                    x, y = self._to_device(x, y)
                    for xs, ys in _pieces(x, y, self.micro_batch if train else None):   # as `fit` runs them
                        with (contextlib.nullcontext() if train else torch.inference_mode()), self.autocast():
                            loss = self.loss_fn(self.net(xs), ys)
                        if train and loss.requires_grad:
                            loss.backward()
                    if i:
                        elapsed, images = elapsed + time.perf_counter() - t0, images + y.shape[0]
        finally:
            self.net.zero_grad(set_to_none=True)
            self.net.load_state_dict(state)
            self.net.train(was_training)
        if not images:
            raise ValueError("seconds_per_image needs at least 2 training batches; the loader has fewer")
        return elapsed / images

    def _emit(self, event: str, callbacks: list[Callback]) -> None:
        assert event in EVENTS, event
        for cb in callbacks:
            cb(event, self)

    def _distributed_wrap(self):
        """Under torchrun: wrap the model in DDP and shard the training set with a DistributedSampler."""
        loader = self.dls.train
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.net, loader
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
        shuffle = isinstance(loader.sampler, RandomSampler)
        sampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=0)
        sharded = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                             num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                             drop_last=loader.drop_last)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.net, device_ids=ids), sharded

    # ------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, path: Path, done: int, epochs: int, lr, rows) -> None:
        state = _plain({"opt": self.opt.state_dict(), "scaler": self.scaler.state_dict(), "epoch": done,
                        "epochs": epochs, "lr": repr(lr), "history": rows, "rng": rng_state()})
        atomic_save({"model": self.net.state_dict(), **state}, path)

    def _read_checkpoint(self, path: Path, epochs: int, lr) -> dict:
        """The checkpoint at `path`, refused unless it was written by a fit with these settings."""
        state = load_checkpoint(path, self.device, "Delete it or pass resume=False to start over", RESUME_KEYS)
        if state["epochs"] != epochs or state["lr"] != repr(lr):
            raise ValueError(f"{path} was written by fit(epochs={state['epochs']}, lr={state['lr']}); "
                             f"this call is fit(epochs={epochs}, lr={lr!r}). Use the same settings to resume, "
                             "or resume=False to start over.")
        return state

    def _resume(self, path: Path, state: dict, epochs: int):
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        print(f"Resuming from {path}: {state['epoch']} of {epochs} epochs done.")
        return state["epoch"], list(state["history"])

    def save(self, path: str | os.PathLike, **extra) -> Path:
        """Save the weights (and optimizer state, history, anything in `extra`) atomically."""
        extra = {key: _saveable(key, value) for key, value in extra.items()}
        state = _plain({"opt": self.opt.state_dict() if self.opt else None,
                        "history": self.history.to_dict(orient="records")})
        return atomic_save({"model": self.net.state_dict(), **state, **extra}, path)

    def load(self, path: str | os.PathLike, with_opt: bool = False) -> dict:
        """Load weights saved by `save` (and the optimizer state with `with_opt`); returns the file's dict."""
        state = load_checkpoint(path, self.device, "Delete it and save the model again with learn.save")
        self.net.load_state_dict(state["model"])
        if with_opt and state.get("opt") and self.opt is not None:
            self.opt.load_state_dict(state["opt"])
        return state

    # ------------------------------------------------------------ inference

    @torch.no_grad()
    def get_logits(self, loader=None, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets for every item of `loader` (default: validation), on the CPU."""
        model = model or self.net
        outs, ys = [], []
        with eval_mode(model):
            for x, y in (loader if loader is not None else self.dls.val):
                x, y = self._to_device(x, y)
                with self.autocast():
                    outs.append(model(x).float().cpu())
                ys.append(y.cpu())
        return torch.cat(outs), torch.cat(ys)

    def get_preds(self, loader=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax probabilities and targets (default: the validation set)."""
        logits, y = self.get_logits(loader)
        return logits.softmax(1), y

    def evaluate(self, loader=None) -> dict:
        """Mean cross-entropy and accuracy on `loader` (default: validation).

        `last_correct` keeps which items were right and `last_losses` each item's cross-entropy, so two
        models can be compared image by image.
        """
        logits, y = self.get_logits(loader)
        self.last_correct = logits.argmax(1) == y
        self.last_losses = F.cross_entropy(logits.float(), y, reduction="none")
        return {"loss": self.last_losses.mean().item(), "acc": self.last_correct.float().mean().item()}


@contextlib.contextmanager
def _random_state_kept(loader, device: torch.device):
    """Inside the block, draw freely: torch's global generators and `loader`'s own are put back afterwards."""
    from .data import loader_generators
    own = loader_generators(loader)
    states = [g.get_state() for g in own]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            for g, state in zip(own, states):
                g.set_state(state)


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0


def rng_state() -> dict:
    """Every RNG a lesson touches (torch, CUDA, numpy, python) as tensors and numbers, to restore exactly later."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"] = {**numpy["state"], "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64))}
    state = {"torch": torch.get_rng_state(), "numpy": numpy, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore RNGs captured by `rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    numpy = state["numpy"]
    key = numpy["state"]["key"].cpu().numpy().astype(np.uint32)
    np.random.set_state({**numpy, "state": {**numpy["state"], "key": key}})
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ------------------------------------------------------------ argument checks

def check_lr(lr, name: str = "lr"):
    """A learning rate for `fit`: a number, `slice(hi)`, `slice(lo, hi)` or one per layer group, every rate > 0."""
    if isinstance(lr, slice):
        ok = lr.step is None and _is_rate(lr.stop) and (lr.start is None or _is_rate(lr.start))
        example = slice(1e-5, 1e-3)
    elif isinstance(lr, (list, tuple, np.ndarray)):
        ok, example = len(lr) > 0 and all(map(_is_rate, lr)), [1e-5, 1e-4, 1e-3]
    else:
        ok, example = _is_rate(lr), 1e-3
    if not ok:
        raise ParameterError(f"{name}={lr!r}: every learning rate must be a finite number > 0 (one number, "
                             f"slice(lo, hi) or one per layer group), e.g. {name}={example!r}.")
    return lr


def _is_rate(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0


def scores_after(epoch: int, epochs: int, validate: bool | int) -> bool:
    """Whether `fit(epochs, validate=validate)` scores the validation set after epoch `epoch` (counted from 1)."""
    if isinstance(validate, bool):
        return validate
    return epoch % validate == 0 or epoch == epochs


def _check_fit_args(epochs, lr, schedule, checkpoint, resume, callbacks) -> tuple[list, list]:
    """Refuse `fit` arguments that would train wrongly, before anything changes; returns the callbacks as
    functions and as given."""
    check_positive_int("epochs", epochs, 5)
    check_lr(lr)
    if schedule is not None and not callable(schedule):
        raise ParameterError(f"schedule={schedule!r} must be a function of the epochs elapsed (or None), "
                             "e.g. schedule=tlkit.schedules.cosine(5).")
    if resume and not checkpoint:
        raise ParameterError(f"resume={resume!r} needs the folder of the checkpoint to resume from, "
                             "e.g. fit(5, 1e-3, checkpoint='runs/exp1', resume=True).")
    listed = list(callbacks) if isinstance(callbacks, Iterable) and not callable(callbacks) else None
    if listed is None:
        raise ParameterError(f"callbacks={callbacks!r} must be a list of functions cb(event, learner) or objects "
                             "with event methods, e.g. callbacks=[tlkit.train.on('after_epoch', show)].")
    try:
        return [_as_function(cb) for cb in listed], listed
    except ParameterError as exc:
        raise ParameterError(f"callbacks={callbacks!r}: {exc}") from None


def _schedule_factor(schedule: Callable, t: float) -> float:
    """The schedule's LR multiplier at `t` epochs; a negative or non-finite one is refused before the step."""
    factor = float(schedule(t))
    if not (math.isfinite(factor) and factor >= 0):
        raise ParameterError(f"schedule={schedule!r} gives the LR multiplier {factor} at epoch {t:.3g}: it must be "
                             "finite and >= 0, e.g. schedule=tlkit.schedules.cosine(5).")
    return factor


# ------------------------------------------------------------ checkpoint files

RESUME_KEYS = ("model", "opt", "scaler", "epoch", "epochs", "lr", "history", "rng")
_PLAIN_LEAVES = (torch.Tensor, str, bytes, int, float, bool, type(None))


def load_checkpoint(path: str | os.PathLike, device, fix: str, keys: Sequence[str] = ("model",)) -> dict:
    """`torch.load(weights_only=True)`; a damaged file, or one that would run code, is a CheckpointError naming it.

    `fix` tells the user what to do about it; `keys` are the entries the file must have.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # the path, not the file, is wrong: the OS message says which
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"cannot load {path}: {_why_refused(path)}. {fix}.") from exc
    except Exception as exc:  # a truncated or overwritten file fails in many places of the reader
        raise CheckpointError(f"cannot load {path}: the file is damaged ({type(exc).__name__}), e.g. by an "
                              f"interrupted copy. {fix}.") from exc
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"cannot load {path}: it is not a file tlkit wrote (no {missing}). {fix}.")
    return state


def _why_refused(path) -> str:
    """Why a file failed to load with weights_only=True: the objects it would need, or damage."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        unsafe = []
    if unsafe:
        return (f"it holds objects other than tensors, numbers, strings, lists and dicts ({', '.join(unsafe)}), "
                "and unpickling those could run any code")
    return "it is damaged or not a file torch.save wrote"


def _plain(obj):
    """`obj` with numpy scalars and arrays turned into Python numbers and tensors (what weights_only loads)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy()) if obj.dtype.kind in "biuf" else _plain(obj.tolist())
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj] if isinstance(obj, list) else tuple(map(_plain, obj))
    return obj


def _is_plain(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(map(_is_plain, obj))
    return isinstance(obj, _PLAIN_LEAVES)


def _saveable(key: str, value):
    """`value` as `save` stores it; anything that only unpickling code could restore is refused."""
    value = _plain(value)
    if not _is_plain(value):
        raise ParameterError(f"{key}={reprlib.repr(value)} cannot be saved: saved models hold only tensors, "
                             "numbers, strings, lists and dicts, so that loading one cannot run code; "
                             f"e.g. {key}={['cat', 'dog']!r}.")
    return value
