"""Lesson 01 (notebooks/01_transfer_strategies.ipynb): five transfer-learning strategies, each one small
function returning a result row, and the verdicts on claims 1-6 and 11.

A `tlkit.tasks.Task` holds one dataset at one image size, decoded once into memory, so every strategy
trains on the same pixels and the same seeded, stratified subsets. Each strategy returns
`{"strategy", "acc", "trainable_params", "seconds", "train_images", ...}`; a list of rows is a
results table.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .. import claims, data, features, models, schedules
from ..train import Learner
from ..tasks import Task
from .. import metrics

__all__ = ["advice_table", "fraction_sweep", "frozen_head", "full_finetune", "last_blocks", "over_seeds",
           "plot_results", "plot_sweep", "precomputed_head", "result_row", "results_table", "scratch",
           "train_head_on_features", "verdict_cache_freezes_views", "verdict_head_vs_scratch",
           "verdict_more_data", "verdict_own_hidden", "verdict_precompute_speed", "verdict_table",
           "verdict_train_all", "view_spread", "winners", "ADVISED", "NAMES", "PER_IMAGE_COLUMNS", "STRATEGIES",
           "TEXTBOOK", "train_from_group"]

NAMES = {"frozen_head": "a: frozen head", "precomputed_head": "b: precomputed head",
         "last_blocks": "c: last blocks", "last_blocks_hidden": "c': last blocks + hidden",
         "full_finetune": "d: full fine-tune", "scratch": "e: scratch"}

TEXTBOOK = {  # CS231n lecture 11 and Andrew Ng's CNN week 2, in one line each
    ("similar", "little"): "freeze the body, train a linear head (b)",
    ("similar", "lots"): "fine-tune the last few blocks (c)",
    ("dissimilar", "little"): "hard: head on earlier-layer features, or last blocks (c)",
    ("dissimilar", "lots"): "fine-tune many / all layers (d)",
}


# ---------------------------------------------------------------- the task every strategy shares


# ---------------------------------------------------------------- result rows

def result_row(strategy: str, learn: Learner, hist: pd.DataFrame, seconds: float, train_images: int,
               **extra) -> dict:
    """One line of the results table: final validation accuracy, trainable parameters, wall time.

    `correct` and `losses` hold the final model's per-image correctness and log-loss on the validation
    set: verdicts compare two strategies image by image (a paired bootstrap). `best_acc` is the best epoch's
    accuracy, NaN for a run scored only after its last epoch.
    """
    return {"strategy": NAMES.get(strategy, strategy), "acc": float(hist["val_acc"].iloc[-1]),
            "best_acc": float(hist["val_acc"].max()) if hist["val_acc"].notna().all() else float("nan"),
            "trainable_params": models.count_params(learn.net),
            "seconds": seconds, "train_images": train_images, "epochs": len(hist),
            "correct": learn.last_correct.cpu().numpy(), "losses": learn.last_losses.cpu().numpy(), **extra}


def _fit(learn: Learner, epochs: int, lr, one_cycle: bool = False, curves: bool = False) -> tuple[pd.DataFrame, float]:
    """`learn.fit`, timed. Without `curves` the validation set is scored once, after the last epoch.

    Why: only (a) and (b) show their per-epoch curves; for the other runs a pass over the validation images
    after every epoch would only cost time. The weights come out the same here: scoring takes one number from
    torch's global generator (the loader's base seed) and these runs draw nothing else from it (seeded
    batches, no augmentation, no dropout). With `augment=True` or a dropout head, the random views after
    epoch 1 would differ from those of a run that scores every epoch.
    The time is the sum of the epochs' own timings, so a fit read back from the fit cache reports what it
    took when it ran.
    """
    schedule = schedules.one_cycle(epochs) if one_cycle else None
    hist = learn.fit(epochs, lr, schedule=schedule, validate=True if curves else epochs)
    return hist, float(hist["seconds"].sum())


def _train_images(fit_net: models.Net, task: Task, strategy: str, epochs: int, lr, fraction: float,
                  augment: bool, progress: bool | None, one_cycle: bool = True, extra_seconds: float = 0.0,
                  curves: bool = False, **extra) -> dict:
    """Train `fit_net` (already frozen as the strategy needs) on images; the shared part of (a), (c), (d), (e)."""
    dls = task.loaders(fraction, augment)
    learn = task.learner(fit_net, dls, progress=progress)
    hist, seconds = _fit(learn, epochs, lr, one_cycle, curves)
    return result_row(strategy, learn, hist, seconds + extra_seconds, len(dls.train.dataset), fraction=fraction,
                      augment=augment, history=hist, **extra)


def train_head_on_features(task: Task, net: models.Net, epochs: int = 5, lr: float = 3e-3, fraction: float = 1.0,
                           progress: bool | None = None) -> tuple[pd.DataFrame, float]:
    """Fit `net.head` on the cached features of `net.body` (the same training images as `fraction`)."""
    return _fit(_head_on_features(task, net, fraction, progress)[0], epochs, lr)


def _head_on_features(task: Task, net: models.Net, fraction: float, progress: bool | None):
    """A Learner for `net.head` on the cached features of `net.body`, batched exactly like the task's images;
    with the training and validation features."""
    train_fs, val_fs = task.features(net, progress)
    if fraction != 1:
        train_fs = train_fs.subset(float(fraction), task.seed)
    learn = features.head_learner(net, train_fs, val_fs, task.batch_size, device=task.device, progress=progress,
                                  train_loader=task.train_loader(train_fs, fraction))
    return learn, train_fs, val_fs


# ---------------------------------------------------------------- the five strategies

def frozen_head(task: Task, epochs: int = 5, lr: float = 3e-3, fraction: float = 1.0, augment: bool = False,
                progress: bool | None = None) -> dict:
    """(a) Frozen body, new head, every image passed through the whole network in every epoch."""
    net = models.freeze(task.net())
    return _train_images(net, task, "frozen_head", epochs, lr, fraction, augment, progress, one_cycle=False,
                         curves=True)


def precomputed_head(task: Task, epochs: int = 5, lr: float = 3e-3, fraction: float = 1.0,
                     progress: bool | None = None) -> dict:
    """(b) Frozen body run once (cached on disk), the head trained on the stored features.

    `seconds` is the head training alone; `precompute_seconds` the one-off cost of the features
    (as measured when they were first computed, even if this call read them from the cache).
    """
    learn, train_fs, val_fs = _head_on_features(task, models.freeze(task.net()), fraction, progress)
    hist, seconds = _fit(learn, epochs, lr, one_cycle=False, curves=True)
    return result_row("precomputed_head", learn, hist, seconds, len(train_fs), fraction=fraction, augment=False,
                      precompute_seconds=train_fs.compute_seconds + val_fs.compute_seconds,
                      from_cache=train_fs.from_cache and val_fs.from_cache, history=hist)


def train_from_group(task: Task, net: models.Net, strategy: str, train_from: int, epochs: int, lr, fraction: float = 1.0,
              augment: bool = False, head_epochs: int = 5, head_lr: float = 3e-3, keep_bn_stats: bool = True,
              cached: bool = False, progress: bool | None = None, **extra) -> dict:
    """Head first, then unfreeze layer groups `train_from`.. : the usual recipe (fastai's `fine_tune`, Keras' guide).

    The new head is fitted with the body frozen (`head_epochs` on the cached features: nearly free), so no
    random head's large gradients reach the pretrained layers; then the unfrozen groups train with a
    one-cycle learning rate. `keep_bn_stats` keeps the ImageNet BatchNorm statistics (see `models.freeze_batchnorm`).
    `cached` trains on the cached outputs of the frozen groups instead of on images: the same steps
    (nothing before `train_from` changes, and no augmentation), far cheaper, so runs can be repeated.
    """
    if cached and augment:
        raise ValueError("cached=True keeps one view of each image; augmentation needs the images (cached=False)")
    head_seconds = 0.0
    if head_epochs:
        _, head_seconds = train_head_on_features(task, models.freeze(net), head_epochs, head_lr, fraction, progress)
    models.freeze_to(net, train_from)
    if keep_bn_stats:
        models.freeze_batchnorm(net)
    extra.update(head_epochs=head_epochs, keep_bn_stats=keep_bn_stats)
    if not cached:
        return _train_images(net, task, strategy, epochs, lr, fraction, augment, progress, extra_seconds=head_seconds,
                             **extra)
    train_a, val_a = task.activations(net, train_from, progress)
    if fraction != 1:
        train_a = train_a.subset(float(fraction), task.seed)
    _, suffix = models.split_body(net, train_from)
    top = models.Net(suffix, net.head, [suffix, net.head], net.feature_dim, net.norm, net.name, net.pretrained)
    dls = data.DataLoaders(task.train_loader(train_a, fraction), data.make_loader(val_a, task.batch_size, shuffle=False),
                           task.classes)
    learn = task.learner(top, dls, progress=progress)
    hist, seconds = _fit(learn, epochs, lr, one_cycle=True)
    return result_row(strategy, learn, hist, seconds + head_seconds, len(train_a), fraction=fraction, augment=False,
                      history=hist, cached=True, precompute_seconds=train_a.compute_seconds + val_a.compute_seconds,
                      **extra)


def last_blocks(task: Task, epochs: int = 2, lr: float = 3e-4, fraction: float = 1.0, augment: bool = False,
                hidden: int | None = None, train_from: int = 2, **kwargs) -> dict:
    """(c) Early layer groups frozen; the last group(s) and the head trained. `hidden` adds your own layer."""
    name = "last_blocks_hidden" if hidden else "last_blocks"
    return train_from_group(task, task.net(hidden=hidden), name, train_from, epochs, lr, fraction, augment,
                     hidden=hidden, **kwargs)


def full_finetune(task: Task, epochs: int = 2, lr: float | slice = 3e-5, fraction: float = 1.0,
                  augment: bool = False, **kwargs) -> dict:
    """(d) Every layer trained from the pretrained weights (head first, see `train_from_group`).

    The learning rate is 10x below (c)'s: the more pretrained layers move, the gentler each step must be.
    """
    return train_from_group(task, task.net(), "full_finetune", 0, epochs, lr, fraction, augment, **kwargs)


def scratch(task: Task, epochs: int = 2, lr: float = 3e-3, fraction: float = 1.0, augment: bool = False,
            progress: bool | None = None) -> dict:
    """(e) The same architecture from random weights, same recipe as (c): what the pretrained weights are worth."""
    net = models.unfreeze(task.net(pretrained=False))
    return _train_images(net, task, "scratch", epochs, lr, fraction, augment, progress)


STRATEGIES: dict[str, Callable[..., dict]] = {
    "frozen_head": frozen_head, "precomputed_head": precomputed_head, "last_blocks": last_blocks,
    "full_finetune": full_finetune, "scratch": scratch}


# ---------------------------------------------------------------- tables

def over_seeds(run: Callable[[Task], dict], task: Task, seeds: Sequence[int]) -> dict:
    """`run(task)` once per seed (`task.with_seed`), merged into one row.

    Why: one run of a strategy mixes its effect with the luck of one subset, head and batch order.
    The merged row's `correct` is each validation image's correctness averaged over the seeds,
    `correct_by_seed` the `[seeds, images]` array the verdicts resample (runs and images), `losses` and
    `loss_by_seed` the same for the per-image log-loss, `acc` the mean accuracy, `seconds` the mean time
    of one run, and `acc_by_seed` every run's accuracy.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("over_seeds needs at least one seed")
    rows = [run(task.with_seed(seed)) for seed in seeds]
    by_seed = np.stack([np.asarray(r["correct"], dtype=float) for r in rows])
    loss_by_seed = np.stack([np.asarray(r["losses"], dtype=float) for r in rows])
    merged = dict(rows[0])
    merged.update(acc=float(np.mean([r["acc"] for r in rows])), best_acc=float(np.mean([r["best_acc"] for r in rows])),
                  seconds=float(np.mean([r["seconds"] for r in rows])), correct=by_seed.mean(axis=0),
                  correct_by_seed=by_seed, losses=loss_by_seed.mean(axis=0), loss_by_seed=loss_by_seed,
                  acc_by_seed=[r["acc"] for r in rows], seeds=seeds)
    return merged


