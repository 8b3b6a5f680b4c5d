"""Bootstrap intervals of a set's metrics: seeded, 95 %, each resample's AUC the ROC curve's area, and drawn in parts
whose size does not change a number."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_tune import selection
from cxr_tune.set_metrics import bootstrap_intervals, bootstrap_with_reasons, held_out_metrics, paired_differences, paired_rate_interval, withheld_line


def scored(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes, so every metric varies between resamples."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.5).astype(int)
    return labels, 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.5 * labels)))


def test_the_intervals_are_the_same_on_every_call():
    labels, scores = scored()
    assert bootstrap_intervals(labels, scores, 0.5) == bootstrap_intervals(labels, scores, 0.5)


def test_the_auc_interval_is_the_95_percent_percentile_bootstrap_of_scikit_learns_auc():
    labels, scores = scored(80)
    scores = np.round(scores, 1)  # ties within and across the classes
    rng = np.random.default_rng(1)
    by_hand = [roc_auc_score(labels[pick], scores[pick]) for pick in (rng.integers(0, len(labels), len(labels)) for _ in range(500))]
    low, high = bootstrap_intervals(labels, scores, 0.5)["auc"]
    assert low == pytest.approx(np.percentile(by_hand, 2.5), abs=0.015) and high == pytest.approx(np.percentile(by_hand, 97.5), abs=0.015)


@pytest.mark.parametrize(("scores", "why"), [(np.r_[np.full(20, 0.2), np.full(20, 0.8)], "every resample gave 1.0000"),
                                             (np.r_[np.full(20, 0.8), np.full(20, 0.2)], "every resample gave 0.0000"),
                                             (np.full(40, 0.5), "every resample gave 0.5000")])
def test_separated_reversed_or_tied_scores_get_no_zero_width_auc_interval_but_the_reason(scores, why):
    """Every resample of them has the same AUC: [1.000, 1.000] read as certainty; it is withheld (None), with why."""
    labels = np.r_[np.zeros(20), np.ones(20)].astype(int)
    metrics = held_out_metrics(labels, scores, 0.5)
    assert metrics["ci95"]["auc"] is None and metrics["ci95_withheld"]["auc"] == why
    assert "sensitivity" in metrics["ci95"] and f"AUC: {why}" in withheld_line(metrics["ci95_withheld"])


def test_fewer_than_ten_images_of_a_class_get_no_bootstrap_interval_whatever_the_seed():
    """1 + 1 images printed [1, 1] or nothing depending on the seed; 15 + 15 separated images printed AUC [1.000, 1.000]."""
    labels, scores = np.array([0, 1]), np.array([0.2, 0.8])
    assert all(bootstrap_with_reasons(labels, scores, 0.5, seed=seed) == (
        {"balanced_accuracy": None, "auc": None}, dict.fromkeys(("balanced_accuracy", "auc"), "1 NORMAL and 1 PNEUMONIA image(s), fewer than 10 of a class"))
        for seed in range(5))
    labels = np.r_[np.zeros(15), np.ones(15)].astype(int)
    ci = held_out_metrics(labels, np.r_[np.linspace(0.1, 0.4, 15), np.linspace(0.6, 0.9, 15)], 0.5)["ci95"]
    assert ci["auc"] is None and ci["balanced_accuracy"] is None and ci["sensitivity"][0] == pytest.approx(0.796, abs=1e-3)
    labels, scores = scored(60)
    assert bootstrap_with_reasons(labels, scores, 0.5)[1] == {}  # overlapping classes: every interval as before


def test_rates_of_counts_get_wilson_intervals_so_a_rate_of_one_is_not_certain():
    """A bootstrap of 20 NORMAL images all called right gave specificity [1.000, 1.000]; Wilson gives [0.839, 1.000]."""
    from cxr_tune.set_metrics import INTERVAL_METHODS, clinical_metrics, held_out_metrics
    from cxr_tune.train.metrics import wilson_interval

    labels = np.r_[np.zeros(20), np.ones(30)].astype(int)
    scores = np.r_[np.full(20, 0.1), np.linspace(0.3, 0.9, 30)]  # every NORMAL right; the PNEUMONIA images below 0.5 missed
    found = int((scores[20:] >= 0.5).sum())
    ci = held_out_metrics(labels, scores, 0.5)["ci95"]
    assert ci["specificity"] == wilson_interval(20, 20) and ci["specificity"][0] == pytest.approx(0.839, abs=1e-3)
    assert ci["sensitivity"] == wilson_interval(found, 30) and ci["accuracy"] == wilson_interval(20 + found, 50)
    assert set(ci) == {"sensitivity", "specificity", "accuracy", "auc", "balanced_accuracy"}  # the other two still bootstrapped
    at = clinical_metrics([f"{i}.png" for i in range(50)], labels, scores, 0.5, {"balanced": {"threshold": 0.5}})["operating_points"]["balanced"]
    assert at["ci95"] == {"specificity": wilson_interval(20, 20), "sensitivity": wilson_interval(found, 30)}
    assert "Wilson score for sensitivity, specificity and accuracy" in INTERVAL_METHODS and "bootstrap for AUC" in INTERVAL_METHODS


def test_the_paired_bootstrap_draws_its_resamples_in_parts_and_gives_the_same_differences(monkeypatch):
    """It drew all 2000 resamples of every image at once, and ranked them per model (2.4 GB for 20k images); in parts it
    holds a part's worth, and the seeded draws and intervals are the numbers the one-piece bootstrap gave."""
    labels, scores = scored(40)
    _, reference = scored(40, seed=1)
    assert paired_differences(labels, scores, 0.5, reference, 0.4) == {
        "auc": (0.20052083333333326, [-0.03385416666666663, 0.43749999999999994]), "sensitivity": (0.0625, [-0.13780952472196384, 0.28328737570298934]),
        "specificity": (0.041666666666666685, [-0.18395411693083277, 0.2622307931905914]), "balanced_accuracy": (0.05208333333333337, [-0.0625, 0.17708333333333337])}
    labels, scores = scored(1000)
    _, reference = scored(1000, seed=1)
    whole = paired_differences(labels, scores, 0.5, reference, 0.4)
    monkeypatch.setattr(selection, "BOOTSTRAP_CHUNK_VALUES", 65_000)  # 65 resamples a part; the last one shorter
    tracemalloc.start()
    try:
        in_parts = paired_differences(labels, scores, 0.5, reference, 0.4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert in_parts == whole
    assert peak < 5e6  # one piece: 118 MB


def table(both: int, mine: int, theirs: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Images called right by both models, by this one only, by the reference only, by neither."""
    return (np.r_[[True] * both, [True] * mine, [False] * theirs, [False] * neither],
            np.r_[[True] * both, [False] * mine, [True] * theirs, [False] * neither])


def newcombe_by_hand(a: int, b: int, c: int, d: int) -> list[float]:
    """Newcombe's method 10 written out from the paper's formulas, with the closed-form Wilson limits (no scipy)."""
    z, n = 1.959963984540054, a + b + c + d

    def wilson(x: int) -> tuple[float, float]:
        p = x / n
        centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return centre - half, centre + half

    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = wilson(a + b), wilson(a + c)
    ad_bc = a * d - b * c
    phi = (ad_bc - n / 2 if ad_bc > n / 2 else min(ad_bc, 0)) / np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    return [p1 - p2 - np.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2),
            p1 - p2 + np.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)]


@pytest.mark.parametrize("cells", [(1, 1, 7, 12), (59, 6, 16, 80), (30, 3, 9, 2)])
def test_a_rate_difference_gets_newcombes_paired_interval(cells):
    """(1, 1, 7, 12): Newcombe's 1998 example (Bentur et al. in Fagerland et al.), -0.2857 [-0.5069, -0.0256]."""
    assert paired_rate_interval(*table(*cells)) == pytest.approx(newcombe_by_hand(*cells), abs=1e-9)
    if cells == (1, 1, 7, 12):
        assert paired_rate_interval(*table(*cells)) == pytest.approx([-0.5069, -0.0256], abs=1e-4)


@pytest.mark.parametrize("flipped", [2, 4])
def test_a_few_images_flipped_one_way_are_no_difference_the_rates_can_show(flipped):
    """117 NORMAL images, ``flipped`` of them called right by one model only: the bootstrap percentile gave 2-0 a lower
    bound of exactly 0.0000 and 4-0 [0.0085, 0.0684], where McNemar's exact p is 0.5 and 0.125."""
    labels = np.r_[np.zeros(117), np.ones(20)].astype(int)
    reference = np.r_[np.full(117 - flipped, 0.2), np.full(flipped, 0.8), np.linspace(0.6, 0.9, 20)]
    scores = np.r_[np.full(117, 0.2), np.linspace(0.6, 0.9, 20)]
    value, (low, high) = paired_differences(labels, scores, 0.5, reference, 0.5)["specificity"]
    assert value == pytest.approx(flipped / 117) and low < 0 < value < high
