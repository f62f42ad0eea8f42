"""Snapshot ensembles: save the weights at the end of every SGDR cycle, reload them, average their probabilities.

Why it works (Huang et al., 2017, "train 1, get M for free"): each cycle ends in a different low-LR minimum,
so the snapshots make different mistakes; averaging their predicted probabilities cancels part of them at
no extra training cost. Average probabilities, not weights: snapshots from different valleys do not
average into a good net.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .storage import atomic_save

__all__ = ["SnapshotSaver", "save_snapshot", "load_snapshot", "snapshot_predictions", "ensemble_probs",
           "accuracy", "snapshot_table"]

_EPS = 1e-9


def save_snapshot(model: torch.nn.Module, path, **meta) -> Path:
    """Write the model's weights (a CPU copy) and any metadata to `path`."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return atomic_save({"model": state, **meta}, path)


def load_snapshot(model: torch.nn.Module, path) -> dict:
    """Load the weights saved by `save_snapshot` into `model`; returns the metadata."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state.pop("model"))
    return state


class SnapshotSaver:
    """Learner callback: save the weights each time a cycle ends (`cycle_ends` in epochs, or an SGDR schedule).

    `paths` lists the files written, in order; `epochs` the epoch at which each was taken.
    """

    def __init__(self, directory, cycle_ends, prefix: str = "snapshot"):
        self.directory, self.prefix = Path(directory), prefix
        self.cycle_ends = list(getattr(cycle_ends, "cycle_ends", cycle_ends))
        self.paths: list[Path] = []
        self.epochs: list[float] = []

    def __call__(self, event: str, learn) -> None:
        if event == "before_fit":
            self.steps_per_epoch = len(learn.dls.train)
            self.paths, self.epochs, self._pending = [], [], list(self.cycle_ends)
        elif event == "after_batch":
            self._after_step(learn)

    def _after_step(self, learn) -> None:
        done = (learn.step + 1) / self.steps_per_epoch          # epochs finished after this optimizer step
        previous = learn.step / self.steps_per_epoch
        while self._pending and done + _EPS >= self._pending[0]:
            end = self._pending.pop(0)
            if end > previous + _EPS:                             # crossed in this step (not skipped by a resume)
                path = self.directory / f"{self.prefix}_{len(self.paths):02d}.pt"
                self.paths.append(save_snapshot(learn.net, path, epoch=done, cycle=len(self.paths)))
                self.epochs.append(done)


def snapshot_predictions(learn, paths, loader=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities of every snapshot, shape [n_snapshots, n_items, n_classes], and the targets.

    The learner's current weights are put back afterwards.
    """
    current = {k: v.detach().clone() for k, v in learn.net.state_dict().items()}
    probs = []
    try:
        for path in paths:
            load_snapshot(learn.net, path)
            p, targets = learn.get_preds(loader)
            probs.append(p)
    finally:
        learn.net.load_state_dict(current)
    return torch.stack(probs), targets


def ensemble_probs(probs: torch.Tensor) -> torch.Tensor:
    """The snapshot ensemble's prediction: the mean of the members' probabilities."""
    return probs.mean(0)


def accuracy(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of items whose most probable class is the target."""
    return (probs.argmax(-1) == targets).float().mean().item()


def snapshot_table(probs: torch.Tensor, targets: torch.Tensor, epochs=None) -> pd.DataFrame:
    """Accuracy and log-loss of each snapshot and of the ensembles of the last k snapshots."""
    def row(name, p):
        nll = torch.nn.functional.nll_loss(p.clamp_min(1e-12).log(), targets).item()
        return {"model": name, "acc": accuracy(p, targets), "loss": nll}

    epochs = epochs or range(1, len(probs) + 1)
    rows = [row(f"snapshot {i} (epoch {e:g})", p) for i, (e, p) in enumerate(zip(epochs, probs))]
    rows += [row(f"ensemble of last {k}", ensemble_probs(probs[-k:])) for k in range(2, len(probs) + 1)]
    return pd.DataFrame(rows)


def verdict_reload(learn, path, loader=None):
    """Claim 17: the predictions of weights saved to `path` and loaded back, against the learner's own."""
    from . import claims
    before = learn.get_preds(loader)[0].argmax(1)
    reloaded = snapshot_predictions(learn, [path], loader)[0][0].argmax(1)
    return claims.share_above(17, int((before == reloaded).sum()), len(before), 0.95,
                              "validation images whose prediction from the saved-and-reloaded weights equals "
                              "the prediction of the weights in memory")
