"""Depthwise convolutions on tiny feature maps, computed as one broadcast multiply on the CPU.

Why: on a CPU, oneDNN runs a depthwise convolution whose map is smaller than its kernel (the 1x1 to
3x3 maps of EfficientNet-Lite0's last stages at 32-96 px) as one small GEMM per channel, 5-50x slower
than on a slightly larger map. There, each channel's convolution is a small matrix
(output pixels x input pixels) built from its kernel, so a multiply-and-sum over a few pixels does the
same sums, and autograd gives the gradients. Larger maps, and every other device, keep the library's
convolution.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MAX_PIXELS", "SmallMapDepthwiseConv2d", "depthwise_as_matrices", "takes_matrix_path", "tap_matrix",
           "use_small_map_depthwise"]

MAX_PIXELS = 9   # at most 3x3 input pixels take the matrix path; at 4x4 it is as slow as oneDNN (measured)


@functools.lru_cache(maxsize=64)
def tap_matrix(h: int, w: int, kh: int, kw: int, stride: tuple[int, int],
               padding: tuple[int, int]) -> torch.Tensor:
    """0/1 tensor (kh*kw, out pixels, in pixels): which input pixel each kernel tap reads for each output.

    Taps that read only zero padding have all-zero rows. Cached per shape, so treat it as read-only.
    """
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    taps = torch.zeros(kh * kw, ho * wo, h * w)
    for i in range(kh):
        for j in range(kw):
            for a in range(ho):
                for b in range(wo):
                    y, x = a * sh + i - ph, b * sw + j - pw
                    if 0 <= y < h and 0 <= x < w:
                        taps[i * kw + j, a * wo + b, y * w + x] = 1.0
    return taps


def depthwise_as_matrices(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride, padding, groups=channels)` for a depthwise `weight` (C, 1, kh, kw)."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    taps = tap_matrix(h, w, kh, kw, tuple(stride), tuple(padding)).to(weight.dtype)
    ho, wo = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    per_tap = taps.reshape(kh * kw, -1)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # NHWC: keep channels innermost, so every multiply runs along contiguous memory
        per_pixel = (per_tap.t() @ weight.reshape(c, kh * kw).t()).reshape(ho * wo, h * w, c)
        y = (per_pixel.unsqueeze(0) * x.permute(0, 2, 3, 1).reshape(n, 1, h * w, c)).sum(2)
        y = y.reshape(n, ho, wo, c).permute(0, 3, 1, 2)
    else:
        per_channel = (weight.reshape(c, kh * kw) @ per_tap).reshape(c, ho * wo, h * w)
        y = (per_channel.unsqueeze(0) * x.reshape(n, c, 1, h * w)).sum(-1).reshape(n, c, ho, wo)
    return y if bias is None else y + bias.reshape(1, c, 1, 1)


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """An `nn.Conv2d` (depthwise, zero padding) that takes the matrix path on small CPU maps (`takes_matrix_path`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or not takes_matrix_path(x.shape[-2:], self.kernel_size):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):   # compute in the autocast dtype, as the library's conv would
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        elif x.dtype != weight.dtype:
            return super().forward(x)
        return depthwise_as_matrices(x, weight, bias, self.stride, self.padding)


def takes_matrix_path(map_size: tuple[int, int], kernel_size: tuple[int, int]) -> bool:
    """True for a map of at most `MAX_PIXELS` pixels that is smaller than the kernel.

    Why both: oneDNN's fast depthwise kernels cover maps at least as large as the kernel (a 3x3 map
    with a 3x3 kernel takes 1 ms), and the matrix path's cost grows with pixels squared.
    """
    (h, w), (kh, kw) = map_size, kernel_size
    return h * w <= MAX_PIXELS and (h < kh or w < kw)


def _is_depthwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels == m.out_channels
            and m.dilation == (1, 1) and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def use_small_map_depthwise(model: nn.Module) -> int:
    """Make `model`'s depthwise `nn.Conv2d` layers `SmallMapDepthwiseConv2d` in place; how many there were.

    The parameters, state-dict keys and results stay the same (up to float rounding): only the
    arithmetic on tiny CPU maps changes.
    """
    layers = [m for m in model.modules() if _is_depthwise(m)]
    for m in layers:
        m.__class__ = SmallMapDepthwiseConv2d
    return len(layers)
