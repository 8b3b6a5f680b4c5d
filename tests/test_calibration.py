"""Calibration: ECE and Brier agree with scikit-learn, tell a calibrated model from an overconfident
one, and ``export --calibrate`` builds a map into the ONNX file that fixes the probabilities on the
deciding set while the ranking, the AUC and every decision stay as they were."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from cxr_tune import selection
from cxr_tune.calibration import calibration_metrics, expected_calibration_error, fit, reliability
from cxr_tune.serving import load_model, probabilities
from tests.model_exports import export_folder, kermany_set


def honest_and_overconfident(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn with the probabilities ``honest``; ``overconfident`` ranks the same, three times the logit."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, n)
    honest = 1 / (1 + np.exp(-logits))
    labels = (rng.random(n) < honest).astype(int)
    return labels, honest, 1 / (1 + np.exp(-3 * logits))


def test_ece_and_brier_are_scikit_learns_and_separate_an_honest_model_from_an_overconfident_one():
    labels, honest, overconfident = honest_and_overconfident()
    curve = reliability(labels, overconfident)
    observed, predicted = calibration_curve(labels, overconfident, n_bins=10, strategy="uniform")
    assert np.allclose(curve["observed"], observed) and np.allclose(curve["predicted"], predicted) and sum(curve["count"]) == len(labels)
    by_hand = sum(c * abs(o - p) for c, o, p in zip(curve["count"], observed, predicted, strict=True)) / len(labels)
    assert expected_calibration_error(labels, overconfident) == pytest.approx(by_hand)

    good, bad = calibration_metrics(labels, honest), calibration_metrics(labels, overconfident)
    assert bad["brier"] == pytest.approx(brier_score_loss(labels, overconfident))
    assert good["ece"] < 0.03 < 0.1 < bad["ece"] and good["brier"] < bad["brier"]
    for metrics in (good, bad):
        for name in ("ece", "brier"):
            low, high = metrics["ci95"][name]
            assert low <= metrics[name] <= high or name == "ece"  # a bootstrap of ECE is biased upward; its interval may sit above
            assert 0 <= low < high
    assert bad["ci95"]["ece"][0] > good["ci95"]["ece"][1]  # the intervals do not overlap: the difference is real
    assert calibration_metrics(labels, overconfident) == bad  # seeded: the same numbers every time


def test_the_ece_interval_is_the_percentile_bootstrap_of_the_ece_itself():
    labels, _, overconfident = honest_and_overconfident(400)
    rng = np.random.default_rng(1)
    by_hand = [expected_calibration_error(labels[pick], overconfident[pick]) for pick in (rng.integers(0, 400, 400) for _ in range(300))]
    low, high = calibration_metrics(labels, overconfident)["ci95"]["ece"]
    assert low == pytest.approx(np.percentile(by_hand, 2.5), abs=0.01) and high == pytest.approx(np.percentile(by_hand, 97.5), abs=0.01)


def test_the_bootstrap_draws_its_resamples_in_parts_and_gives_the_same_intervals(monkeypatch):
    """It drew all 2000 resamples of every image at once (1.4 GB for 20k images); in parts it holds a
    part's worth, and the seeded draws and intervals are the numbers the one-piece bootstrap gave."""
    labels, _, overconfident = honest_and_overconfident(40)
    assert calibration_metrics(labels, overconfident)["ci95"] == {"ece": [0.15550226391483507, 0.38730946632089663],
                                                                   "brier": [0.14498646832561451, 0.3434898351696196]}
    labels, _, overconfident = honest_and_overconfident(2000)
    whole = calibration_metrics(labels, overconfident)
    monkeypatch.setattr(selection, "BOOTSTRAP_CHUNK_VALUES", 130_000)  # 65 resamples a part; the last one shorter
    tracemalloc.start()
    try:
        in_parts = calibration_metrics(labels, overconfident)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert in_parts == whole
    assert peak < 10e6  # one piece: 128 MB


def test_platt_and_temperature_fix_an_overconfident_model_without_changing_its_ranking():
    labels, honest, overconfident = honest_and_overconfident()
    temperature = fit("temperature", labels, overconfident)
    assert temperature.to_dict()["temperature"] == pytest.approx(3.0, rel=0.1)  # it finds the factor the logits were blown up by
    for method in ("platt", "temperature"):
        calibrated = fit(method, labels, overconfident).apply(overconfident)
        assert expected_calibration_error(labels, calibrated) < 0.03
        assert np.array_equal(np.argsort(calibrated, kind="stable"), np.argsort(overconfident, kind="stable"))
        assert roc_auc_score(labels, calibrated) == pytest.approx(roc_auc_score(labels, overconfident), abs=1e-12)


