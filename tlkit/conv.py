"""Convolution as a matrix multiply (im2col), and calculators for parameters, cost and receptive field."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils import benchmark


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length along one axis: floor((size + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def im2col(x: torch.Tensor, kernel_size, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Copy every receptive-field patch of `x` [N,C,H,W] into a column: returns [N, C*kh*kw, L].

    One strided slice of the padded input per kernel offset (kh*kw slices); the same layout
    as `F.unfold`, written out so you can see where the kh*kw-fold memory blow-up comes from.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, padding, dilation))
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    xp = F.pad(x, (pw, pw, ph, ph))
    cols = x.new_empty(n, c, kh, kw, oh, ow)
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            cols[:, :, i, j] = xp[:, :, top: top + sh * (oh - 1) + 1: sh, left: left + sw * (ow - 1) + 1: sw]
    return cols.reshape(n, c * kh * kw, oh * ow)


def conv2d_im2col(x, w, b=None, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """2-D convolution (groups=1) as im2col + one matrix multiply; equals `F.conv2d`."""
    out_ch, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = map(_pair, (stride, padding, dilation))
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw))     # [N, C*kh*kw, L]
    out = w.reshape(out_ch, -1) @ cols                              # [N, O, L]
    if b is not None:
        out = out + b.view(1, -1, 1)
    oh = conv_output_size(x.shape[2], kh, sh, ph, dh)
    ow = conv_output_size(x.shape[3], kw, sw, pw, dw)
    return out.view(x.shape[0], out_ch, oh, ow)


def im2col_memory_factor(input_shape, kernel_size, stride=1, padding=0, dilation=1) -> float:
    """Elements of the im2col matrix / elements of the input (about kh*kw / stride**2)."""
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, padding, dilation))
    length = conv_output_size(h, kh, sh, ph, dh) * conv_output_size(w, kw, sw, pw, dw)
    return (c * kh * kw * length) / (c * h * w)


def time_conv(x, w, stride=1, padding=0, dilation=1, min_run_time=0.2) -> dict:
    """Median seconds per call of `conv2d_im2col` and `F.conv2d` on the same inputs (torch.utils.benchmark)."""
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    times = {}
    for name, fn in [("im2col", conv2d_im2col), ("F.conv2d", F.conv2d)]:
        t = benchmark.Timer("fn(x, w, **kw)", globals=dict(fn=fn, x=x, w=w, kw=kwargs))
        times[name] = t.blocked_autorange(min_run_time=min_run_time).median
    times["slowdown"] = times["im2col"] / times["F.conv2d"]
    return times


def conv_params(c_in: int, c_out: int, kernel: int, bias: bool = True) -> int:
    """Weights (+ biases) of one k x k convolution: c_out * (c_in * k * k + bias)."""
    return c_out * (c_in * kernel * kernel + int(bias))


def conv_mults(h_out: int, w_out: int, c_in: int, c_out: int, kernel: int) -> int:
    """Multiplications of one convolution: one k*k*c_in dot product per output value."""
    return h_out * w_out * c_out * kernel * kernel * c_in


def receptive_field(kernels, strides=None, dilations=None) -> int:
    """Input pixels (per side) one output of a stack of convolutions sees: 1 + sum (k-1)*d*prod(earlier strides)."""
    strides = strides or [1] * len(kernels)
    dilations = dilations or [1] * len(kernels)
    rf, jump = 1, 1
    for k, s, d in zip(kernels, strides, dilations):
        rf += (k - 1) * d * jump
        jump *= s
    return rf


def stack_vs_single(channels: int, n_stacked: int = 3, small: int = 3, bias: bool = False) -> dict:
    """One big conv vs `n_stacked` small ones with the same receptive field (e.g. 7x7 vs three 3x3)."""
    big = receptive_field([small] * n_stacked)
    return {
        "kernel_single": big,
        "receptive_field_single": receptive_field([big]),
        "receptive_field_stack": receptive_field([small] * n_stacked),
        "params_single": conv_params(channels, channels, big, bias),
        "params_stack": n_stacked * conv_params(channels, channels, small, bias),
        "nonlinearities_single": 1, "nonlinearities_stack": n_stacked,
    }


def bottleneck_savings(h: int, w: int, c_in: int, c_mid: int, c_out: int, kernel: int = 5) -> dict:
    """Cost of a k x k conv c_in->c_out ('same' padding) vs 1x1 c_in->c_mid then k x k c_mid->c_out."""
    direct = conv_mults(h, w, c_in, c_out, kernel)
    bottleneck = conv_mults(h, w, c_in, c_mid, 1) + conv_mults(h, w, c_mid, c_out, kernel)
    p_direct = conv_params(c_in, c_out, kernel, bias=False)
    p_bottleneck = conv_params(c_in, c_mid, 1, bias=False) + conv_params(c_mid, c_out, kernel, bias=False)
    return {"mults_direct": direct, "mults_bottleneck": bottleneck, "mults_ratio": direct / bottleneck,
            "params_direct": p_direct, "params_bottleneck": p_bottleneck,
            "params_ratio": p_direct / p_bottleneck}


def measured_receptive_field(net: torch.nn.Module, in_channels: int = 1, size: int = 33) -> int:
    """Receptive field found by autograd: how many input pixels (per side) the centre output depends on."""
    x = torch.randn(1, in_channels, size, size, requires_grad=True)
    y = net(x)
    y[0, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
    rows = (x.grad.abs().sum(dim=(0, 1, 3)) > 0).nonzero()
    return int(rows.max() - rows.min() + 1)


# ---------------------------------------------------------------- FFT convolution

def conv2d_fft(x: torch.Tensor, w: torch.Tensor, b=None, padding=0) -> torch.Tensor:
    """2-D convolution (PyTorch's cross-correlation, stride 1, groups=1) through the FFT; equals `F.conv2d`.

    Pad the input, take the 2-D FFT of it and of the kernel zero-padded to the same size, multiply
    (a correlation is a product with the kernel's complex conjugate), sum over input channels, and
    transform back. The circular wrap-around only touches outputs past the valid ones, which we drop.
    Why it is rarely used for CNNs: the kernel's spectrum is as large as the image (a 3x3 kernel
    becomes H x W complex numbers), and the transforms cost the same whatever the kernel size.
    """
    (ph, pw) = _pair(padding)
    out_ch, in_ch, kh, kw = w.shape
    if x.shape[1] != in_ch:
        raise ValueError(f"input has {x.shape[1]} channels, the kernel expects {in_ch}")
    xp = F.pad(x, (pw, pw, ph, ph))
    hp, wp = xp.shape[-2:]
    if kh > hp or kw > wp:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {hp}x{wp}")
    X = torch.fft.rfft2(xp, s=(hp, wp))                           # [N, C, hp, wp//2+1]
    K = torch.fft.rfft2(w, s=(hp, wp))                            # [O, C, hp, wp//2+1]
    Y = torch.einsum("nchw,ochw->nohw", X, K.conj().resolve_conj())
    y = torch.fft.irfft2(Y, s=(hp, wp))[..., : hp - kh + 1, : wp - kw + 1]
    if b is not None:
        y = y + b.view(1, -1, 1, 1)
    return y.contiguous()


def fft_spectrum_factor(input_shape, kernel_size, padding=0) -> float:
    """Complex numbers of the kernel's spectrum / numbers in the kernel (the FFT's memory cost per kernel)."""
    _, _, h, w = input_shape
    (kh, kw), (ph, pw) = _pair(kernel_size), _pair(padding)
    return (h + 2 * ph) * ((w + 2 * pw) // 2 + 1) / (kh * kw)


# ---------------------------------------------------------------- repeated timings

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


# ---------------------------------------------------------------- verdicts on the notes' claims

def verdict_small_kernels(times: dict[str, list[float]]):
    """Claim 25: the speed-up of three 3x3 over one 7x7, and of the 1x1 bottleneck over the direct 5x5."""
    from . import claims
    stack = claims.compare_speed(25, times["one 7x7"], times["three 3x3"],
                                 "time of one 7x7 over time of three stacked 3x3 (same receptive field, C -> C)")
    neck = claims.compare_speed(25, times["5x5 direct"], times["1x1 bottleneck + 5x5"],
                                "time of a 5x5 192 -> 32 over a 1x1 bottleneck to 16 then the 5x5")
    return claims.weakest_part(25, {"3x3 stack": stack, "1x1 bottleneck": neck})


def verdict_fft(timings: dict, kernel: int = 3):
    """Claim 26, 'FFT is hard in practice': the direct convolution's speed-up over the FFT at CNN-size kernels."""
    from . import claims
    t = timings[kernel]
    return claims.compare_speed(26, t["fft"], t["direct"],
                                f"time of our FFT convolution over F.conv2d for a {kernel}x{kernel} kernel "
                                "(positive: FFT loses where CNNs live)")
