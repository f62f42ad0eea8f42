"""Lesson 07's new measurements, each against a reference: FFT convolution, emulated fp16 storage,
the weakest-part verdict, the loading-step timings and prose, and the DDP gradient comparison."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tlkit import claims, conv, pipeline
from tlkit.lessons import l07_precision


@pytest.mark.parametrize("k,padding", [(1, 0), (3, 1), (4, 0), (5, (2, 1)), (7, 3)])
def test_fft_convolution_equals_conv2d(k, padding):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 3, 17, 19, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(conv.conv2d_fft(x, w, b, padding=padding), F.conv2d(x, w, b, padding=padding),
                               rtol=1e-10, atol=1e-10)


def test_fft_convolution_rejects_mismatched_channels():
    with pytest.raises(ValueError, match="channels"):
        conv.conv2d_fft(torch.randn(1, 2, 8, 8), torch.randn(3, 4, 3, 3))


def test_fft_spectrum_factor_counts_the_rfft_output():
    x, w = torch.randn(1, 1, 10, 12), torch.randn(1, 1, 3, 3)
    spectrum = torch.fft.rfft2(w, s=(12, 14))        # the padded input is 12 x 14
    assert conv.fft_spectrum_factor(x.shape, 3, 1) == pytest.approx(spectrum.numel() / w.numel())


def test_kernel_sweep_and_crossover():
    table, timings = l07_precision.kernel_sweep(kernels=(3, 5), channels=2, size=12, repeats=2, block_s=1e-4)
    assert list(table.index) == [3, 5] and set(timings[3]) == {"direct", "im2col", "fft"}
    assert all(len(v) == 2 for v in timings[5].values())
    assert table["max |fft - direct|"].max() < 1e-4
    assert table.loc[3, "im2col bytes / input bytes"] == pytest.approx(9.0)
    fake = pd.DataFrame({"direct ms": [1.0, 2.0, 5.0], "fft ms": [3.0, 2.5, 4.0]}, index=[3, 7, 11])
    assert l07_precision.fft_crossover(fake) == 11
    assert l07_precision.fft_crossover(fake.assign(**{"fft ms": 9.0})) is None


def test_weakest_part_decides():
    sup = claims.judge(25, 0.5, (0.2, 0.8), 9, "a", unit="x", scale=1.0, offset=1.0)
    low_sup = claims.judge(25, 0.3, (0.1, 0.6), 9, "b", unit="x", scale=1.0, offset=1.0)
    unsure = claims.judge(25, 0.1, (-0.2, 0.4), 9, "c", unit="x", scale=1.0, offset=1.0)
    contra = claims.judge(25, -0.5, (-0.7, -0.3), 9, "d", unit="x", scale=1.0, offset=1.0)
    assert claims.weakest_part(25, {"a": sup, "b": low_sup}).ci == low_sup.ci
    assert claims.weakest_part(25, {"a": sup, "c": unsure}).verdict == claims.NOT_SHOWN
    v = claims.weakest_part(25, {"c": unsure, "d": contra, "a": sup})
    assert v.verdict == claims.CONTRADICTED and v.what.startswith("d") and "c:" in v.what and "a:" in v.what


def test_a_ratio_verdict_follows_the_timings():
    slow, fast = [2.0, 2.1, 1.9, 2.0], [1.0, 1.05, 0.95, 1.0]
    assert claims.compare_speed(27, slow, fast, "s", unit="x (ratio)").verdict == claims.SUPPORTED
    assert claims.compare_speed(27, fast, slow, "s", unit="x (ratio)").verdict == claims.CONTRADICTED


def test_fp16_store_equals_a_real_fp16_update():
    g = torch.Generator().manual_seed(0)
    w16 = torch.randn(1000, generator=g).half()
    grad16 = (torch.randn(1000, generator=g) * 1e-2).half()
    lr = 3e-3
    emulated = l07_precision.fp16_store(w16.float() - lr * grad16.float())
    real = w16.clone().add_(grad16, alpha=-lr)          # fp16 storage, rounded once per update
    torch.testing.assert_close(emulated, real.float(), rtol=0, atol=0)
    assert l07_precision.fp16_store(torch.tensor([1.0 + 2.0**-12])).item() == 1.0   # below half a step: lost


def test_fp16_store_stochastic_is_unbiased():
    x = torch.full((20000,), 1.0 + 2.0**-12)           # a quarter of the way from 1 to the next fp16 value
    gen = torch.Generator().manual_seed(0)
    stored = l07_precision.fp16_store(x, "stochastic", gen)
    assert set(stored.unique().tolist()) == {1.0, 1.0 + 2.0**-10}
    assert stored.mean().item() == pytest.approx(x[0].item(), abs=4 * 2.0**-10 * 0.5 / np.sqrt(len(x)))
    with pytest.raises(ValueError):
        l07_precision.fp16_store(x, "up")


def test_fp16_variants_train_and_start_from_the_same_loss():
    problem = l07_precision.toy_problem(n_train=128, n_val=64)
    runs = {v: l07_precision.train_fp16_variant(v, problem, steps=20, seed=0) for v in l07_precision.FP16_VARIANTS}
    assert all(len(r["train_loss"]) == 20 and r["val_item_loss"].shape == (64,) for r in runs.values())
    # the first loss is computed before any update: the fp16 rounding of the initial weights is all that differs
    assert runs["fp32"]["train_loss"][0] == pytest.approx(runs["fp32 master weights (cast up)"]["train_loss"][0],
                                                          abs=1e-3)
    with pytest.raises(ValueError):
        l07_precision.train_fp16_variant("fp8", problem)


def test_fp16_table_and_verdict_contract():
    problem = l07_precision.toy_problem(n_train=128, n_val=64)
    runs = [l07_precision.train_fp16_variant(v, problem, steps=10, seed=s) for s in (0, 1)
            for v in l07_precision.FP16_VARIANTS]
    table = l07_precision.fp16_table(runs)
    assert table.loc["fp32", "loss - fp32"] == 0.0
    v = l07_precision.verdict_fp16_convergence(runs)
    assert v.id == 28 and v.n == 64 and v.ci[0] <= v.effect <= v.ci[1]
    naive = np.mean([r["val_item_loss"] for r in runs if r["variant"] == l07_precision.FP16_VARIANTS[1]], axis=0)
    master = np.mean([r["val_item_loss"] for r in runs if r["variant"] == l07_precision.FP16_VARIANTS[2]], axis=0)
    assert v.effect == pytest.approx(float((naive - master).mean()))
    assert l07_precision.loss_curves(runs).shape == (10, len(l07_precision.FP16_VARIANTS))


def _stages():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"decode": 5e-3 + rng.uniform(0, 1e-4, 6), "resize": 3e-3 + rng.uniform(0, 1e-4, 6),
                         "collate": 2e-4 + rng.uniform(0, 1e-5, 6), "copy": 1e-4 + rng.uniform(0, 1e-5, 6),
                         "memmap": 3e-4 + rng.uniform(0, 1e-5, 6)})


def test_stage_ranking_prose_and_verdict_follow_the_numbers():
    stages = _stages()
    ranking = l07_precision.stage_ranking(stages)
    assert ranking["step"].tolist() == ["decode", "resize", "collate", "copy"]
    text = l07_precision.stage_prose(ranking)
    assert "decode > resize > collate > copy" in text and "**4 of 4**" in text
    v = l07_precision.verdict_copy_and_store(stages)
    assert v.verdict == claims.CONTRADICTED and "decode" in v.what      # the copy is the cheapest step here
    swapped = stages.rename(columns={"copy": "decode", "decode": "copy"})
    assert "copying the batch is the most expensive step" in l07_precision.stage_prose(l07_precision.stage_ranking(swapped))
    assert l07_precision.verdict_copy_and_store(swapped).verdict == claims.SUPPORTED


def test_stage_timings_on_real_images(tmp_path):
    from PIL import Image
    from tlkit.data import ImageList
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    ds = ImageList(paths, [0, 1] * 3, ["a", "b"])
    store = pipeline.MemmapImageStore.write(ds, tmp_path / "store", 16)
    stages = l07_precision.stage_timings(ds, store, 16, batch_size=3, n_batches=2)
    assert list(stages.columns) == [*l07_precision.STAGES, "memmap"] and len(stages) == 2
    assert (stages > 0).all().all()


def test_bottleneck_prose_reads_the_summary():
    data_bound = {"JPEG, head only": {"limited_by": "data", "data_fraction": 0.8, "data_s_per_step": 0.08,
                                      "compute_s_per_step": 0.02},
                  "memmap, head only": {"limited_by": "compute", "data_fraction": 0.1, "data_s_per_step": 0.002,
                                        "compute_s_per_step": 0.02}}
    assert "**was** the limit" in l07_precision.bottleneck_prose(data_bound)
    compute_bound = {**data_bound, "JPEG, head only": {"limited_by": "compute", "data_fraction": 0.26,
                                                       "data_s_per_step": 0.011, "compute_s_per_step": 0.031}}
    prose = l07_precision.bottleneck_prose(compute_bound)
    assert "limited by **compute**" in prose
    assert "waited for data 26% of the time, so a faster pipeline could save at most that share" in prose
    assert "cut the wait from 11 ms to 2 ms per step" in prose


def test_gradient_match_counts_entries():
    a = {"grads": torch.ones(3, 4)}
    b = {"grads": torch.ones(3, 4)}
    assert l07_precision.gradient_match(a, b)["matches"] == 12
    b["grads"][0, 0] = 2.0
    assert l07_precision.gradient_match(a, b)["matches"] == 11
    assert l07_precision.gradient_match(a, {"grads": torch.ones(2, 4)})["matches"] == 0


def test_the_fft_verdict_reads_as_fft_being_slower_and_follows_the_timings():
    slow_fft = {3: {"fft": [0.014, 0.015, 0.013, 0.014, 0.016], "direct": [0.001, 0.0011, 0.001, 0.0009, 0.001]}}
    v = l07_precision.verdict_fft(slow_fft)
    assert v.verdict == "supported" and v.unit == "x slower with FFT" and 12 < v.effect * v.scale + v.offset < 16
    fast_fft = {3: {"fft": slow_fft[3]["direct"], "direct": slow_fft[3]["fft"]}}
    assert l07_precision.verdict_fft(fast_fft).verdict == "contradicted"