def test_a_set_that_cannot_calibrate_is_refused():
    with pytest.raises(ValueError, match="both classes"):
        fit("platt", np.ones(10, dtype=int), np.linspace(0.1, 0.9, 10))
    with pytest.raises(ValueError, match="run against the labels"):
        fit("platt", np.array([0, 0, 0, 1, 1, 1]), np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]))


@pytest.mark.parametrize(("method", "scores"), [
    ("platt", [0.1, 0.2, 0.4, 0.4, 0.8, 0.9]),  # a tie at the boundary separates too
    ("platt", [0.55, 0.6, 0.65, 0.7, 0.8, 0.9]),  # Platt's intercept moves the boundary anywhere
    ("temperature", [0.1, 0.2, 0.5, 0.5, 0.8, 0.9]),  # temperature has no intercept: separated at 0.5
])
def test_scores_that_separate_the_classes_are_refused_not_fitted_to_an_arbitrary_map(method, scores):
    """Separated scores have no finite maximum-likelihood map: temperature stopped at its bound (T = exp(-5)) and Platt at
    whatever slope its solver reached, each calling every image 0 or 1, with no word said."""
    with pytest.raises(ValueError, match="separate the classes perfectly"):
        fit(method, np.array([0, 0, 0, 1, 1, 1]), np.array(scores))


def test_a_temperature_is_fitted_to_scores_that_separate_the_classes_away_from_one_half():
    """Every NORMAL image above 0.5 is on the wrong side of a temperature's fixed boundary: the likelihood has a finite best
    temperature, which was refused by the check that is right for Platt (a carved set often separates, at 0.91, say)."""
    fitted = fit("temperature", np.array([0, 0, 0, 1, 1, 1]), np.array([0.55, 0.6, 0.65, 0.7, 0.8, 0.9]))
    assert fitted.method == "temperature" and math.exp(-5) < 1 / fitted.slope < math.exp(5)


def test_a_temperature_at_its_search_bound_is_refused():
    with pytest.raises(ValueError, match="ran to its search bound"):  # scores against the labels: T grows without end
        fit("temperature", np.array([0, 0, 0, 1, 1, 1]), np.array([0.9, 0.8, 0.6, 0.7, 0.2, 0.1]))


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_a_calibrated_export_keeps_its_decisions_and_auc_and_its_onnx_file_says_the_calibrated_probability(tmp_path, method):
    plain = export_folder(tmp_path / "plain")
    calibrated = export_folder(tmp_path / "calibrated", calibrate=method)
    record = calibrated["calibration"]
    assert plain["calibration"] == {"method": "none"} and record["method"] == method and record["fitted_on"] == "external"
    assert record["threshold_uncalibrated"] == pytest.approx(plain["threshold"], abs=1e-12)
    assert method in calibrated["output"]["meaning"] and "re-expressed on the calibrated scale" in calibrated["threshold_rule"]

    from cxr_tune.calibration import Calibration

    mapping = Calibration.from_dict(record)
    assert calibrated["threshold"] == pytest.approx(float(mapping.apply(plain["threshold"])))
    for name, point in calibrated["operating_points"].items():
        assert point["threshold"] == pytest.approx(float(mapping.apply(plain["operating_points"][name]["threshold"])))

    for key, file in (("validation", "val"), ("external", "external"), ("test", "test")):
        before, after = plain[key], calibrated[key]
        assert after["auc"] == pytest.approx(before["auc"], abs=1e-12)  # the ranking is the same
        for rate in ("sensitivity", "specificity", "tp", "fp", "tn", "fn"):
            assert after[rate] == before[rate]  # so is every decision at the re-expressed threshold
        assert after["calibration"]["before"]["ece"] == pytest.approx(before["calibration"]["ece"])
        old, new = (pd.read_csv(tmp_path / folder / f"{file}_predictions.csv") for folder in ("plain", "calibrated"))
        assert (old["prediction"] == new["prediction"]).all()
        assert np.allclose(new["probability"], mapping.apply(old["probability"]), atol=1e-4)
    # Fitted on the external (deciding) set: its probabilities got better there.
    assert calibrated["external"]["loss"] < plain["external"]["loss"] and calibrated["external"]["brier"] < plain["external"]["brier"]
    assert calibrated["external"]["calibration"]["ece"] < plain["external"]["calibration"]["ece"]

    # model.onnx itself outputs the calibrated probability: what predict shows is on the new scale.
    model = load_model(tmp_path / "calibrated")
    images = kermany_set(40, 9).images
    raw = probabilities(load_model(tmp_path / "plain"), images)
    assert np.allclose(probabilities(model, images), mapping.apply(raw), atol=1e-4)
    assert json.loads((tmp_path / "calibrated" / "model.json").read_text())["calibration"]["slope"] == pytest.approx(mapping.slope)


