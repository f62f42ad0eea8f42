"""Lesson 07 executes in the quick preset and its measurements show the effects it teaches."""
import pytest
import torch
from support import recorded_claims

from tlkit.claims import SUPPORTED

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def m(lesson_metrics):
    return lesson_metrics("07")


def test_fp16_accumulation_stalls_and_stochastic_rounding_does_not(m):
    # 1e-4 added n times: round-to-nearest fp16 sticks at 0.25 (n * 1e-4 >= 1 in both presets)
    assert m["fp16_sum_rel_error_nearest"] <= -0.7
    assert abs(m["fp16_sum_rel_error_stochastic"]) < 0.03
    assert m["fp16_sum_rel_error_one_chain_std"] < 0.05


def test_loss_scaling_rescues_underflowing_gradients(m):
    assert m["fp16_grad_underflow_scaled"] < m["fp16_grad_underflow_unscaled"]
    assert m["fp16_grad_underflow_scaled"] < 0.001


def test_mixed_precision_table(m):
    configs = {row["config"] for row in m["amp_table"]}
    assert {"fp32", "fp32 + channels_last"} <= configs
    assert all(0 <= row["val_acc"] <= 1 and row["step_s"] > 0 for row in m["amp_table"])
    assert 0.3 < m["activation_memory_ratio"] < 0.8  # 16-bit activations, some layers stay fp32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_autocast_is_faster_on_a_gpu(m):
    assert m["amp_speedup"] > 1
    assert m["amp_memory_ratio"] < 1


def test_verdict_contract(m):
    """One verdict per claim of the lesson, each the one its own interval implies."""
    entries = recorded_claims(m, [25, 26, 27, 28, 29])
    # a mechanism, exact by design: DDP's averaged gradients equal one process with the whole batch
    assert entries[29]["verdict"] == SUPPORTED
    assert m["ddp_gradient_match"]["matches"] == m["ddp_gradient_match"]["entries"]


def test_fft_convolution_equals_conv2d_in_the_lesson(m):
    assert m["fft_max_abs_error"] < 1e-4
    assert [row["kernel"] for row in m["fft_sweep"]] == [3, 7, 13, 21]
    assert [row["im2col bytes / input bytes"] for row in m["fft_sweep"]] == [9.0, 49.0, 169.0, 441.0]


def test_fp16_training_variants_all_ran(m):
    variants = [row["variant"] for row in m["fp16_training"]]
    assert variants[0] == "fp32" and len(variants) == 5
    assert all(row["low"] <= row["loss - fp32"] <= row["high"] for row in m["fp16_training"])


def test_loading_steps_ranked(m):
    assert sorted(row["step"] for row in m["stage_ranking"]) == ["collate", "copy", "decode", "resize"]
    assert [row["rank"] for row in m["stage_ranking"]] == [1, 2, 3, 4]


def test_throughput_table_shape(m):
    by_workers = m["throughput_by_workers"]
    assert len(by_workers) == 3
    assert all({"0", "1", "2"} <= set(v) for v in by_workers.values())
    assert by_workers["(a) JPEG folder"]["0"] == m["throughput_jpeg"]


def test_bottleneck_report(m):
    report = m["bottleneck"]
    assert {"JPEG, head only", "JPEG, head only, 2 workers", "memmap, head only"} <= set(report)
    assert all(r["limited_by"] in {"data", "compute"} for r in report.values())
    assert all((r["limited_by"] == "data") == (r["data_fraction"] > 0.5) for r in report.values())


def test_im2col(m):
    assert m["im2col_max_abs_error"] < 1e-4
    assert m["im2col_memory_factor"] == pytest.approx(9.0)  # 3x3, stride 1, same padding
    assert m["params_7x7_vs_3x3_stack"] == [49 * 64 * 64, 27 * 64 * 64]
    assert m["bottleneck_1x1_mult_ratio"] == pytest.approx(120_422_400 / 12_443_648)


def test_quick_preset_fits_in_binder_memory(m, lesson_result):
    assert lesson_result("07").peak_mb < 2048


def test_a_folder_of_5000_images_is_limited_to_the_presets_images(big_folder, run_on_folder):
    """4,000 training / 1,000 validation images: the fine-tunes and section 3's stores use the stated 250 / 160."""
    result, text = run_on_folder("07", big_folder)
    assert "has 4,000 training / 1,000 validation images; using a seeded, stratified 250 / 160" in text
    assert "train 250, val 160)" in text
    assert result.peak_mb < 1536   # memory follows the limits, not the folder
