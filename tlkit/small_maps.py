"""Depthwise convolutions on feature maps smaller than their kernel, computed fast on the CPU.

Why: on a CPU, oneDNN runs a depthwise convolution whose map is smaller than its kernel (the 1x1 to
4x4 maps of EfficientNet-Lite0's last stages at 32-128 px) as one small GEMM per channel, 3-70x slower
than on a slightly larger map. On 1x1 and 2x2 maps each channel's convolution is a tiny matrix (output
pixels x input pixels) built from its kernel, so one broadcast multiply-and-sum does the same sums and
autograd gives the gradients. On 3x3 and 4x4 maps only the weight gradient is slow, and one
multiply-and-sum per kernel tap computes it. Larger maps, and every other device, keep the library's
convolution.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .conv import conv_output_size

__all__ = ["MATRIX_PIXELS", "SmallMapDepthwiseConv2d", "TAPS_PIXELS", "depthwise_as_matrices", "path_for",
           "tap_matrix", "tap_weight_grad", "use_small_map_depthwise"]

MATRIX_PIXELS = 4   # maps of at most 2x2 pixels take the matrix path (measured: at 3x3 the taps are as fast or faster)
TAPS_PIXELS = 16    # up to 4x4 the taps path; at 5x5 oneDNN is as fast


@functools.lru_cache(maxsize=64)
def tap_matrix(h: int, w: int, kh: int, kw: int, stride: tuple[int, int],
               padding: tuple[int, int]) -> torch.Tensor:
    """0/1 tensor (kh*kw, out pixels, in pixels): which input pixel each kernel tap reads for each output.

    Taps that read only zero padding have all-zero rows. Cached per shape, so treat it as read-only.
    Built outside inference mode even when first asked for inside it: autograd may save it later.
    """
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    with torch.inference_mode(False):
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
    ho, wo = conv_output_size(h, kh, stride[0], padding[0]), conv_output_size(w, kw, stride[1], padding[1])
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


def tap_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: tuple[int, int],
                    stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """The weight gradient of a depthwise convolution, one multiply-and-sum over channels-last pixels per tap."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    ho, wo = grad_out.shape[-2:]
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))   # (n, h, w, c): channels innermost
    grad = grad_out.permute(0, 2, 3, 1)
    out = grad.new_empty(x.shape[1], kh * kw)
    for i in range(kh):
        for j in range(kw):
            seen = padded[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            out[:, i * kw + j] = (seen * grad).sum((0, 1, 2))
    return out.reshape(x.shape[1], 1, kh, kw)


class _TapWeightGrad(torch.autograd.Function):
    """The library's depthwise forward and input gradient, with `tap_weight_grad` for the weight."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0],
                x.shape[1], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = tap_weight_grad(x, grad_out, weight.shape[-2:], ctx.stride, ctx.padding)
        return grad_x, grad_w, None, None


def path_for(map_size: tuple[int, int], kernel_size: tuple[int, int]) -> str:
    """How a depthwise convolution runs here on a CPU map: "matrix", "taps" or "library".

    oneDNN's fast kernels cover maps at least as large as the kernel (a 3x3 map with a 3x3 kernel takes
    1 ms). On smaller maps: "matrix" (`depthwise_as_matrices`, whose cost grows with pixels squared) up
    to `MATRIX_PIXELS`, then "taps" (`tap_weight_grad`: there only the weight gradient is slow) up to
    `TAPS_PIXELS`.
    """
    (h, w), (kh, kw) = map_size, kernel_size
    if (h >= kh and w >= kw) or h * w > TAPS_PIXELS:
        return "library"
    return "matrix" if h * w <= MATRIX_PIXELS else "taps"


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """An `nn.Conv2d` (depthwise, zero padding) that runs small CPU maps the way `path_for` says."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = path_for(x.shape[-2:], self.kernel_size) if x.device.type == "cpu" and x.dim() == 4 else "library"
        weight, bias = self.weight, self.bias
        if path != "library" and torch.is_autocast_enabled("cpu"):   # compute in the dtype the library's would
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if path == "library" or x.dtype != weight.dtype:
            return super().forward(x)
        if path == "matrix":
            return depthwise_as_matrices(x, weight, bias, self.stride, self.padding)
        with torch.autocast("cpu", enabled=False):
            y = _TapWeightGrad.apply(x, weight, self.stride, self.padding)
        return y if bias is None else y + bias.reshape(1, -1, 1, 1)


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
