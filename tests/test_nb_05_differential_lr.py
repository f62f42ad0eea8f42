"""Lesson 05 executes in the quick preset: every setting at its own finder's LR over several seeds, the
mechanics of differential rates and of freezing group 0, and the verdicts on claims 18 and 19."""
import math

import pytest

from support import recorded_claims

pytestmark = pytest.mark.notebook

KINDS = ("similar", "dissimilar")
FROZEN0 = "uniform, group 0 frozen"


def test_claims_18_and_19_are_recorded_from_every_seed_and_image(lesson_metrics):
    """Whether the rule's ratio wins, or training group 0 helps, is what the verdicts report: no direction here."""
    m = lesson_metrics("05")
    verdicts = recorded_claims(m, [18, 19])
    seeds, n_val = m["n_seeds"], m["n_val"]
    assert seeds >= 3
    assert verdicts[18]["n"] == n_val["similar"] + n_val["dissimilar"] and verdicts[18]["runs"] == seeds
    assert verdicts[19]["n"] == n_val["dissimilar"] and verdicts[19]["runs"] == seeds
    for row in m["comparisons"]:                      # every pairwise difference carries its own interval
        assert row["low"] <= row["A minus B (points)"] <= row["high"]


def test_every_setting_runs_once_per_seed_at_its_own_finders_lr(lesson_metrics):
    m = lesson_metrics("05")
    assert m["ratio_similar"] == 10 and m["ratio_dissimilar"] == 3  # the notes' rule from the dataset registry
    assert len(m["group_names"]) == 4
    for kind in KINDS:
        assert set(m["acc_by_setting"][kind]) == {"uniform", "3x", "10x", FROZEN0}
        assert all(len(accs) == m["n_seeds"] for accs in m["acc_by_setting"][kind].values())
        for label, lrs in m["group_lrs"][kind].items():
            lr = m["lr_by_setting"][kind]["uniform" if label == FROZEN0 else label]
            assert 1e-7 < lr < 1 and lrs[-1] == pytest.approx(lr, rel=1e-9)   # the head at its own finder's LR
            if label == FROZEN0:
                assert lrs[0] == 0.0 and lrs[1:] == pytest.approx([lr] * 3, rel=1e-9)
                continue
            ratio = 1.0 if label == "uniform" else float(label.rstrip("x"))
            for lower, upper in zip(lrs, lrs[1:]):
                assert upper / lower == pytest.approx(ratio, rel=1e-9)


def test_rates_and_freezing_act_on_the_early_group(lesson_metrics):
    """Mechanics the design fixes: a frozen group does not move; the earliest group's change follows its rate."""
    m = lesson_metrics("05")
    for kind in KINDS:
        change = m["rel_change_by_group"][kind]
        assert all(math.isfinite(c) and c >= 0 for r in change.values() for c in r)
        assert change[FROZEN0][0] == 0.0 and all(c == 0.0 for c in m["first_filter_change"][kind][FROZEN0])
        assert all(c > 0 for c in m["first_filter_change"][kind]["uniform"])
        # 10x steps give the earliest group 1000x less than the head, uniform gives it the head's rate:
        # with Adam (steps of about the rate) it moves far less, whatever the two finders chose
        lr_u, lr_10 = m["lr_by_setting"][kind]["uniform"], m["lr_by_setting"][kind]["10x"]
        if lr_u > 10 * lr_10 / 1000:
            assert change["uniform"][0] > change["10x"][0], kind
        for label, runs in change.items():
            assert runs[-1] > 0, (kind, label)      # the head always trains


def test_accuracies_are_well_above_chance(lesson_metrics):
    m = lesson_metrics("05")
    assert m["acc_head"]["similar"] > 0.75            # 2 classes: chance 0.5
    assert m["acc_head"]["dissimilar"] > 0.4          # 10 digits: chance 0.1
    for kind, chance in (("similar", 0.5), ("dissimilar", 0.1)):
        for label, accs in m["acc_by_setting"][kind].items():
            assert min(accs) > chance + 0.1, (kind, label, accs)


def test_quick_preset_fits_binder(lesson_result):
    assert lesson_result("05").peak_mb < 1536


def test_a_folder_of_5000_images_is_limited_to_the_presets_images(big_folder, run_on_folder):
    result, text = run_on_folder("05", big_folder, param="similar")
    assert "has 4,000 training / 1,000 validation images; using a seeded, stratified 250 / 200" in text
    assert "250 training / 200 validation images" in text
    assert result.peak_mb < 1536
