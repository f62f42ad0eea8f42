"""Convolution as a matrix multiply (im2col), and calculators for parameters, cost and receptive field."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils import benchmark

__all__ = ["bottleneck_savings", "conv2d_fft", "conv2d_im2col", "conv_mults", "conv_output_size",
           "conv_params", "fft_spectrum_factor", "im2col", "im2col_memory_factor",
           "measured_receptive_field", "receptive_field", "stack_vs_single", "time_conv"]


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


# ---------------------------------------------------------------- verdicts on the notes' claims


