"""Lesson 07 executes in the quick preset and its measurements show the effects it teaches."""
import pytest

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
    if "amp_speedup" in m:  # recorded on a CUDA GPU only; small nets may be launch-bound, so no speed claim
        assert m["amp_speedup"] > 0
        assert m["amp_memory_ratio"] < 1


def test_contiguous_and_resized_sources_beat_decoding_jpegs(m):
    assert m["throughput_memmap"] > 3 * m["throughput_jpeg"]
    assert m["throughput_resized"] > m["throughput_jpeg"]
    by_workers = m["throughput_by_workers"]
    assert len(by_workers) == 3
    assert all({"0", "1", "2"} <= set(v) for v in by_workers.values())
    assert by_workers["(a) JPEG folder"]["0"] == m["throughput_jpeg"]


def test_bottleneck_report(m):
    report = m["bottleneck"]
    assert all(r["limited_by"] in {"data", "compute"} for r in report.values())
    # same model and images: the store removes most of the data wait of decoding JPEGs
    assert report["memmap, head only"]["data_fraction"] < report["JPEG, head only"]["data_fraction"]
    assert report["memmap, head only"]["data_s_per_step"] < report["JPEG, head only"]["data_s_per_step"] / 3


def test_im2col(m):
    assert m["im2col_max_abs_error"] < 1e-4
    assert m["im2col_memory_factor"] == pytest.approx(9.0)  # 3x3, stride 1, same padding
    assert m["im2col_slowdown"] > 0
    assert m["params_7x7_vs_3x3_stack"] == [49 * 64 * 64, 27 * 64 * 64]
    assert m["bottleneck_1x1_mult_ratio"] == pytest.approx(120_422_400 / 12_443_648)


def test_quick_preset_fits_in_binder_memory(m, lesson_result):
    assert lesson_result("07").peak_mb < 2048