PER_IMAGE_COLUMNS = ("correct", "correct_by_seed", "losses", "loss_by_seed")   # arrays the verdicts read


def results_table(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows as a DataFrame without the per-epoch histories and per-image results (those stay in the rows)."""
    hidden = ("history", "acc_by_seed", *PER_IMAGE_COLUMNS)
    return pd.DataFrame([{k: v for k, v in r.items() if k not in hidden} for r in rows])


def fraction_sweep(task: Task, fractions: Sequence[float], runs: dict[str, Callable[[float], dict]],
                   reuse: Sequence[dict] = ()) -> pd.DataFrame:
    """Run every strategy in `runs` (name -> fn(fraction) -> row) at every training fraction.

    Rows in `reuse` with the same strategy name and fraction are taken as they are, so the
    100 % point of a sweep can be the main experiment's run instead of a second one.
    """
    known = {(r["strategy"], r["fraction"]): r for r in reuse}
    rows = []
    for fraction in fractions:
        for name, run in runs.items():
            label = NAMES.get(name, name)
            row = known.get((label, fraction)) or run(fraction)
            rows.append({"strategy": label, "fraction": fraction, "train_images": row["train_images"],
                         "acc": row["acc"], "seconds": row["seconds"], "correct": row.get("correct"),
                         "correct_by_seed": row.get("correct_by_seed"), "losses": row.get("losses"),
                         "loss_by_seed": row.get("loss_by_seed")})
    return pd.DataFrame(rows)


def winners(sweep: pd.DataFrame) -> dict[float, str]:
    """The strategy with the best accuracy at each fraction (ties: the cheaper run)."""
    best = sweep.sort_values(["fraction", "acc", "seconds"], ascending=[True, False, True])
    return {float(f): g.iloc[0]["strategy"] for f, g in best.groupby("fraction")}


def advice_table(similar: pd.DataFrame, dissimilar: pd.DataFrame) -> pd.DataFrame:
    """The lecture notes' 2x2 table (similar/dissimilar x little/lots of data): measured winner vs textbook.

    "Little" is each sweep's smallest training fraction and "lots" its largest, so the two sweeps may
    use different fractions; the table says which fraction and how many images each cell used.
    """
    rows = []
    for domain, sweep in (("similar", similar), ("dissimilar", dissimilar)):
        found = winners(sweep)
        for amount, fraction in (("little", sweep["fraction"].min()), ("lots", sweep["fraction"].max())):
            sub = sweep[sweep["fraction"] == fraction]
            rows.append({"data": domain, "amount": amount, "fraction": fraction,
                         "train_images": int(sub["train_images"].iloc[0]),
                         "measured winner": found[float(fraction)],
                         "accuracies": ", ".join(f"{s[:1]} {a:.2f}" for s, a in zip(sub["strategy"], sub["acc"])),
                         "textbook": TEXTBOOK[(domain, amount)]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- why augmentation and a cache do not mix

@torch.no_grad()
def view_spread(net: models.Net, images: data.ImageList, augment_tfm, eval_tfm, n_images: int = 12,
                n_views: int = 4, seed: int = 0) -> dict:
    """How far augmentation moves an image's features, relative to how far apart different images are.

    A precomputed cache stores one feature vector per image; this measures what that loses: the
    spread of features over random views of the *same* image (which augmentation would feed the
    head, a new one every epoch), next to the distance between *different* images.
    """
    idx = data.stratified_indices(images.targets, min(n_images, len(images)), seed)
    device = next(net.body.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pics = [images.image(i) for i in idx]
        views = torch.stack([torch.stack([augment_tfm(p) for _ in range(n_views)]) for p in pics])
        clean = torch.stack([eval_tfm(p) for p in pics])
    with models.eval_mode(net.body):
        feats = net.body(views.flatten(0, 1).to(device)).view(len(idx), n_views, -1).cpu()
        fixed = net.body(clean.to(device)).cpu()
    per_image = (feats - feats.mean(1, keepdim=True)).norm(dim=2).mean(1)
    between = torch.pdist(fixed).mean().item()
    return {"within_image": per_image.mean().item(), "between_images": between,
            "ratio": per_image.mean().item() / between, "within_per_image": per_image.tolist(),
            "views_per_image": n_views, "images": len(idx)}


# ---------------------------------------------------------------- verdicts on the notes' claims

ADVISED = {("similar", "little"): NAMES["precomputed_head"], ("similar", "lots"): NAMES["last_blocks"],
           ("dissimilar", "little"): NAMES["last_blocks"], ("dissimilar", "lots"): NAMES["full_finetune"]}


def _correct(row) -> np.ndarray:
    return np.asarray(row["correct"], dtype=float)


def _runs(row, measure: str = "accuracy") -> np.ndarray:
    """`[runs, images]` per-image scores, higher = better: correctness, or with `measure="loss"` minus the
    log-loss; every seed of an `over_seeds` row, or the one run of a single row."""
    key, single = ("correct_by_seed", "correct") if measure == "accuracy" else ("loss_by_seed", "losses")
    sign = 1.0 if measure == "accuracy" else -1.0
    by_seed = row.get(key)
    if by_seed is None or np.ndim(by_seed) == 0:      # a single run (None, or NaN once in a DataFrame)
        return sign * np.asarray(row[single], dtype=float)[None, :]
    return sign * np.asarray(by_seed, dtype=float)


def _seeds_note(*rows) -> str:
    n = max(len(_runs(r)) for r in rows)
    return f", each strategy run from {n} seeds (the interval resamples seeds and images)" if n > 1 else ""


def _accuracy_gain(claim: int, better: dict, worse: dict, what: str, where: str = "") -> claims.Verdict:
    """A paired verdict on validation accuracy of two result rows (images, and seeds where rows have them)."""
    return claims.compare_accuracy(claim, _correct(better), _correct(worse),
                                   f"{what}, validation accuracy{' ' + where if where else ''}")


def verdict_head_vs_scratch(frozen: dict, scratch_row: dict) -> claims.Verdict:
    """Claim 1: a new head on the frozen pretrained body against the same network from scratch, same epochs."""
    return _accuracy_gain(1, frozen, scratch_row,
                          "frozen pretrained body + new head minus the same network trained from scratch")


def verdict_precompute_speed(frozen: dict, precomputed: dict) -> claims.Verdict:
    """Claim 2: epochs of (a) against epochs of (b), each (b) epoch charged its share of the one-off precompute."""
    epochs = len(precomputed["history"])
    share = precomputed["precompute_seconds"] / epochs
    return claims.compare_speed(2, frozen["history"]["seconds"], precomputed["history"]["seconds"] + share,
                                f"time of (a) over time of (b), {epochs} head epochs, precompute included")


def _at(sweep: pd.DataFrame, strategy: str, fraction: float, measure: str = "accuracy") -> np.ndarray:
    return _runs(sweep[(sweep["strategy"] == strategy) & (sweep["fraction"] == fraction)].iloc[0], measure)


def verdict_more_data(sweep: pd.DataFrame, more=NAMES["last_blocks"], fewer=NAMES["precomputed_head"]) -> claims.Verdict:
    """Claim 3: what training more layers gains over the head alone, at the most data minus at the least.

    Judged by the validation log-loss saved per image (accuracy beside it). Why: accuracy on 153 images
    moves in steps of two-thirds of a point and sees only the images whose answer flips.
    """
    little, lots = sweep["fraction"].min(), sweep["fraction"].max()

    def gains(measure):
        return (_at(sweep, more, lots, measure) - _at(sweep, fewer, lots, measure),
                _at(sweep, more, little, measure) - _at(sweep, fewer, little, measure))

    gain_lots, gain_little = gains("loss")
    effect, low, high = metrics.paired_bootstrap(gain_lots, gain_little)
    aside = claims.points_aside("accuracy", *metrics.paired_bootstrap(*gains("accuracy")))
    n_lots = int(sweep[sweep["fraction"] == lots]["train_images"].iloc[0])
    n_little = int(sweep[sweep["fraction"] == little]["train_images"].iloc[0])
    return claims.judge(3, effect, (low, high), gain_lots.shape[-1],
                        f"the validation log-loss {more[:1]} saves over {fewer[:1]} with {n_lots} training images "
                        f"minus what it saves with {n_little}{_seeds_note(*sweep.to_dict('records'))}",
                        unit="nats of log-loss", scale=1.0, aside=aside,
                        runs=min(len(_at(sweep, name, f, "loss")) for name in (more, fewer) for f in (little, lots)))


def verdict_own_hidden(kept: dict, hidden: dict, margin: float = 0.05) -> claims.Verdict:
    """Claim 4 (either way works): your own hidden layer loses less than `margin` against keeping the last layers."""
    effect, low, high = metrics.paired_bootstrap(_runs(hidden), _runs(kept))
    return claims.judge(4, effect + margin, (low + margin, high + margin), _runs(kept).shape[-1],
                        f"(c') own hidden layer minus (c) kept last layers, plus a {margin * 100:.0f}-point margin "
                        f"(positive: replacing them costs less than the margin){_seeds_note(kept, hidden)}",
                        runs=min(len(_runs(kept)), len(_runs(hidden))))


def verdict_train_all(full: dict, scratch_row: dict) -> claims.Verdict:
    """Claim 5: every layer trained from the pretrained weights against the same training from random weights."""
    return _accuracy_gain(5, full, scratch_row, "(d) all layers from pretrained weights minus (e) the same from "
                          "scratch", "on the whole training set")


def verdict_table(similar: pd.DataFrame, dissimilar: pd.DataFrame) -> claims.Verdict:
    """Claim 6: in each 2x2 cell, the advised strategy minus the mean of the other two; the weakest cell decides.

    Why the weakest: the table is four pieces of advice, and an average would let one strong cell hide
    a wrong one. Each cell's interval resamples its seeds and images; each cell is judged by the
    validation log-loss saved per image, with the accuracy difference beside it.
    """
    cells = {}
    for domain, sweep in (("similar", similar), ("dissimilar", dissimilar)):
        for amount, fraction in (("little", sweep["fraction"].min()), ("lots", sweep["fraction"].max())):
            advised = ADVISED[(domain, amount)]
            others = [s for s in sweep["strategy"].unique() if s != advised]

            def advantage(measure):   # a single run broadcasts against several seeds
                other_mean = sum(_at(sweep, s, fraction, measure) for s in others) / len(others)
                return _at(sweep, advised, fraction, measure) - other_mean

            diff = advantage("loss")
            runs = min(len(_at(sweep, s, fraction, "loss")) for s in [advised, *others])
            effect, low, high = metrics.bootstrap_sum([(1.0, diff)])
            aside = claims.points_aside("accuracy", *metrics.bootstrap_sum([(1.0, advantage("accuracy"))]))
            images = int(sweep[sweep["fraction"] == fraction]["train_images"].iloc[0])
            cells[f"{domain} + {amount}"] = claims.judge(
                6, effect, (low, high), diff.shape[-1],
                f"{domain} + {amount} data ({images} training images): validation log-loss saved by {advised} "
                f"against the mean of the other two{_seeds_note(*sweep.to_dict('records'))}",
                unit="nats of log-loss", scale=1.0, runs=runs, aside=aside)
    return claims.weakest_part(6, cells, claim_word="cells")


def verdict_cache_freezes_views(spread: dict) -> claims.Verdict:
    """Claim 11: how far live augmentation moves an image's features per view (a cache moves them not at all)."""
    within = np.asarray(spread["within_per_image"])
    effect, low, high = metrics.bootstrap_sum([(1 / spread["between_images"], within)])
    return claims.judge(11, effect, (low, high), len(within),
                        "feature change between augmented views of one image, relative to the distance between "
                        "images: what augmentation gives live and a cache cannot (it repeats one view)",
                        unit="x the distance between images", scale=1.0)


# ---------------------------------------------------------------- figures

def plot_results(table: pd.DataFrame, axes=None):
    """Three bar charts side by side: validation accuracy, trainable parameters, wall time."""
    import matplotlib.pyplot as plt
    from ..plots import bar_table
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    bar_table(table, "strategy", "acc", ax=axes[0], ylim=(0, 1.05), title="validation accuracy")
    bar_table(table.assign(params_m=table["trainable_params"] / 1e6), "strategy", "params_m", ax=axes[1],
              title="trainable parameters (millions)")
    bar_table(table, "strategy", "seconds", ax=axes[2], title="wall time (s)")
    for ax in axes:
        ax.set_xlabel("")
    axes[0].figure.tight_layout()
    return axes


def plot_sweep(sweep: pd.DataFrame, ax=None, title: str | None = None):
    """Validation accuracy against the number of training images, one line per strategy."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    sns.lineplot(data=sweep, x="train_images", y="acc", hue="strategy", marker="o", ax=ax)
    ax.set_xscale("log")
    ticks = sorted(sweep["train_images"].unique())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="training images (log scale)", ylabel="validation accuracy", title=title or "accuracy vs data")
    ax.grid(alpha=0.3)
    return ax
