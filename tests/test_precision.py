import math

import pytest
import torch
from tlkit.lessons import l07_precision as P



@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_finfo_table_matches_bit_layout(dtype):
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    row = P.finfo_table().loc[name]
    assert row.bits == 1 + row.exponent_bits + row.mantissa_bits == 16
    bias = 2 ** (row.exponent_bits - 1) - 1
    assert row.min_normal == 2.0 ** (1 - bias)
    assert row.min_subnormal == 2.0 ** (1 - bias - row.mantissa_bits)
    assert row["max"] == (2 - 2.0 ** -row.mantissa_bits) * 2.0 ** bias
    # the smallest subnormal survives a cast, half of it does not
    assert torch.tensor(row.min_subnormal).to(dtype).item() == row.min_subnormal
    assert torch.tensor(row.min_subnormal * 0.49).to(dtype).item() == 0


def test_cast_report_counts_underflow_and_overflow():
    values = torch.tensor([1e-9, 1e-6, 1e-2, 1.0])  # fp16: 1e-9 -> 0, 1e-6 subnormal
    rep = P.cast_report(values, torch.float16, scales=(1.0, 2.0**16))
    assert rep.loc[1.0].tolist() == [0.25, 0.25, 0.0]
    # x 65536: 1e-9 -> 6.6e-5 (normal), 1.0 -> 65536 > fp16 max -> inf
    assert rep.loc[2.0**16].tolist() == [0.0, 0.0, 0.25]


def _grid(dtype):
    """fp32 values spread over normal and subnormal fp16/bf16 ranges, both signs."""
    g = torch.Generator().manual_seed(0)
    mags = torch.exp2(torch.empty(4000).uniform_(-26, 14, generator=g))
    if dtype == torch.bfloat16:
        mags = torch.exp2(torch.empty(4000).uniform_(-135, 100, generator=g))
    signs = torch.where(torch.rand(4000, generator=g) < 0.5, -1.0, 1.0)
    return (mags * signs).float()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stochastic_round_gives_only_neighbouring_values(dtype):
    x = _grid(dtype)
    lower = x.to(dtype)  # reference neighbours from torch's own rounding and nextafter
    lower = torch.where(lower.float() > x, torch.nextafter(lower, torch.full_like(lower, -math.inf)), lower)
    upper = torch.where(lower.float() == x, lower, torch.nextafter(lower, torch.full_like(lower, math.inf)))
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        r = P.stochastic_round(x, dtype, generator=gen)
        assert r.dtype == dtype
        assert torch.all((r == lower) | (r == upper))
    # both neighbours do occur
    hits_up = sum((P.stochastic_round(x, dtype, generator=gen) == upper).sum() for _ in range(3))
    assert 0 < hits_up < 3 * len(x)


def test_stochastic_round_keeps_representable_values_exact():
    x = torch.tensor([0.0, 1.0, -2.5, 0.1, 2.0**-14, 2.0**-24, 65504.0]).half().float()
    assert torch.equal(P.stochastic_round(x).float(), x.half().float())
    # beyond the finite range: round to nearest (65510 -> max, 1e6 -> inf)
    assert P.stochastic_round(torch.full((100,), 65510.0)).eq(65504).all()
    assert torch.isinf(P.stochastic_round(torch.tensor([1e6]))).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("value", [1.0 + 1 / 3 * 2.0**-10, 0.1, -3.3e-6, 1234.567])
def test_stochastic_round_is_unbiased(dtype, value):
    n = 200_000
    x = torch.full((n,), value, dtype=torch.float32)
    err = P.stochastic_round(x, dtype, generator=torch.Generator().manual_seed(2)).double() - x.double()
    std_err = err.std() / math.sqrt(n)
    assert std_err > 0
    assert abs(err.mean()) < 3 * std_err
    # round-to-nearest, by contrast, is biased by far more than that
    nearest_err = x.to(dtype).double() - x.double()
    assert abs(nearest_err.mean()) > 10 * std_err


