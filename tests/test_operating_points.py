"""Operating points: each floor holds on the deciding set with the other rate as high as it allows,
export measures every point on every set, and ``predict --operating-point`` uses one (an unknown
name stops with one line before any image is read; older exports know ``balanced`` only)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from cxr_tune.errors import UserError
from cxr_tune.operating_points import FLOORS, NAMES, choose_points, known_points, threshold_for
from cxr_tune.serving import load_model
from tests.conftest import call_cli
from tests.exports import write_export as tiny_export
from tests.model_exports import export_folder, kermany_set, save_images


def scores_of(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.6).astype(int)
    return labels, 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.6 * (labels - 0.5))))


def rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    called = scores >= threshold
    return float(called[labels == 1].mean()), float(1 - called[labels == 0].mean())


def test_a_point_that_gives_up_the_other_rate_entirely_says_so():
    labels = np.array([0] * 10 + [1] * 10)
    scores = np.r_[np.linspace(0.5, 0.9, 10), np.linspace(0.1, 0.95, 10)]  # the lowest-scored PNEUMONIA is below every NORMAL
    points = choose_points(labels, scores, balanced=0.7)  # at 0.5 the model's own threshold would give up specificity too
    sens, spec = rates(labels, scores, points["sens98"]["threshold"])
    assert sens >= 0.98 and spec == 0.0 and points["sens98"]["gives_up"] == "specificity" and "gives up specificity" in points["sens98"]["rule"]
    assert all("gives_up" not in points[name] for name in ("balanced", "spec90", "spec95") if rates(labels, scores, points[name]["threshold"])[0] > 0)


def test_a_specificity_floor_holds_when_normal_images_tie_at_the_cut():
    # float32 sigmoids saturate: NORMAL images at exactly 0.75 or 1.0 tie with the cut the mirrored problem finds
    labels = np.array([0] * 100 + [1] * 100)
    normal = np.r_[np.linspace(0.01, 0.6, 92), np.full(8, 0.75)]
    for pneumonia in (np.linspace(0.3, 0.999, 100), np.r_[np.linspace(0.3, 0.99, 80), np.full(20, 0.75)]):
        scores = np.r_[normal, pneumonia]
        points = choose_points(labels, scores, balanced=0.5)
        for name in ("spec90", "spec95"):
            assert rates(labels, scores, points[name]["threshold"])[1] >= FLOORS[name][1] and "misses_floor" not in points[name]
    saturated = np.r_[np.linspace(0.01, 0.6, 92), np.full(8, 1.0)]  # nothing in [0, 1] is above a NORMAL image scored 1.0
    points = choose_points(labels, np.r_[saturated, np.r_[np.linspace(0.3, 0.99, 70), np.full(30, 1.0)]], balanced=0.5)
    assert points["spec95"]["threshold"] == 1.0 and points["spec95"]["misses_floor"] == pytest.approx(0.92)
    assert "no threshold keeps it (specificity 0.920" in points["spec95"]["rule"] and "misses_floor" not in points["spec90"]


def test_every_floor_holds_and_the_other_rate_is_the_best_it_allows():
    labels, scores = scores_of()
    points = choose_points(labels, scores, balanced=0.5)
    assert list(points) == list(NAMES) and points["balanced"]["threshold"] == 0.5
    fpr, tpr, _ = roc_curve(labels, scores)
    for name, (rate, floor) in FLOORS.items():
        sens, spec = rates(labels, scores, points[name]["threshold"])
        kept, other = (sens, spec) if rate == "sensitivity" else (spec, sens)
        assert kept >= floor and points[name]["floor"] == {rate: floor}
        # No cut of the ROC curve keeps the floor with a better other rate (this model is below the floor at the crossing).
        best = max((1 - f) if rate == "sensitivity" else t for f, t in zip(fpr, tpr, strict=True) if (t if rate == "sensitivity" else 1 - f) >= floor)
        assert other == pytest.approx(best)
    specificity = [rates(labels, scores, points[name]["threshold"])[1] for name in ("sens90", "sens95", "sens98")]
    assert specificity == sorted(specificity, reverse=True)  # a higher sensitivity floor costs specificity


def test_threshold_for_names_the_known_points_and_an_old_export_has_balanced_only():
    meta = {"threshold": 0.4, "operating_points": {"balanced": {"threshold": 0.4}, "sens95": {"threshold": 0.2}}}
    assert threshold_for(meta, "sens95") == 0.2 and threshold_for(meta, "balanced") == 0.4
    with pytest.raises(UserError, match=r"unknown operating point 'sens99'; this model has balanced, sens95$"):
        threshold_for(meta, "sens99")
    assert known_points({"threshold": 0.3}) == {"balanced": 0.3}


def test_export_measures_every_point_on_every_set_with_intervals(tmp_path):
    meta = export_folder(tmp_path / "model")
    assert meta["operating_points"]["balanced"]["threshold"] == meta["threshold"]
    for key in ("validation", "external", "test"):
        for name, point in meta["operating_points"].items():
            at = meta[key]["operating_points"][name]
            assert at["threshold"] == point["threshold"]
            low, high = at["ci95"]["sensitivity"]
            assert low <= at["sensitivity"] <= high and set(at["ci95"]) == {"sensitivity", "specificity"}
        assert meta[key]["operating_points"]["balanced"]["sensitivity"] == meta[key]["sensitivity"]
    for name, (rate, floor) in FLOORS.items():  # the floors hold on the set that chose them
        assert meta["external"]["operating_points"][name][rate] >= floor


def test_predict_uses_the_chosen_operating_point(tmp_path):
    meta = export_folder(tmp_path / "model")
    folder = save_images(kermany_set(30, 7), tmp_path / "images")
    for name in ("balanced", "sens98", "spec95"):
        done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(folder), "--operating-point", name,
                       "--csv", str(tmp_path / f"{name}.csv"), "--quiet")
        assert done.returncode == 0, done.stderr
        threshold = meta["operating_points"][name]["threshold"]
        assert f"at threshold {threshold:.4f} (operating point {name})" in done.stdout
        frame = pd.read_csv(tmp_path / f"{name}.csv")
        assert (frame["prediction"] == (frame["probability"] >= threshold)).all()
    called = {name: pd.read_csv(tmp_path / f"{name}.csv")["prediction"].sum() for name in ("balanced", "sens98", "spec95")}
    assert called["spec95"] <= called["balanced"] <= called["sens98"] and called["spec95"] < called["sens98"]


def test_an_unknown_point_is_one_line_before_any_image_is_read_and_an_old_export_still_predicts(tmp_path):
    export_folder(tmp_path / "model")
    missing = tmp_path / "no-such-folder"  # were the images read first, this would be the error
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(missing), "--operating-point", "sens99")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: unknown operating point 'sens99'; this model has balanced, sens90, sens95, sens98, spec90, spec95"

    old = tiny_export(tmp_path / "old", image_size=16, threshold=0.3)  # an export from before operating points
    folder = save_images(kermany_set(10, 8), tmp_path / "images")
    done = call_cli("cxr_tune.predict", "--model", str(old), str(folder), "--quiet")
    assert done.returncode == 0 and "at threshold 0.3000 (operating point balanced)" in done.stdout
    done = call_cli("cxr_tune.predict", "--model", str(old), str(folder), "--operating-point", "sens95")
    assert done.returncode == 2 and "this model has balanced" in done.stderr


def test_a_broken_operating_point_in_model_json_names_the_file_and_key(tmp_path):
    folder = tiny_export(tmp_path / "best", operating_points={"sens95": {"threshold": 1.5}})
    with pytest.raises(UserError, match=r"model.json': operating_points.sens95.threshold is 1.5"):
        load_model(folder)
    (folder / "model.json").write_text(json.dumps({**json.loads((folder / "model.json").read_text()), "operating_points": [0.2]}))
    with pytest.raises(UserError, match="operating_points must be an object"):
        load_model(folder)


@pytest.mark.parametrize(("balanced", "given_up"), [(0.0, "specificity"), (1.01, "sensitivity")])
def test_the_model_s_own_threshold_that_calls_every_image_one_class_says_so_as_the_floor_points_do(balanced, given_up):
    """A smoke model's balanced threshold (0.000468) called every image PNEUMONIA, with no note; sens90 at nearly the same cut had one."""
    labels, scores = scores_of(60)
    point = choose_points(labels, scores, balanced=balanced)["balanced"]
    assert point["gives_up"] == given_up and f"gives up {given_up} entirely" in point["rule"]
    assert "gives_up" not in choose_points(labels, scores, balanced=0.5)["balanced"]
