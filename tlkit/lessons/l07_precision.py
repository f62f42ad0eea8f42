"""Lesson 07 (notebooks/07_fp16_and_pipelines.ipynb): number formats and the data pipeline, measured.

fp32 / fp16 / bf16, underflow, loss scaling, stochastic rounding; where a training step's time goes
(loader, decode, resize, collate, copy); direct vs im2col vs FFT convolution; the two-process DDP check;
and the verdicts on claims 25-29. The reusable pieces are the core's (`tlkit.conv`, `tlkit.pipeline`,
`tlkit.ddp`).
"""
from __future__ import annotations

import gc
import math

import numpy as np
import pandas as pd
import torch

from ..env import threads
from ..train import autocast, on
import time
import torch.nn.functional as F
from torch.utils import benchmark
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T
from ..conv import conv2d_fft, conv2d_im2col, fft_spectrum_factor, im2col
from ..data import ImageList
from ..pipeline import MemmapImageStore, measure_throughput
from .. import metrics

__all__ = ["amp_benchmark", "bottleneck_prose", "bottleneck_report", "bottleneck_summary", "cast_report",
           "fft_crossover", "finfo_table", "fp16_store", "fp16_table", "fp16_training_runs",
           "gradient_match", "gradients", "kernel_sweep", "loss_curves", "neighbours", "plot_bottleneck",
           "plot_gradient_range", "plot_running_sums", "repeated_timings", "running_sums",
           "saved_activation_bytes", "small_kernel_timings", "stage_prose", "stage_ranking",
           "stage_timings", "stochastic_round", "sum_rel_errors", "throughput_table", "timing_table",
           "toy_problem", "train_fp16_variant", "verdict_amp_speed", "verdict_copy_and_store",
           "verdict_fft", "verdict_fp16_convergence", "verdict_small_kernels", "verdict_split_and_average",
           "FORMATS", "FP16_VARIANTS", "STAGES"]

FORMATS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def finfo_table(dtypes=("fp32", "fp16", "bf16")) -> pd.DataFrame:
    """Range and resolution of each float format, straight from `torch.finfo`."""
    rows = []
    for name in dtypes:
        dt = FORMATS[name]
        fi = torch.finfo(dt)
        rows.append({
            "format": name, "bits": fi.bits,
            "exponent_bits": fi.bits - 1 - _mantissa_bits(dt),
            "mantissa_bits": _mantissa_bits(dt),
            "max": fi.max, "min_normal": fi.tiny,
            "min_subnormal": fi.smallest_normal * fi.eps,
            "eps": fi.eps, "resolution": fi.resolution,
        })
    return pd.DataFrame(rows).set_index("format")


def _mantissa_bits(dtype: torch.dtype) -> int:
    """Stored fraction bits: eps = 2**-mantissa_bits."""
    return -int(round(math.log2(torch.finfo(dtype).eps)))


def cast_report(values: torch.Tensor, dtype=torch.float16, scales=(1.0,)) -> pd.DataFrame:
    """For each loss scale: fraction of nonzero `values` that underflow to 0, go subnormal, or overflow in `dtype`.

    Why: fp16 flushes gradients below ~6e-8 to zero; multiplying the loss (hence every
    gradient) by a scale shifts them into range, and too big a scale overflows to inf.
    """
    v = values.detach().double().flatten()
    v = v[v != 0]
    tiny = torch.finfo(dtype).tiny
    rows = []
    for s in scales:
        cast = (v * s).to(dtype).double()
        rows.append({
            "scale": s,
            "underflow_to_zero": (cast == 0).double().mean().item(),
            "subnormal": ((cast != 0) & (cast.abs() < tiny)).double().mean().item(),
            "overflow_to_inf": torch.isinf(cast).double().mean().item(),
        })
    return pd.DataFrame(rows).set_index("scale")


