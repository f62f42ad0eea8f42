import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tlkit import models
from tlkit.small_maps import (MATRIX_PIXELS, TAPS_PIXELS, SmallMapDepthwiseConv2d, depthwise_as_matrices, path_for,
                              tap_matrix, tap_weight_grad, use_small_map_depthwise)


@st.composite
def depthwise_cases(draw):
    kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5]))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    h = draw(st.integers(max(1, kh - 2 * padding[0]), 5))
    w = draw(st.integers(max(1, kw - 2 * padding[1]), 5))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 6)), h, w, kh, kw, stride, padding,
            draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2 ** 16)))


def case_tensors(case):
    """(x, weight, bias or None, stride, padding, generator) of a drawn case; x and weight require grad."""
    n, c, h, w, kh, kw, stride, padding, with_bias, channels_last, seed = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, kh, kw, generator=g, requires_grad=True)
    bias = torch.randn(c, generator=g, requires_grad=True) if with_bias else None
    return x.requires_grad_(), weight, bias, stride, padding, g


@settings(max_examples=120, deadline=None)
@given(depthwise_cases())
def test_matrix_path_equals_conv2d_in_values_and_gradients(case):
    x, weight, bias, stride, padding, g = case_tensors(case)
    ref = F.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])
    out = depthwise_as_matrices(x, weight, bias, stride, padding)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(ref.shape, generator=g)
    inputs = [t for t in (x, weight, bias) if t is not None]
    for mine, lib in zip(torch.autograd.grad(out, inputs, grad_out), torch.autograd.grad(ref, inputs, grad_out)):
        torch.testing.assert_close(mine, lib, rtol=1e-5, atol=1e-5)


def test_tap_matrix_counts_the_taps_that_read_the_image():
    # a 1x1 map with a 5x5 kernel and padding 2: only the centre tap reads the pixel
    taps = tap_matrix(1, 1, 5, 5, (1, 1), (2, 2))
    assert taps.shape == (25, 1, 1) and taps.sum() == 1 and taps[12, 0, 0] == 1
    # a 3x3 'same' convolution on a 3x3 map: corner outputs read 4 pixels, edges 6, the centre 9
    taps = tap_matrix(3, 3, 3, 3, (1, 1), (1, 1))
    assert taps.sum(dim=(0, 2)).tolist() == [4, 6, 4, 6, 9, 6, 4, 6, 4]


def test_each_map_size_takes_its_path():
    assert path_for((1, 1), (3, 3)) == path_for((2, 2), (5, 5)) == path_for((1, 2), (3, 3)) == "matrix"
    assert path_for((3, 3), (5, 5)) == path_for((4, 4), (5, 5)) == path_for((2, 3), (3, 5)) == "taps"
    assert path_for((3, 3), (3, 3)) == "library"      # oneDNN's depthwise kernel is fast here
    assert path_for((1, 20), (3, 3)) == "library"     # 20 pixels > TAPS_PIXELS
    assert (MATRIX_PIXELS, TAPS_PIXELS) == (4, 16)