def test_running_sum_fp16_nearest_stalls_and_stochastic_does_not():
    sums = P.running_sums(n=3000, value=1e-4, chains=16)
    errs = P.sum_rel_errors(sums, value=1e-4)
    # fp16 step at 0.25 is 2**-12 = 2.4e-4: adding 1e-4 rounds back down, the sum sticks at 0.25
    assert sums["fp16 nearest"].iloc[-1] == 0.25
    assert abs(errs["fp32"]) < 1e-3
    assert abs(errs["fp16 stochastic"]) < 0.02
    assert abs(errs["fp16 values, fp32 sum"]) < 1e-3


def test_autocast_uses_requested_dtype():
    lin = torch.nn.Linear(4, 4)
    with P.autocast("cpu", "bf16"):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with P.autocast("cpu", None):
        assert lin(torch.randn(2, 4)).dtype == torch.float32


def test_saved_activation_bytes_counts_what_backward_keeps():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(16, 64)
    # kept: the input (for W1's grad), the ReLU output (for ReLU and W2's grad), W2 (for the hidden grad)
    fp32 = 4 * (16 * 64 + 16 * 32 + 32 * 8)
    assert P.saved_activation_bytes(net, x) == fp32
    assert P.saved_activation_bytes(net, x, "bf16") == fp32 // 2  # the same tensors in 16 bits
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    xi = torch.randn(2, 3, 10, 10)
    assert P.saved_activation_bytes(conv, xi) == 4 * (xi.numel() + 8 * 3 * 9 + 2 * 8 * 8 * 8)


def test_amp_benchmark_compares_configs_with_the_learner():
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    from tlkit.train import Learner
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    ds = TensorDataset(x, y)
    dls = SimpleNamespace(train=DataLoader(ds, batch_size=8), val=DataLoader(ds, batch_size=32))

    def make_learner(freeze_conv=False, **kw):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 6 * 6, 2))
        net[0].requires_grad_(not freeze_conv)
        return Learner(net, dls, device="cpu", progress=False, **kw)

    try:
        table = P.amp_benchmark(make_learner, {"fp32": {}, "bf16": {"precision": "bf16"},
                                               "fp32 channels_last": {"channels_last": True},
                                               "fp32 head only": {"freeze_conv": True}})
    finally:
        torch.set_num_threads(before)
    assert list(table.index) == ["fp32", "bf16", "fp32 channels_last", "fp32 head only"]
    # activations are those of a full fine-tune, whatever the learner trains
    assert table.loc["fp32 head only", "activation_mb"] == table.loc["fp32", "activation_mb"]
    assert table.loc["bf16", "activation_mb"] == pytest.approx(table.loc["fp32", "activation_mb"] / 2)
    assert (table.step_s > 0).all() and table.val_acc.between(0, 1).all()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_stochastic_round_on_cuda_is_unbiased():
    x = torch.full((200_000,), 0.1, device="cuda")
    err = P.stochastic_round(x).double() - x.double()
    assert abs(err.mean().item()) < 3 * err.std().item() / math.sqrt(len(x))


@pytest.mark.gpu
@needs_cuda
def test_amp_benchmark_fp16_with_grad_scaler_on_cuda():
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    from tlkit.train import Learner
    x = torch.randn(64, 3, 16, 16)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    dls = SimpleNamespace(train=DataLoader(TensorDataset(x, y), batch_size=16),
                          val=DataLoader(TensorDataset(x, y), batch_size=64))

    def make_learner(**kw):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 2))
        return Learner(net, dls, device="cuda", progress=False, **kw)

    table = P.amp_benchmark(make_learner, {"fp32": {}, "fp16": {"precision": "fp16"}})
    assert (table.peak_cuda_mb > 0).all()
    assert table.loc["fp16", "activation_mb"] < table.loc["fp32", "activation_mb"]