def neighbours(x: torch.Tensor, dtype=torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """The two representable `dtype` values bracketing each element of `x` (lower <= x <= upper), as x's dtype."""
    nearest = x.to(dtype)
    up = torch.nextafter(nearest, torch.full_like(nearest, math.inf))
    down = torch.nextafter(nearest, torch.full_like(nearest, -math.inf))
    above = nearest.to(x.dtype) > x
    lower = torch.where(above, down, nearest).to(x.dtype)
    upper = torch.where(above, nearest, up).to(x.dtype)
    return lower, upper


def stochastic_round(x: torch.Tensor, dtype=torch.float16, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round fp32 `x` to `dtype`, picking the upper neighbour with probability (x - lower) / (upper - lower).

    Why: round-to-nearest drops every update smaller than half a step; stochastic rounding
    keeps them *in expectation* (E[round(x)] = x), so long sums of small values don't stall.
    Values outside the finite range, NaN and inf use round-to-nearest.
    """
    xd = x.detach().to(torch.float64)  # fp32 and both neighbours are exact in fp64
    lower, upper = neighbours(xd, dtype)
    gap = upper - lower
    p_up = torch.where(gap > 0, (xd - lower) / gap, torch.zeros_like(xd))
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
    rounded = torch.where(u < p_up, upper, lower)
    in_range = torch.isfinite(lower) & torch.isfinite(upper)
    return torch.where(in_range, rounded, xd).to(dtype)


def running_sums(n: int = 10_000, value: float = 1e-4, chains: int = 32, seed: int = 0) -> pd.DataFrame:
    """Add `value` n times with four accumulators; returns the running sums (one column each).

    fp32: reference; fp16 nearest: stalls once value < half an fp16 step of the sum;
    fp16 stochastic: mean of `chains` stochastically rounded sums (keeps the expected value);
    fp16 values + fp32 sum: what mixed precision does ("cast up to accumulate").
    """
    gen = torch.Generator().manual_seed(seed)
    v32 = torch.tensor(value, dtype=torch.float32)
    v16 = v32.half()
    acc32 = torch.zeros((), dtype=torch.float32)
    acc16 = torch.zeros((), dtype=torch.float16)
    acc_sr = torch.zeros(chains, dtype=torch.float16)
    acc_mixed = torch.zeros((), dtype=torch.float32)
    out = np.empty((n, 5))
    for i in range(n):
        acc32 = acc32 + v32
        acc16 = acc16 + v16  # fp16 + fp16 rounds to nearest
        acc_sr = stochastic_round(acc_sr.float() + v32, torch.float16, gen)
        acc_mixed = acc_mixed + v16.float()
        out[i] = (acc32.item(), acc16.item(), acc_sr.float().mean().item(),
                  acc_sr.float().std().item(), acc_mixed.item())
    df = pd.DataFrame(out, columns=["fp32", "fp16 nearest", "fp16 stochastic",
                                    "fp16 stochastic std", "fp16 values, fp32 sum"])
    df.index = pd.RangeIndex(1, n + 1, name="step")
    return df


def sum_rel_errors(sums: pd.DataFrame, value: float = 1e-4) -> dict:
    """Relative error of each accumulator's final sum against the exact n * value."""
    exact = len(sums) * value
    cols = [c for c in sums.columns if not c.endswith("std")]
    return {c: float((sums[c].iloc[-1] - exact) / exact) for c in cols}


def gradients(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=None) -> torch.Tensor:
    """Every parameter gradient of one fp32 forward/backward, flattened into one vector (a measurement: no
    optimizer step, and the parameters' `.grad` are left untouched)."""
    params = [p for p in net.parameters() if p.requires_grad]
    loss = (loss_fn or torch.nn.functional.cross_entropy)(net(x), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([g.detach().flatten().cpu() for g in grads if g is not None])


def plot_gradient_range(grads: torch.Tensor, scale: float = 2.0**16, dtype=torch.float16, ax=None):
    """Histogram of log2|gradient| before and after loss scaling, with the format's limits marked."""
    import matplotlib.pyplot as plt
    ax = ax or plt.subplots(figsize=(8, 3))[1]
    g = grads.double().abs()
    logs = torch.log2(g[g > 0]).numpy()
    fi = torch.finfo(dtype)
    bins = np.arange(np.floor(logs.min()) - 1, max(np.ceil(logs.max() + math.log2(scale)), 17) + 1)
    ax.hist(logs, bins=bins, alpha=0.6, label="gradients")
    ax.hist(logs + math.log2(scale), bins=bins, alpha=0.6, label=f"gradients x 2^{math.log2(scale):.0f}")
    for value, text, style in [(fi.tiny * fi.eps, "smallest subnormal", ":"), (fi.tiny, "smallest normal", "--"),
                               (fi.max, "max", "-")]:
        ax.axvline(math.log2(value), color="k", ls=style, lw=1)
        ax.text(math.log2(value), ax.get_ylim()[1] * 0.9, f" {text}", fontsize=8, rotation=90, va="top")
    ax.set_xlabel("log2 |gradient|")
    ax.set_ylabel("count")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_running_sums(sums: pd.DataFrame, ax=None):
    """Running sums of the accumulators from `running_sums`, with the stochastic chains' spread."""
    import matplotlib.pyplot as plt
    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    step = sums.index.to_numpy()
    for col in [c for c in sums.columns if not c.endswith("std")]:
        ax.plot(step, sums[col], label=col, lw=1.5)
    mean, std = sums["fp16 stochastic"], sums["fp16 stochastic std"]
    ax.fill_between(step, mean - std, mean + std, alpha=0.25, color="tab:green",
                    label="stochastic: ±1 std of one chain")
    ax.set_xlabel("values added")
    ax.set_ylabel("running sum")
    ax.legend(fontsize=8)
    return ax


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, precision: str | None = None,
                           channels_last: bool = False) -> int:
    """Bytes autograd keeps for the backward pass of one forward (each storage counted once).

    Why: activations saved for backward dominate training memory; under autocast they are
    stored in 16 bits. This counts them on any device, CPU included.
    """
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(x.device, precision):
        model(x)
    return sum(seen.values())


def _full_training_activations(net: torch.nn.Module, x, precision, channels_last) -> int:
    """`saved_activation_bytes` with every parameter trainable and the net in train mode, then restored."""
    flags = [p.requires_grad for p in net.parameters()]
    was_training = net.training
    try:
        for p in net.parameters():
            p.requires_grad_(True)
        net.train()
        return saved_activation_bytes(net, x, precision, channels_last)
    finally:
        for p, flag in zip(net.parameters(), flags):
            p.requires_grad_(flag)
        net.train(was_training)


def amp_benchmark(make_learner, configs: dict[str, dict], epochs: int = 1, lr=1e-3) -> pd.DataFrame:
    """Train a fresh learner per config (e.g. {"bf16": dict(precision="bf16")}) and compare them.

    Columns: median seconds per training step (data wait excluded), saved-activation MB for one
    batch when every layer trains (even if the learner trains fewer), peak CUDA memory MB (on a GPU),
    final validation accuracy. `table.attrs["step_s"]` keeps each config's step times.
    """
    rows, step_lists = [], {}
    for name, kwargs in configs.items():
        learn = make_learner(**kwargs)
        x, _ = next(iter(learn.dls.train))
        act = _full_training_activations(learn.net, x.to(learn.device), learn.precision, learn.channels_last)
        cuda = learn.device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        steps = bottleneck_report(learn, epochs=epochs, lr=lr)
        step_lists[name] = steps.compute_s.iloc[1:].tolist() if len(steps) > 2 else steps.compute_s.tolist()
        rows.append({"config": name, "step_s": float(steps.compute_s.iloc[1:].median()
                                                     if len(steps) > 1 else steps.compute_s.median()),
                     "activation_mb": act / 2**20,
                     "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                     "val_acc": float(learn.history.val_acc.iloc[-1])})
        del learn, x  # free this configuration's model before the next one's peak is measured
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    table = pd.DataFrame(rows).set_index("config")
    table.attrs["step_s"] = step_lists  # every step's seconds (first excluded), for intervals
    return table


# ---------------------------------------------------------------- training with 16-bit weights, emulated

FP16_VARIANTS = ("fp32", "fp16 weights, nearest (no care)", "fp32 master weights (cast up)",
                 "fp32 master + loss scaling", "fp16 weights, stochastic rounding")


def fp16_store(x: torch.Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> torch.Tensor:
    """Emulated fp16 storage of an fp32 tensor: the nearest (or a stochastically rounded) fp16 value, as fp32.

    Why emulate: on a CPU, fp16 arithmetic is slow or missing, but what goes wrong in fp16 training is
    the *storage*: rounding the weights (and gradients) to 11 significant bits after every step. An
    fp32 tensor holding exactly the fp16 values reproduces that, bit for bit, at fp32 speed.
    """
    if rounding == "nearest":
        return x.to(torch.float16).to(x.dtype)
    if rounding == "stochastic":
        return stochastic_round(x, torch.float16, generator).to(x.dtype)
    raise ValueError(f"rounding={rounding!r}: choose 'nearest' or 'stochastic'")


def toy_problem(n_train: int = 2048, n_val: int = 1024, dim: int = 16, classes: int = 4, seed: int = 1234):
    """A fixed classification problem: labels from a random 2-layer teacher network on Gaussian inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, dim, generator=g)
    w1, w2 = torch.randn(dim, 32, generator=g), torch.randn(32, classes, generator=g)
    y = (torch.tanh(x @ w1) @ w2).argmax(1)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def train_fp16_variant(variant: str, problem, steps: int = 300, lr: float = 0.003, batch_size: int = 64,
                       hidden: int = 64, loss_scale: float = 2.0**10, seed: int = 0) -> dict:
    """Train a small MLP with plain SGD, storing weights and gradients as `variant` says.

    - fp32: everything in fp32 (the reference);
    - fp16 weights, nearest: weights and gradients rounded to fp16 after every step (no care);
    - fp32 master weights: the forward/backward sees fp16 weights and gives fp16 gradients, but the
      update is added to an fp32 copy ("cast up to accumulate");
    - fp32 master + loss scaling: the same, with the loss multiplied by `loss_scale` before the
      backward pass and the fp16 gradients divided by it in fp32 (a step is skipped on inf);
    - fp16 weights, stochastic rounding: weights stored in fp16, rounded stochastically after each step.
    Activations stay fp32: only what the notes blame, the 16-bit storage, is emulated.
    Returns the training loss per step and the final per-item validation loss and correctness.
    """
    if variant not in FP16_VARIANTS:
        raise ValueError(f"variant={variant!r}: choose one of {FP16_VARIANTS}")
    (xt, yt), (xv, yv) = problem
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(xt.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, int(yt.max()) + 1))
    params = list(net.parameters())
    gen = torch.Generator().manual_seed(seed)
    half = variant != "fp32"
    master = "master" in variant
    weights_sr = "stochastic" in variant
    scale = loss_scale if "loss scaling" in variant else 1.0
    fp32_copy = [p.detach().clone() for p in params]   # the stored weights (exact fp16 values unless master)
    if half and not master:
        fp32_copy = [fp16_store(w) for w in fp32_copy]
    order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))
    losses = []
    for step in range(steps):
        start = (step * batch_size) % len(xt)
        idx = order[start: start + batch_size]
        with torch.no_grad():
            for p, w in zip(params, fp32_copy):
                p.copy_(fp16_store(w) if half else w)       # what the forward pass sees
        loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
        net.zero_grad(set_to_none=True)
        (loss * scale).backward()
        losses.append(loss.item())
        with torch.no_grad():
            grads = [fp16_store(p.grad) if half else p.grad for p in params]
            if not all(torch.isfinite(g).all() for g in grads):
                continue                                    # loss scaling: skip a step that overflowed
            for i, (w, g) in enumerate(zip(fp32_copy, grads)):
                new = w - lr * (g / scale)
                if half and not master:
                    new = fp16_store(new, "stochastic" if weights_sr else "nearest", gen)
                fp32_copy[i] = new
    with torch.no_grad():
        for p, w in zip(params, fp32_copy):
            p.copy_(fp16_store(w) if half else w)
        logits = net(xv)
        item_loss = torch.nn.functional.cross_entropy(logits, yv, reduction="none")
    return {"variant": variant, "seed": seed, "train_loss": losses, "val_item_loss": item_loss.numpy(),
            "val_correct": (logits.argmax(1) == yv).numpy()}


def fp16_training_runs(seeds=(0, 1, 2), variants=FP16_VARIANTS, **kwargs) -> list[dict]:
    """`train_fp16_variant` for every variant and seed on the same toy problem."""
    problem = toy_problem()
    with threads(1):  # a tiny MLP: one thread is faster than two contending ones
        return [train_fp16_variant(v, problem, seed=s, **kwargs) for s in seeds for v in variants]


def fp16_table(runs: list[dict], reference: str = "fp32") -> pd.DataFrame:
    """Per variant: final validation loss and accuracy (mean over seeds), and the loss gap to `reference`
    with a paired bootstrap interval over validation items (each item's loss averaged over the seeds)."""
    from ..metrics import paired_bootstrap
    by = {v: np.mean([r["val_item_loss"] for r in runs if r["variant"] == v], axis=0)
          for v in dict.fromkeys(r["variant"] for r in runs)}
    acc = {v: np.mean([r["val_correct"].mean() for r in runs if r["variant"] == v]) for v in by}
    rows = []
    for v, loss in by.items():
        gap, low, high = paired_bootstrap(loss, by[reference])
        rows.append({"variant": v, "val_loss": loss.mean(), "val_acc": acc[v], "loss - fp32": gap,
                     "low": low, "high": high})
    return pd.DataFrame(rows).set_index("variant")


def loss_curves(runs: list[dict], smooth: int = 20) -> pd.DataFrame:
    """Training loss per step, averaged over seeds and smoothed over `smooth` steps, one column per variant."""
    curves = {}
    for v in dict.fromkeys(r["variant"] for r in runs):
        mean = np.mean([r["train_loss"] for r in runs if r["variant"] == v], axis=0)
        curves[v] = pd.Series(mean).rolling(smooth, min_periods=1).mean().to_numpy()
    df = pd.DataFrame(curves)
    df.index = pd.RangeIndex(1, len(df) + 1, name="step")
    return df


def verdict_fp16_convergence(runs: list[dict], naive: str = FP16_VARIANTS[1], careful: str = FP16_VARIANTS[2]):
    """Claim 28, 'trouble converging without care': validation loss of naive fp16 storage minus that of fp32
    master weights, per validation item (averaged over seeds), paired bootstrap over items."""
    from .. import claims
    a = np.mean([r["val_item_loss"] for r in runs if r["variant"] == naive], axis=0)
    b = np.mean([r["val_item_loss"] for r in runs if r["variant"] == careful], axis=0)
    effect, low, high = metrics.paired_bootstrap(a, b)
    seeds = len({r["seed"] for r in runs})
    return claims.judge(28, effect, (low, high), len(a),
                        f"validation loss after {len(runs[0]['train_loss'])} SGD steps with fp16-stored weights "
                        f"(round to nearest, no care) minus with fp32 master weights, mean of {seeds} seeds per item",
                        unit="millinats", scale=1000.0)


def verdict_amp_speed(fp32_steps, fp16_steps, what: str):
    """The 'fp16 is faster' part of claim 28: fp32 step time over 16-bit step time, repeated steps."""
    from .. import claims
    return claims.compare_speed(28, fp32_steps, fp16_steps, what)


def throughput_table(sources: dict[str, Dataset], workers=(0, 1, 2), **kwargs) -> pd.DataFrame:
    """`measure_throughput` for every source x num_workers; one row each."""
    rows = []
    for name, ds in sources.items():
        for w in workers:
            r = measure_throughput(ds, num_workers=w, **kwargs)
            rows.append({"source": name, "num_workers": w, **r})
    return pd.DataFrame(rows)


def bottleneck_report(learn, epochs: int = 1, lr=1e-3, **fit_kwargs) -> pd.DataFrame:
    """Train `learn` and time, per step, the data wait (loader) and the compute (copy, forward, backward, step).

    Returns one row per step: `data_s`, `compute_s`; see `bottleneck_summary` for the verdict.
    """
    waits: list[float] = []
    computes: list[float] = []

    def after_batch(lrn) -> None:
        if lrn.device.type == "cuda":
            torch.cuda.synchronize()
        waits.append(lrn.batch_ready_at - lrn.batch_requested_at)
        computes.append(time.perf_counter() - lrn.batch_ready_at)

    learn.fit(epochs, lr, callbacks=[on("after_batch", after_batch), *fit_kwargs.pop("callbacks", [])], **fit_kwargs)
    return pd.DataFrame({"step": range(1, len(computes) + 1), "data_s": waits, "compute_s": computes})


def bottleneck_summary(steps: pd.DataFrame) -> dict:
    """Which side limits training: 'data' if the loop waited on the loader more than it computed."""
    data, compute = float(steps.data_s.sum()), float(steps.compute_s.sum())
    return {"limited_by": "data" if data > compute else "compute",
            "data_fraction": data / (data + compute),
            "data_s_per_step": data / len(steps), "compute_s_per_step": compute / len(steps)}


def plot_bottleneck(reports: dict[str, pd.DataFrame], ax=None):
    """Stacked bars of mean data-wait and compute seconds per step, one bar per configuration."""
    import matplotlib.pyplot as plt
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    names = list(reports)
    data = [reports[n].data_s.mean() for n in names]
    compute = [reports[n].compute_s.mean() for n in names]
    ax.barh(names, data, label="waiting for data", color="tab:orange")
    ax.barh(names, compute, left=data, label="compute (forward, backward, step)", color="tab:blue")
    ax.set_xlabel("seconds per training step")
    ax.legend(loc="upper right", fontsize=8)
    return ax


STAGES = ("decode", "resize", "collate", "copy")


def stage_timings(dataset: ImageList, store: MemmapImageStore, size: int, batch_size: int = 8, n_batches: int = 8,
                  device: str | torch.device = "cpu", seed: int = 0) -> pd.DataFrame:
    """Seconds per batch of each step of loading from JPEGs, and of reading the same images from the store.

    One row per batch: `decode` (open and decode the JPEGs), `resize` (resize + centre crop to uint8
    tensors), `collate` (stack into one batch tensor), `copy` (on a GPU: into pinned memory and to the
    device, synchronised; on a CPU, which has no device to copy to: the batch copied into a fresh
    host buffer, the memcpy a pinned transfer starts with), and `memmap` (read the same images from
    the contiguous store and stack them). Batches draw random images; the two sources alternate.
    Timed on one thread, as a DataLoader worker runs.
    """
    from torch.utils.data import default_collate
    device = torch.device(device)
    resize = T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.CenterCrop(size)])
    rng = np.random.default_rng(seed)
    with threads(1):  # as in a DataLoader worker; a shared machine's thread wake-ups would swamp the copy
        rows = [_time_one_batch(dataset, store, resize, default_collate, device,
                                rng.choice(len(dataset), batch_size, replace=False).tolist())
                for _ in range(n_batches)]
    return pd.DataFrame(rows)


def _time_one_batch(dataset, store, resize, collate, device, idx) -> dict:
    t0 = time.perf_counter()
    images = [dataset.image(i) for i in idx]
    t1 = time.perf_counter()
    tensors = [resize(img) for img in images]
    t2 = time.perf_counter()
    batch = collate(tensors)
    t3 = time.perf_counter()
    if device.type == "cuda":
        batch.pin_memory().to(device, non_blocking=True)
        torch.cuda.synchronize()
    else:
        torch.empty_like(batch).copy_(batch)
    t4 = time.perf_counter()
    collate([store[i][0] for i in idx])
    t5 = time.perf_counter()
    return {"decode": t1 - t0, "resize": t2 - t1, "collate": t3 - t2, "copy": t4 - t3, "memmap": t5 - t4}


def stage_ranking(stages: pd.DataFrame) -> pd.DataFrame:
    """The loading steps ranked by their mean cost in this run, with a t interval over batches."""
    from ..metrics import mean_interval
    rows = []
    for s in STAGES:
        mean, low, high = mean_interval(stages[s].to_numpy())
        rows.append({"step": s, "ms per batch": 1e3 * mean, "low": 1e3 * low, "high": 1e3 * high})
    table = pd.DataFrame(rows).sort_values("ms per batch", ascending=False).reset_index(drop=True)
    table.index = pd.RangeIndex(1, len(table) + 1, name="rank")
    table["share of the JPEG path"] = table["ms per batch"] / table["ms per batch"].sum()
    return table


def stage_prose(ranking: pd.DataFrame, device: str | torch.device = "cpu") -> str:
    """Markdown stating the run's ranking of the loading steps (generated, so it follows the run)."""
    steps = ranking["step"].tolist()
    top, copy_rank = steps[0], steps.index("copy") + 1
    share = ranking.set_index("step")["share of the JPEG path"]
    where = "to the GPU" if torch.device(device).type == "cuda" else "into a host buffer (no GPU here)"
    text = (f"In this run the steps rank {' > '.join(steps)}: **{top}** costs the most "
            f"({share[top]:.0%} of the JPEG path), and the copy {where} ranks **{copy_rank} of {len(steps)}** "
            f"({share['copy']:.1%}).")
    if top == "copy":
        text += " Here copying the batch is the most expensive step, as the notes say."
    else:
        text += (f" Removing the {top} step (pre-processing once into a contiguous file) buys more than "
                 "making the copy faster would.")
    return text


def bottleneck_prose(summary: dict) -> str:
    """Markdown that reads the bottleneck report of this run (which side limited each configuration)."""
    lines = [f"- **{name}**: limited by **{r['limited_by']}** ({r['data_fraction']:.0%} of the time waiting for "
             f"data; {1e3 * r['data_s_per_step']:.0f} ms data wait vs {1e3 * r['compute_s_per_step']:.0f} ms "
             "compute per step)" for name, r in summary.items()]
    jpeg, store = summary.get("JPEG, head only"), summary.get("memmap, head only")
    if jpeg and store:
        if jpeg["limited_by"] == "data":
            lines.append("\nWith the small head-only compute, decoding JPEGs **was** the limit in this run; "
                         f"the memmap store waited {1e3 * store['data_s_per_step']:.0f} ms per step instead of "
                         f"{1e3 * jpeg['data_s_per_step']:.0f} ms, and was limited by {store['limited_by']}.")
        else:
            lines.append("\nIn this run even the head-only fine-tune from JPEGs was limited by **compute**: it "
                         f"waited for data {jpeg['data_fraction']:.0%} of the time, so a faster pipeline could save "
                         "at most that share; the memmap store cut the wait from "
                         f"{1e3 * jpeg['data_s_per_step']:.0f} ms to {1e3 * store['data_s_per_step']:.0f} ms per step.")
    return "\n".join(lines)


def verdict_copy_and_store(stages: pd.DataFrame):
    """Claim 27, both parts: the copy over the costliest other step, and JPEG loading over the memmap store."""
    from .. import claims
    others = [s for s in STAGES if s != "copy"]
    top = max(others, key=lambda s: stages[s].mean())
    copy = claims.compare_speed(27, stages["copy"], stages[top],
                                f"cost of the copy over the costliest other step ({top}), per batch "
                                "(positive: the copy is the most expensive step)", unit="x (ratio)")
    jpeg = stages[others].sum(axis=1)
    store = claims.compare_speed(27, jpeg, stages["memmap"],
                                 "time to decode, resize and collate JPEGs over reading the same images from the "
                                 "contiguous memmap store, per batch", unit="x (ratio)")
    return claims.weakest_part(27, {"copy is the most expensive step": copy, "contiguous file": store})


def repeated_timings(fns: dict, repeats: int = 9, block_s: float = 0.005, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, `repeats` times, interleaved (torch.utils.benchmark, one thread).

    Each of the `repeats` timings is the median of three blocks of calls, each block about `block_s` long.

    Why interleaved: on a shared machine the speed drifts; timing A, B, A, B... lets the drift hit
    both alike, so their ratio stays honest. Each timing is a block of calls lasting about `block_s`.
    """
    timers, numbers = {}, {}
    for name, fn in fns.items():
        timers[name] = benchmark.Timer("fn()", globals={"fn": fn})
        for _ in range(warmup):
            fn()
        one = timers[name].timeit(1).mean
        numbers[name] = max(1, int(block_s / max(one, 1e-7)))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name in fns:  # one timing = the median of 3 blocks: a burst from a neighbour's process shifts it less
            blocks = sorted(timers[name].timeit(numbers[name]).mean for _ in range(3))
            times[name].append(blocks[1])
    return times


def kernel_sweep(kernels=(3, 7, 13, 21), channels: int = 8, size: int = 40, batch: int = 1, repeats: int = 5,
                 block_s: float = 0.002, seed: int = 0) -> "tuple":
    """Direct (`F.conv2d`), im2col and FFT convolution timed on the same input for each kernel size.

    Returns (table, timings): one table row per kernel (median ms of each method, the im2col matrix's
    bytes / the input's bytes counted from the tensor it builds, the FFT kernel spectrum's size / the
    kernel's), and timings[k][method] = the repeated seconds per call (for intervals).
    """
    import pandas as pd
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=g)
    rows, timings = [], {}
    for k in kernels:
        w = torch.randn(channels, channels, k, k, generator=g) / (channels * k * k) ** 0.5
        pad = k // 2
        t = repeated_timings({"direct": lambda: F.conv2d(x, w, padding=pad),
                              "im2col": lambda: conv2d_im2col(x, w, padding=pad),
                              "fft": lambda: conv2d_fft(x, w, padding=pad)}, repeats=repeats, block_s=block_s)
        timings[k] = t
        cols = im2col(x, k, 1, pad)
        ref = F.conv2d(x, w, padding=pad)
        rows.append({"kernel": k, **{f"{m} ms": 1e3 * float(torch.tensor(v).median()) for m, v in t.items()},
                     "im2col bytes / input bytes": cols.nbytes / x.nbytes,
                     "fft kernel spectrum / kernel": fft_spectrum_factor(x.shape, k, pad),
                     "max |fft - direct|": (conv2d_fft(x, w, padding=pad) - ref).abs().max().item()})
    return pd.DataFrame(rows).set_index("kernel"), timings


def fft_crossover(table) -> int | None:
    """The smallest kernel of the sweep at which the FFT's median time beats the direct convolution's."""
    wins = table.index[table["fft ms"] < table["direct ms"]]
    return int(wins.min()) if len(wins) else None


def small_kernel_timings(channels: int = 32, size: int = 32, batch: int = 2, repeats: int = 9,
                         block_s: float = 0.004, seed: int = 0) -> dict[str, list[float]]:
    """Repeated seconds per call: one 7x7 vs three stacked 3x3 (C -> C), and Ng's 5x5 192 -> 32 on 28x28
    direct vs through a 1x1 bottleneck to 16 channels (all 'same' padding, no bias)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=g)
    w7 = torch.randn(channels, channels, 7, 7, generator=g)
    w3 = [torch.randn(channels, channels, 3, 3, generator=g) for _ in range(3)]
    xb = torch.randn(1, 192, 28, 28, generator=g)
    w5 = torch.randn(32, 192, 5, 5, generator=g)
    w1 = torch.randn(16, 192, 1, 1, generator=g)
    w5b = torch.randn(32, 16, 5, 5, generator=g)

    def stack():
        y = x
        for w in w3:
            y = F.relu(F.conv2d(y, w, padding=1))
        return y

    return repeated_timings({
        "one 7x7": lambda: F.relu(F.conv2d(x, w7, padding=3)), "three 3x3": stack,
        "5x5 direct": lambda: F.conv2d(xb, w5, padding=2),
        "1x1 bottleneck + 5x5": lambda: F.conv2d(F.conv2d(xb, w1), w5b, padding=2)}, repeats=repeats,
        block_s=block_s)


def verdict_small_kernels(times: dict[str, list[float]]):
    """Claim 25: the speed-up of three 3x3 over one 7x7, and of the 1x1 bottleneck over the direct 5x5."""
    from .. import claims
    stack = claims.compare_speed(25, times["one 7x7"], times["three 3x3"],
                                 "time of one 7x7 over time of three stacked 3x3 (same receptive field, C -> C)")
    neck = claims.compare_speed(25, times["5x5 direct"], times["1x1 bottleneck + 5x5"],
                                "time of a 5x5 192 -> 32 over a 1x1 bottleneck to 16 then the 5x5")
    return claims.weakest_part(25, {"3x3 stack": stack, "1x1 bottleneck": neck})


def verdict_fft(timings: dict, kernel: int = 3):
    """Claim 26, 'FFT is hard in practice': how many times slower the FFT is than the direct convolution at
    CNN-size kernels."""
    from .. import claims
    t = timings[kernel]
    return claims.compare_speed(26, t["fft"], t["direct"],
                                f"time of our FFT convolution over F.conv2d for a {kernel}x{kernel} kernel "
                                "(positive: FFT loses where CNNs live)", unit="x slower with FFT")


def gradient_match(ddp: dict, single: dict, rtol: float = 1e-4, atol: float = 1e-6) -> dict:
    """How many gradient entries of all steps DDP's averaged gradient equals the single-process one."""
    a, b = ddp["grads"], single["grads"]
    if a.shape != b.shape:
        return {"matches": 0, "entries": int(max(a.numel(), b.numel(), 2)), "max_abs_diff": float("inf")}
    close = (a - b).abs() <= atol + rtol * b.abs()
    return {"matches": int(close.sum()), "entries": int(close.numel()),
            "max_abs_diff": float((a - b).abs().max()), "max_abs_grad": float(b.abs().max())}


def timing_table(results: list[dict]) -> dict:
    """Median all-reduce time and median step time (compute + all-reduce, rank 0, first step excluded)."""
    r = results[0]
    steps = r["step_s"][1:] if len(r["step_s"]) > 1 else r["step_s"]
    allreduce, step = float(np.median(r["allreduce_s"])), float(np.median(steps))
    return {"floats_reduced": int(r["grads"].shape[1]), "allreduce_ms": 1e3 * allreduce, "step_ms": 1e3 * step,
            "allreduce_share_of_step": allreduce / step}


def verdict_split_and_average(results: list[dict], single: dict):
    """Claim 29: the gradient entries (all steps) where DDP's average equals one process with the global batch."""
    from .. import claims
    m = gradient_match(results[0], single)
    return claims.share_above(29, m["matches"], m["entries"], 0.99,
                              f"gradient entries, over {len(results[0]['step_s'])} steps, where the average over "
                              f"{results[0]['world_size']} processes (each with half of every mini-batch) equals "
                              "one process with the whole mini-batch")