def test_adapting_a_calibrated_model_keeps_the_map_in_the_graph(tmp_path):
    from cxr_tune.adapt import adapt
    from cxr_tune.calibration import Calibration
    from cxr_tune.modelfile import load_members, serving_model, torch_scores
    from tests.model_exports import save_images

    exported = export_folder(tmp_path / "model", calibrate="platt")
    site = kermany_set(24, 4)
    meta = adapt(str(tmp_path / "model"), str(save_images(site, tmp_path / "site")), str(tmp_path / "adapted"), threshold_rule="keep")
    assert meta["threshold"] == exported["threshold"]  # kept, on the calibrated scale it was expressed in
    assert meta["calibration"]["slope"] == exported["calibration"]["slope"] and "before adaptation" in meta["calibration"]["note"]
    raw = torch_scores(serving_model(load_members(str(tmp_path / "adapted"), meta)), site.images)
    calibrated = probabilities(load_model(tmp_path / "adapted"), site.images)
    held = (raw > 1e-5) & (raw < 1 - 1e-5)  # where a float32 probability still holds the digits its logit needs
    assert held.sum() >= 10 and np.allclose(calibrated[held], Calibration.from_dict(meta["calibration"]).apply(raw[held]), atol=1e-4)
    below = raw[:, None] < raw[None, :]  # the order is kept (raw probabilities tied at float32's 1 - 6e-8 may part)
    assert (calibrated[:, None] < calibrated[None, :])[below].all()


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_a_saturated_model_is_calibrated_on_its_exact_logits_and_decides_as_before_at_every_operating_point(tmp_path, method):
    """Gain 600 is gain 60 with every logit ten times larger: most float32 probabilities are exactly 0
    or 1, so only the exact logits can give the map gain 60's divided by ten, and the operating points
    at 0 and 1 have no image on the calibrated scale to map to."""
    from cxr_tune.export import write_export
    from cxr_tune.modelfile import serving_model, torch_scores
    from tests.model_exports import INFO, brightness_members

    sets = {"val": kermany_set(120, 1), "ext": kermany_set(160, 2, pneumonia_share=0.5)}
    fitted = {}
    for gain in (60.0, 600.0):
        meta = write_export(brightness_members(gain), str(tmp_path / f"g{gain:g}"), ["trial_a"], [{"epoch": 2}], sets, "ext", {}, dict(INFO),
                            "/data/site", calibrate=method)
        fitted[gain] = meta["calibration"]
    assert fitted[600.0]["slope"] == pytest.approx(fitted[60.0]["slope"] / 10, rel=1e-3)  # before: 42 % steeper
    assert fitted[600.0]["intercept"] == pytest.approx(fitted[60.0]["intercept"], abs=2e-3)
    before = torch_scores(serving_model(brightness_members(600.0)), sets["ext"].images)
    after = probabilities(load_model(tmp_path / "g600"), sets["ext"].images)
    assert ((before == 0) | (before == 1)).sum() > 50  # saturated
    for name, point in meta["operating_points"].items():
        uncalibrated = fitted[600.0]["operating_points_uncalibrated"][name]
        assert np.array_equal(before >= uncalibrated, after >= point["threshold"]), name  # before: 42 of 160 flipped at sens90


def test_prior_shift_on_a_calibrated_model_starts_from_the_calibration_sets_prevalence(tmp_path):
    from cxr_tune.adapt import probability_prior

    meta = export_folder(tmp_path / "plain")
    calibrated = export_folder(tmp_path / "platt", calibrate="platt")
    assert probability_prior(meta) == pytest.approx(0.5)  # balanced class weights: the loss saw a 50 % prior
    counts = calibrated["external"]["class_counts"]
    assert probability_prior(calibrated) == pytest.approx(counts[1] / sum(counts))  # the map made the probabilities that set's


