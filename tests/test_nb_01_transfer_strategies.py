"""Lesson 01 executed in the quick preset: the numbers the issue's "Done when" asks for."""
import pytest

PRETRAINED = ("acc_frozen_head", "acc_precomputed_head", "acc_last_blocks", "acc_full_finetune")
SWEEP_STRATEGIES = {"b: precomputed head", "c: last blocks", "d: full fine-tune"}


@pytest.fixture(scope="module")
def metrics(lesson_metrics):
    return lesson_metrics("01")


@pytest.mark.notebook
def test_pretrained_strategies_are_accurate_and_beat_scratch(metrics):
    for name in PRETRAINED:
        assert metrics[name] >= 0.88, f"{name} = {metrics[name]}"
        assert metrics[name] - metrics["acc_scratch"] >= 0.15, f"{name} vs scratch {metrics['acc_scratch']}"


@pytest.mark.notebook
def test_precomputed_head_matches_frozen_head_and_is_faster(metrics):
    assert abs(metrics["acc_precomputed_head"] - metrics["acc_frozen_head"]) <= 0.02
    assert metrics["precompute_speedup"] > 3  # 5 head epochs, the one-off precompute included
    assert metrics["precompute_speedup_cached"] > metrics["precompute_speedup"]
    assert metrics["precompute_seconds"] > 0
    assert 0 < metrics["precompute_break_even_epochs"] < 5


@pytest.mark.notebook
def test_augmentation_moves_features(metrics):
    assert metrics["augment_feature_spread"] > 0.05


@pytest.mark.notebook
def test_results_table_has_every_strategy(metrics):
    table = {row["strategy"]: row for row in metrics["results"]}
    assert len(table) == 6
    head = table["b: precomputed head"]["trainable_params"]
    assert table["a: frozen head"]["trainable_params"] == head
    assert head < table["c: last blocks"]["trainable_params"] < table["d: full fine-tune"]["trainable_params"]
    assert table["d: full fine-tune"]["trainable_params"] <= table["e: scratch"]["trainable_params"]


@pytest.mark.notebook
def test_accuracy_vs_fraction_table(metrics):
    sweep = metrics["acc_vs_fraction"]
    assert {(r["strategy"], r["fraction"]) for r in sweep} == {
        (s, f) for s in SWEEP_STRATEGIES for f in (0.1, 0.25, 0.5, 1.0)}
    for strategy in SWEEP_STRATEGIES:
        sizes = [r["train_images"] for r in sorted(sweep, key=lambda r: r["fraction"]) if r["strategy"] == strategy]
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert all(0 <= r["acc"] <= 1 for r in sweep)
    assert set(metrics["winners_by_fraction"].values()) <= SWEEP_STRATEGIES


@pytest.mark.notebook
def test_dissimilar_data_and_the_two_by_two_table(metrics):
    other = metrics["dissimilar_acc_vs_fraction"]
    assert {r["strategy"] for r in other} == SWEEP_STRATEGIES and len({r["fraction"] for r in other}) == 2
    advice = metrics["advice_table"]
    assert [(r["data"], r["amount"]) for r in advice] == [
        ("similar", "little"), ("similar", "lots"), ("dissimilar", "little"), ("dissimilar", "lots")]
    assert all(r["measured winner"] in SWEEP_STRATEGIES and r["textbook"] for r in advice)
    chance = 1 / 10  # the dissimilar set has 10 classes
    assert max(r["acc"] for r in other) > chance + 0.3


@pytest.mark.notebook
def test_quick_preset_fits_in_binder_memory(metrics):
    assert metrics["peak_rss_mb"] < 2048
