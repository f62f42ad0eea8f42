import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tlkit import conv as C

CASES = [  # (kernel, stride, padding, dilation)
    (3, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 1), (3, 1, 2, 2),
    (1, 1, 0, 1), ((3, 5), (2, 1), (1, 2), (1, 2)), (4, 3, 0, 1), (3, 2, 3, 3),
]


@pytest.mark.parametrize("k,s,p,d", CASES)
def test_im2col_matches_unfold(k, s, p, d):
    x = torch.randn(2, 3, 11, 13)
    assert torch.equal(C.im2col(x, k, s, p, d), F.unfold(x, k, dilation=d, padding=p, stride=s))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k,s,p,d", CASES)
def test_conv2d_im2col_matches_conv2d(k, s, p, d, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, 13, generator=g)
    kh, kw = (k, k) if isinstance(k, int) else k
    w = torch.randn(4, 3, kh, kw, generator=g)
    b = torch.randn(4, generator=g) if bias else None
    ref = F.conv2d(x, w, b, stride=s, padding=p, dilation=d)
    out = C.conv2d_im2col(x, w, b, stride=s, padding=p, dilation=d)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_conv2d_im2col_gradients_match():
    x = torch.randn(1, 2, 7, 7, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    gx, gw = torch.autograd.grad(C.conv2d_im2col(x, w, padding=1, stride=2).square().sum(), (x, w))
    rx, rw = torch.autograd.grad(F.conv2d(x, w, padding=1, stride=2).square().sum(), (x, w))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


@pytest.mark.parametrize("k,s,p,d", CASES)
def test_memory_factor_equals_measured_ratio(k, s, p, d):
    x = torch.randn(2, 3, 11, 13)
    measured = C.im2col(x, k, s, p, d).numel() / x.numel()
    assert C.im2col_memory_factor(x.shape, k, s, p, d) == pytest.approx(measured)


def test_memory_factor_is_k_squared_for_same_padding_stride_1():
    assert C.im2col_memory_factor((8, 64, 56, 56), 3, padding=1) == 9
    assert C.im2col_memory_factor((8, 64, 56, 56), 7, padding=3) == 49
    assert C.im2col_memory_factor((8, 64, 56, 56), 3, stride=2, padding=1) == pytest.approx(9 / 4)


def test_time_conv_reports_both():
    t = C.time_conv(torch.randn(1, 4, 16, 16), torch.randn(4, 4, 3, 3), padding=1, min_run_time=0.01)
    assert t["im2col"] > 0 and t["F.conv2d"] > 0
    assert t["slowdown"] == pytest.approx(t["im2col"] / t["F.conv2d"])


@pytest.mark.parametrize("c_in,c_out,k,bias", [(3, 8, 3, True), (16, 16, 7, False), (5, 2, 1, True)])
def test_conv_params_equals_torch_count(c_in, c_out, k, bias):
    layer = nn.Conv2d(c_in, c_out, k, bias=bias)
    assert C.conv_params(c_in, c_out, k, bias) == sum(p.numel() for p in layer.parameters())


def test_seven_by_seven_vs_three_stacked_three_by_three():
    r = C.stack_vs_single(channels=64)
    assert r["kernel_single"] == 7 and r["receptive_field_stack"] == r["receptive_field_single"] == 7
    assert r["params_single"] == 49 * 64 * 64 and r["params_stack"] == 27 * 64 * 64
    single = nn.Conv2d(64, 64, 7, bias=False)
    stack = nn.Sequential(*[nn.Conv2d(64, 64, 3, bias=False) for _ in range(3)])
    assert r["params_single"] == sum(p.numel() for p in single.parameters())
    assert r["params_stack"] == sum(p.numel() for p in stack.parameters())


@pytest.mark.parametrize("kernels,strides,dilations", [
    ([3, 3, 3], None, None), ([7], None, None), ([3, 3], [2, 1], None), ([5, 3, 3], [2, 2, 1], None),
    ([3, 3], None, [1, 2]), ([3, 3, 3], [1, 2, 1], [2, 1, 3]),
])
def test_receptive_field_formula_matches_autograd(kernels, strides, dilations):
    strides_ = strides or [1] * len(kernels)
    dil = dilations or [1] * len(kernels)
    net = nn.Sequential(*[nn.Conv2d(1, 1, k, stride=s, dilation=d) for k, s, d in zip(kernels, strides_, dil)])
    assert C.receptive_field(kernels, strides, dilations) == C.measured_receptive_field(net, size=41)


def test_bottleneck_savings_andrew_ng_example():
    # 28x28x192 -> 5x5 conv -> 28x28x32, with and without a 1x1 bottleneck to 16 channels
    r = C.bottleneck_savings(28, 28, c_in=192, c_mid=16, c_out=32, kernel=5)
    assert r["mults_direct"] == 28 * 28 * 32 * 5 * 5 * 192 == 120_422_400
    assert r["mults_bottleneck"] == 28 * 28 * 16 * 192 + 28 * 28 * 32 * 5 * 5 * 16 == 12_443_648
    direct = nn.Conv2d(192, 32, 5, padding=2, bias=False)
    bottleneck = nn.Sequential(nn.Conv2d(192, 16, 1, bias=False), nn.Conv2d(16, 32, 5, padding=2, bias=False))
    assert r["params_direct"] == sum(p.numel() for p in direct.parameters())
    assert r["params_bottleneck"] == sum(p.numel() for p in bottleneck.parameters())
    assert r["mults_ratio"] == pytest.approx(120_422_400 / 12_443_648)
