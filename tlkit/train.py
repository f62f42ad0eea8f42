"""One small fit loop for every lesson: per-step schedules, metrics, progress, history, checkpoints."""
from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .optim import param_groups

Callback = Callable[[str, "Learner"], None]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the bad step was applied."""


def _sgd(groups, wd):
    return torch.optim.SGD(groups, momentum=0.9, weight_decay=wd)


def _adamw(groups, wd):
    return torch.optim.AdamW(groups, weight_decay=wd)


OPTIMIZERS = {"sgd": _sgd, "adamw": _adamw}


def progress_enabled() -> bool:
    """Progress bars are on unless TLKIT_PROGRESS=0 (CI logs stay short)."""
    return os.environ.get("TLKIT_PROGRESS", "1") != "0"


class Learner:
    """A network, its data and how to train it (fastai's vocabulary, a few dozen lines of loop)."""

    def __init__(self, net: nn.Module, dls, opt: str | Callable = "adamw", wd: float = 1e-4,
                 loss_fn: Callable | None = None, device: torch.device | str | None = None,
                 precision: str | None = None, channels_last: bool = False, progress: bool | None = None):
        if isinstance(opt, str) and opt not in OPTIMIZERS:
            raise ValueError(f"opt={opt!r}: choose one of {sorted(OPTIMIZERS)} or pass a callable(groups, wd)")
        if precision not in (None, "fp32", "bf16", "fp16"):
            raise ValueError(f"precision={precision!r}: choose None (fp32), 'bf16' or 'fp16'")
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
        if self.precision is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor):
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    # ------------------------------------------------------------ training

    def fit(self, epochs: int, lr: float | slice | Sequence[float] = 1e-3, schedule: Callable | None = None,
            checkpoint: str | os.PathLike | None = None, resume: bool = False,
            callbacks: Iterable[Callback] = ()) -> pd.DataFrame:
        """Train for `epochs`; `schedule(t)` scales every group's base LR at `t` epochs elapsed.

        With `checkpoint`, a checkpoint is written after each epoch; `resume=True` continues from it
        and ends with the same weights as an uninterrupted run (bit for bit with num_workers=0).
        """
        if epochs < 1:
            raise ValueError(f"epochs={epochs} must be at least 1")
        callbacks = list(callbacks)
        self.opt = self.make_optimizer(lr)
        ckpt = Path(checkpoint) / "last.pt" if checkpoint else None
        start, rows = 0, []
        if ckpt and resume and ckpt.exists():
            start, rows = self._resume(ckpt, epochs, lr)
        model, train_loader = self._distributed_wrap()
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise ValueError("the training loader is empty: check the dataset and batch size")
        self._emit("before_fit", callbacks)
        epoch_bar = tqdm(range(start, epochs), desc="epochs", disable=not self.progress, leave=False)
        try:
            for epoch in epoch_bar:
                self.epoch = epoch
                self._emit("before_epoch", callbacks)
                t0 = time.perf_counter()
                if hasattr(train_loader.sampler, "set_epoch"):
                    train_loader.sampler.set_epoch(epoch)
                train_loss, train_acc = self._train_epoch(model, train_loader, epoch, steps_per_epoch,
                                                          schedule, callbacks)
                val = self.evaluate()
                row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                       "val_loss": val["loss"], "val_acc": val["acc"],
                       "lr": max(g["lr"] for g in self.opt.param_groups),
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                epoch_bar.set_postfix(train_loss=f"{train_loss:.3f}", val_acc=f"{val['acc']:.3f}")
                if ckpt and _is_main_process():
                    self._save_checkpoint(ckpt, epoch + 1, epochs, lr, rows)
                self._emit("after_epoch", callbacks)
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
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", disable=not self.progress, leave=False)
        for i, (x, y) in enumerate(bar):
            self.step = epoch * steps_per_epoch + i
            if schedule is not None:
                factor = float(schedule(self.step / steps_per_epoch))
                for g in self.opt.param_groups:
                    g["lr"] = g["initial_lr"] * factor
            x, y = self._to_device(x, y)
            with self.autocast():
                out = model(x)
                loss = self.loss_fn(out, y)
            if not torch.isfinite(loss):
                lrs = ", ".join(f"{g['lr']:.2e}" for g in self.opt.param_groups)
                raise NonFiniteLossError(
                    f"loss became {loss.item()} in epoch {epoch + 1}, step {i + 1} (lr {lrs}). The weights are "
                    "those of the last good step. Try a learning rate about 10x lower (rerun the LR finder), "
                    "or with fp16 use a GradScaler / precision='bf16'.")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            n = y.shape[0]
            self.last_loss = loss.item()
            loss_sum += self.last_loss * n
            correct += (out.argmax(1) == y).sum().item() if out.dim() == 2 else 0
            total += n
            self._emit("after_batch", callbacks)
        return loss_sum / total, correct / total

    def _emit(self, event: str, callbacks: list[Callback]) -> None:
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
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": self.net.state_dict(), "opt": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                 "epoch": done, "epochs": epochs, "lr": repr(lr), "history": rows, "rng": rng_state()}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: an interrupted save never leaves a broken checkpoint

    def _resume(self, path: Path, epochs: int, lr):
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["epochs"] != epochs or state["lr"] != repr(lr):
            raise ValueError(f"{path} was written by fit(epochs={state['epochs']}, lr={state['lr']}); "
                             f"this call is fit(epochs={epochs}, lr={lr!r}). Use the same settings to resume, "
                             "or resume=False to start over.")
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        print(f"Resuming from {path}: {state['epoch']} of {epochs} epochs done.")
        return state["epoch"], list(state["history"])

    def save(self, path: str | os.PathLike, **extra) -> Path:
        """Save the weights (and optimizer state, history, anything in `extra`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.net.state_dict(),
                    "opt": self.opt.state_dict() if self.opt else None,
                    "history": self.history.to_dict(orient="records"), **extra}, path)
        return path

    def load(self, path: str | os.PathLike, with_opt: bool = False) -> dict:
        """Load weights saved by `save` (and the optimizer state with `with_opt`); returns the file's dict."""
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.net.load_state_dict(state["model"])
        if with_opt and state.get("opt") and self.opt is not None:
            self.opt.load_state_dict(state["opt"])
        return state

    # ------------------------------------------------------------ inference

    @torch.no_grad()
    def get_logits(self, loader=None, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets for every item of `loader` (default: validation), on the CPU."""
        model = model or self.net
        was_training = model.training
        model.eval()
        outs, ys = [], []
        for x, y in (loader if loader is not None else self.dls.val):
            x, y = self._to_device(x, y)
            with self.autocast():
                outs.append(model(x).float().cpu())
            ys.append(y.cpu())
        model.train(was_training)
        return torch.cat(outs), torch.cat(ys)

    def get_preds(self, loader=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax probabilities and targets (default: the validation set)."""
        logits, y = self.get_logits(loader)
        return logits.softmax(1), y

    def evaluate(self, loader=None) -> dict:
        """Mean cross-entropy and accuracy on `loader` (default: validation)."""
        logits, y = self.get_logits(loader)
        return {"loss": F.cross_entropy(logits, y).item(), "acc": (logits.argmax(1) == y).float().mean().item()}


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0


def rng_state() -> dict:
    """Every RNG a lesson touches (torch, CUDA, numpy, python), to restore exactly later."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore RNGs captured by `rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
