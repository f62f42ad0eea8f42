"""Number formats for training: fp32 / fp16 / bf16, underflow, loss scaling, stochastic rounding."""
from __future__ import annotations

import contextlib
import gc
import math

import numpy as np
import pandas as pd
import torch

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
    final validation accuracy.
    """
    from .pipeline import bottleneck_report
    rows = []
    for name, kwargs in configs.items():
        learn = make_learner(**kwargs)
        x, _ = next(iter(learn.dls.train))
        act = _full_training_activations(learn.net, x.to(learn.device), learn.precision, learn.channels_last)
        cuda = learn.device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        steps = bottleneck_report(learn, epochs=epochs, lr=lr)
        rows.append({"config": name, "step_s": float(steps.compute_s.iloc[1:].median()
                                                     if len(steps) > 1 else steps.compute_s.median()),
                     "activation_mb": act / 2**20,
                     "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                     "val_acc": float(learn.history.val_acc.iloc[-1])})
        del learn, x  # free this configuration's model before the next one's peak is measured
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return pd.DataFrame(rows).set_index("config")
