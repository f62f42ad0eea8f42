"""Number formats for training: fp32 / fp16 / bf16, underflow, loss scaling, stochastic rounding."""
from __future__ import annotations

import contextlib
import gc
import math

import numpy as np
import pandas as pd
import torch

from .env import threads

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
    """Every parameter gradient of one fp32 forward/backward, flattened into one vector."""
    net.zero_grad(set_to_none=True)
    (loss_fn or torch.nn.functional.cross_entropy)(net(x), y).backward()
    grads = torch.cat([p.grad.detach().flatten().cpu() for p in net.parameters() if p.grad is not None])
    net.zero_grad(set_to_none=True)
    return grads


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


def autocast(device: str | torch.device, precision: str | None):
    """`torch.autocast` for "bf16"/"fp16", or a no-op context for None (fp32)."""
    if precision is None:
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


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
    from .pipeline import bottleneck_report
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
    from .claims import paired_bootstrap
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
    from . import claims
    a = np.mean([r["val_item_loss"] for r in runs if r["variant"] == naive], axis=0)
    b = np.mean([r["val_item_loss"] for r in runs if r["variant"] == careful], axis=0)
    effect, low, high = claims.paired_bootstrap(a, b)
    seeds = len({r["seed"] for r in runs})
    return claims.judge(28, effect, (low, high), len(a),
                        f"validation loss after {len(runs[0]['train_loss'])} SGD steps with fp16-stored weights "
                        f"(round to nearest, no care) minus with fp32 master weights, mean of {seeds} seeds per item",
                        unit="millinats", scale=1000.0)


def verdict_amp_speed(fp32_steps, fp16_steps, what: str):
    """The 'fp16 is faster' part of claim 28: fp32 step time over 16-bit step time, repeated steps."""
    from . import claims
    return claims.compare_speed(28, fp32_steps, fp16_steps, what)
