"""Snapshot ensembles: save the weights at the end of every SGDR cycle, reload them, average their probabilities.

Why it works (Huang et al., 2017, "train 1, get M for free"): each cycle ends in a different low-LR minimum,
so the snapshots make different mistakes; averaging their predicted probabilities cancels part of them at
no extra training cost. Average probabilities, not weights: snapshots from different valleys do not
average into a good net.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .storage import atomic_save
from .models import copy_state

__all__ = ["SnapshotSaver", "save_snapshot", "load_snapshot", "snapshot_predictions", "ensemble_probs"]

_EPS = 1e-9


def save_snapshot(model: torch.nn.Module, path, **meta) -> Path:
    """Write the model's weights (a CPU copy) and any metadata to `path`."""
    state = copy_state(model, to_cpu=True)
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
    current = copy_state(learn.net)
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