def test_the_reliability_diagrams_biggest_bins_at_0_and_1_are_whole_discs(tmp_path, monkeypatch):
    """The 493-image bin at (0.975, 1.0) and the 53-image bin at (0.017, 0.0) showed as half and quarter discs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from cxr_tune.calibration import plot_reliability

    axes, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (fig.canvas.draw(), axes.append(fig.axes[0]), save(fig, *args, **kwargs)))
    plot_reliability(tmp_path / "reliability.png", {"carved validation": {"predicted": [0.017, 0.5, 0.975], "observed": [0.0, 0.5, 1.0], "count": [53, 10, 493]}})
    [ax] = axes
    [bins] = ax.collections
    radii = np.sqrt(bins.get_sizes()) / 2 * ax.figure.dpi / 72  # a marker's area is in points squared
    for (x, y), radius in zip(ax.transData.transform(bins.get_offsets()), radii, strict=True):
        assert ax.bbox.x0 <= x - radius and x + radius <= ax.bbox.x1 and ax.bbox.y0 <= y - radius and y + radius <= ax.bbox.y1


def test_fewer_than_ten_images_of_a_class_get_no_calibration_interval_but_the_reason_as_they_get_no_auc_interval():
    """5 NORMAL and 5 PNEUMONIA images printed ECE and Brier with 95 % intervals, in predict and the card, beside AUC [n/a]
    "fewer than 10 of a class": the same few images bound neither (set_metrics' rule, MIN_BOOTSTRAP_CLASS)."""
    from cxr_tune.modelcard import calibration_section
    from cxr_tune.predict import calibration_lines
    from cxr_tune.set_metrics import bootstrap_with_reasons

    labels, scores = np.r_[np.zeros(5), np.ones(5)].astype(int), np.array([0.1, 0.3, 0.5, 0.6, 0.7, 0.4, 0.6, 0.7, 0.8, 0.9])
    few = "5 NORMAL and 5 PNEUMONIA image(s), fewer than 10 of a class"
    assert bootstrap_with_reasons(labels, scores, 0.5)[1]["auc"] == few
    small = calibration_metrics(labels, scores)
    assert small["ece"] == pytest.approx(expected_calibration_error(labels, scores)) and small["brier"] == pytest.approx(brier_score_loss(labels, scores))
    assert small["ci95"] == {"ece": None, "brier": None} and small["ci95_withheld"] == {"ece": few, "brier": few}
    printed = "\n".join(calibration_lines(small))
    assert f"ECE {small['ece']:.4f} [n/a] (10 bins), Brier {small['brier']:.4f} [n/a]" in printed and f"ECE: {few}; Brier: {few}" in printed
    card = "\n".join(calibration_section({"threshold": 0.5, "validation": {"class_counts": [5, 5], "calibration": small}}))
    assert f"| {small['ece']:.4f} [n/a] | {small['brier']:.4f} [n/a] |" in card and f"ECE: {few}; Brier: {few}" in card
    ten = np.r_[np.zeros(10), np.ones(10)].astype(int), np.r_[np.linspace(0.1, 0.7, 10), np.linspace(0.3, 0.9, 10)]
    assert set(calibration_metrics(*ten)["ci95"]) == {"ece", "brier"} and "ci95_withheld" not in calibration_metrics(*ten)


def test_a_set_too_small_or_of_one_class_gets_no_calibration_interval_as_it_gets_no_auc_interval():
    """One image printed ECE 0.9602 [0.960, 0.960]: a zero-width "95 % interval" where AUC and balanced accuracy say n/a."""
    from cxr_tune.predict import calibration_lines
    from cxr_tune.set_metrics import bootstrap_intervals

    one = calibration_metrics(np.array([0]), np.array([0.98]))
    assert one["ece"] == pytest.approx(0.98) and one["ci95"] == {}
    assert "ECE 0.9800 [n/a] (10 bins), Brier 0.9604 [n/a]" in calibration_lines(one)[0]
    one_class = (np.zeros(40, int), np.linspace(0.1, 0.9, 40))
    assert calibration_metrics(*one_class)["ci95"] == {} and "auc" not in bootstrap_intervals(*one_class, 0.5)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    both = calibration_metrics(labels, np.clip(0.5 * labels + rng.uniform(0, 0.5, 40), 0, 1))
    assert set(both["ci95"]) == {"ece", "brier"} and both["ci95"]["ece"][0] < both["ece"] < both["ci95"]["ece"][1]