@settings(max_examples=80, deadline=None)
@given(depthwise_cases())
def test_tap_weight_grad_equals_the_library_weight_gradient(case):
    x, weight, _, stride, padding, g = case_tensors(case)
    ref = F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])
    grad_out = torch.randn(ref.shape, generator=g)
    (expected,) = torch.autograd.grad(ref, weight, grad_out)
    torch.testing.assert_close(tap_weight_grad(x.detach(), grad_out, weight.shape[-2:], stride, padding), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,path", [(1, "matrix"), (2, "matrix"), (3, "taps"), (4, "taps"), (6, "library")])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("bias,stride", [(True, 1), (False, 1), (False, 2)])
def test_layer_equals_conv2d_on_every_path(size, path, channels_last, bias, stride):
    torch.manual_seed(size)
    conv = nn.Conv2d(12, 12, 5, stride=stride, padding=2, groups=12, bias=bias)
    fast = copy.deepcopy(conv)
    use_small_map_depthwise(fast)
    assert path_for((size, size), (5, 5)) == path
    x = torch.randn(3, 12, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out, ref = fast(x.requires_grad_()), conv(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(ref.shape)
    for mine, lib in zip(torch.autograd.grad(out, [x, *fast.parameters()], grad_out),
                         torch.autograd.grad(ref, [x, *conv.parameters()], grad_out)):
        torch.testing.assert_close(mine, lib, rtol=1e-5, atol=1e-5)


def test_a_shape_first_met_in_inference_mode_still_trains():
    tap_matrix.cache_clear()   # the tap tensor of this shape is built under inference_mode, then saved by autograd
    conv = nn.Conv2d(7, 7, 5, padding=2, groups=7, bias=False)
    use_small_map_depthwise(conv)
    x = torch.randn(2, 7, 2, 1)
    with torch.inference_mode():
        conv(x)
    conv(x).sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_layer_keeps_the_library_call_on_larger_maps():
    conv = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
    fast = copy.deepcopy(conv)
    assert use_small_map_depthwise(fast) == 1 and isinstance(fast, SmallMapDepthwiseConv2d)
    big = torch.randn(2, 8, 5, 5)
    assert torch.equal(fast(big), conv(big))


def test_only_depthwise_zero_padded_layers_are_swapped():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4),            # depthwise: swapped
                          nn.Conv2d(4, 8, 1),                                 # pointwise
                          nn.Conv2d(8, 8, 3, padding=1, groups=2),            # grouped, not depthwise
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"),
                          nn.Conv2d(8, 8, 3, padding="same", groups=8),
                          nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8))
    assert use_small_map_depthwise(model) == 1
    assert [type(m) is SmallMapDepthwiseConv2d for m in model] == [True] + [False] * 5


@pytest.mark.parametrize("size", [2, 4])
def test_bf16_autocast_computes_in_bf16_like_the_library(size):
    conv = nn.Conv2d(6, 6, 5, padding=2, groups=6, bias=False)
    fast = copy.deepcopy(conv)
    use_small_map_depthwise(fast)
    x = torch.randn(4, 6, size, size, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = conv(x), fast(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert fast.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def library_copy(net: nn.Module) -> nn.Module:
    """A deep copy of `net` whose depthwise layers are plain `nn.Conv2d` again."""
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if isinstance(m, SmallMapDepthwiseConv2d):
            m.__class__ = nn.Conv2d
    return plain


def paths_taken(net: nn.Module, x: torch.Tensor) -> set[str]:
    """The `path_for` answers of the swapped layers during one forward pass of `x`."""
    paths = set()
    hooks = [m.register_forward_pre_hook(lambda m, args: paths.add(path_for(args[0].shape[-2:], m.kernel_size)))
             for m in net.modules() if isinstance(m, SmallMapDepthwiseConv2d)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return paths


def test_lite0_swaps_its_depthwise_layers_and_keeps_results_and_state_dict_keys():
    torch.manual_seed(0)
    net = models.create("efficientnet_lite0", num_classes=3, pretrained=False).eval()
    plain = library_copy(net)
    assert sum(isinstance(m, SmallMapDepthwiseConv2d) for m in net.modules()) == 16 - 4  # the 4 downsampling
    assert list(net.state_dict()) == list(plain.state_dict())                            # blocks: Conv2dSame
    x = torch.randn(4, 3, 32, 32)   # 32 px: 16x16 maps first, 4x4 to 1x1 in the later stages
    assert paths_taken(net, x) == {"library", "matrix", "taps"}
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,paths", [(32, {"library", "matrix", "taps"}), (96, {"library", "taps"}),
                                        (128, {"library", "taps"})])
def test_lite0_training_gradients_match_the_library(size, paths):
    torch.manual_seed(0)
    net = models.create("efficientnet_lite0", num_classes=3, pretrained=True).eval()  # BN in eval: well-conditioned
    plain = library_copy(net)
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 0])
    assert paths_taken(net, x) == paths
    grads = []
    for model in (net, plain):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad for p in model.parameters()])
    for mine, lib in zip(*grads):
        torch.testing.assert_close(mine, lib, rtol=1e-3, atol=1e-5)
