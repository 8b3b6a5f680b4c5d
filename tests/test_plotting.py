"""Legends never hide what a plot is about: the cases a review found covered, drawn with the package's own functions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the package saves, kept for inspection."""
    figures: list[Figure] = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (figures.append(fig), save(fig, *args, **kwargs)))
    return figures


def covered(fig: Figure) -> list[tuple[str, float, float]]:
    """Data points (of any axes) whose display position lies inside a legend, and legends that stick out of the figure."""
    fig.canvas.draw()
    found = []
    for legend in [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        box = legend.get_window_extent()
        if not fig.bbox.contains(box.x0, box.y0) or not fig.bbox.contains(box.x1 - 1, box.y1 - 1):
            found.append(("legend outside the figure", box.x1, fig.bbox.x1))
        for ax in fig.axes:
            for artist in [*ax.collections, *ax.lines]:
                points = np.asarray(artist.get_offsets() if hasattr(artist, "get_offsets") else artist.get_xydata(), dtype=float)
                if points.ndim == 2 and len(points):
                    found += [(artist.get_label(), x, y) for (x, y), (dx, dy) in zip(points, ax.transData.transform(points), strict=True)
                              if box.x0 <= dx <= box.x1 and box.y0 <= dy <= box.y1]
    return found


def test_the_selected_trial_that_transfers_badly_is_not_under_the_transfer_plots_legend(tmp_path, drawn):
    """The carved pick sits far right and, when it transfers badly, low: where the lower-right legend was."""
    from cxr_tune.search.transfer import plot_transfer

    table = pd.DataFrame({"trial_id": ["a", "b", "c"], "rank": [1, 2, 3], "tied": [True, True, False],
                          "val_balanced_accuracy": [0.736, 0.70, 0.52], "ext_balanced_accuracy": [0.671, 0.714, 0.657],
                          "val_auc": [0.776, 0.74, 0.35], "ext_auc": [0.616, 0.65, 0.695]})
    assert plot_transfer(tmp_path / "transfer.png", table, "external") is None
    assert covered(drawn[-1]) == []


def test_the_transfer_legend_lists_only_markers_that_are_drawn(tmp_path, drawn):
    """With every trial tied, "trial (best epoch)" was listed for a point that does not exist."""
    from cxr_tune.search.transfer import plot_transfer

    table = pd.DataFrame({"trial_id": ["a", "b"], "rank": [1, 2], "tied": True, "val_balanced_accuracy": [0.7, 0.6],
                          "ext_balanced_accuracy": [0.6, 0.7], "val_auc": [0.7, 0.6], "ext_auc": [0.6, 0.7]})
    plot_transfer(tmp_path / "transfer.png", table, "external")
    legends = [ax.get_legend() for ax in drawn[-1].axes if ax.get_legend()]
    assert {tuple(text.get_text() for text in legend.get_texts()) for legend in legends} == {("tied with the best", "selected")}


@pytest.mark.parametrize(("low", "high"), [(0.977, 0.996), (0.99512, 0.99518), (0.3, 1.0)])
def test_the_transfer_plots_tick_labels_never_run_together(tmp_path, monkeypatch, low, high):
    """On external-v5's trials (carved AUC 0.977-0.996) the AUC panel's x-axis read "0.97750.98000.98250.9850"."""
    from cxr_tune.search.transfer import plot_transfer

    drawn: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: drawn.append(fig))  # laid out and drawn below; no PNG needed
    values = np.linspace(low, high, 25)
    table = pd.DataFrame({"trial_id": [f"t{i}" for i in range(25)], "rank": range(1, 26), "tied": False, "val_auc": values,
                          "ext_auc": values[::-1] * 0.97, "val_balanced_accuracy": values * 0.98, "ext_balanced_accuracy": values * 0.9})
    plot_transfer(tmp_path / "transfer.png", table, "external")
    fig = drawn[-1]
    fig.canvas.draw()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low_limit, high_limit = sorted(axis.get_view_interval())
            labels = [tick.label1 for tick in axis.get_major_ticks() if low_limit <= tick.get_loc() <= high_limit and tick.label1.get_text()]
            boxes = sorted((box.x0, box.x1) if axis is ax.xaxis else (box.y0, box.y1) for box in (label.get_window_extent() for label in labels))
            assert len(boxes) >= 2 and all(end + 4 <= start for (_, end), (start, _) in zip(boxes, boxes[1:])), [label.get_text() for label in labels]
            assert axis.get_offset_text().get_text() == ""  # a value reads as itself, not as "+9.95e-1" plus an offset


def test_specificity_operating_points_are_not_under_the_legend(tmp_path, drawn):
    """spec90 at low false positive rate and low sensitivity was washed out behind a lower-right legend."""
    from cxr_tune.search.report import _plot_operating_points

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(35, int), np.ones(35, int)]
    probability = np.clip(rng.normal(0.55 - 0.1 * labels, 0.2), 0, 1)  # AUC about 0.35, as a one-epoch model: the curve runs low and right
    predictions = pd.DataFrame({"label": labels, "probability": probability})
    rates = {"balanced": {"sensitivity": 0.6, "specificity": 0.6}, "sens90": {"sensitivity": 0.9, "specificity": 0.3},
             "sens95": {"sensitivity": 0.95, "specificity": 0.2}, "sens98": {"sensitivity": 0.98, "specificity": 0.1},
             "spec90": {"sensitivity": 0.171, "specificity": 0.914}, "spec95": {"sensitivity": 0.1, "specificity": 0.957}}
    exported = {"operating_points": {name: {"threshold": 0.5} for name in rates}, "external": {"operating_points": rates}}
    assert _plot_operating_points(tmp_path / "points.png", exported, predictions, "external") is None
    assert covered(drawn[-1]) == []


def test_reliability_bins_in_the_upper_left_are_not_under_the_legend(tmp_path, drawn):
    """After ``--calibrate platt`` (six curves) five bins sat under the upper-left legend."""
    from cxr_tune.calibration import plot_reliability

    curve = {"predicted": [0.05, 0.455, 0.547, 0.95], "observed": [0.1, 0.769, 0.688, 0.9], "count": [10, 5, 5, 10]}
    curves = {name: curve for name in ("carved validation", "carved validation, before calibration", "external validation (selection set)",
                                       "external validation, before calibration", "test", "test, before calibration")}
    plot_reliability(tmp_path / "reliability.png", curves)
    assert covered(drawn[-1]) == []


def test_every_set_in_the_reliability_diagram_is_in_its_legend_even_one_whose_scores_fill_one_bin(tmp_path, drawn):
    """An under-trained model's external and test scores each fell in one bin: two unnamed discs beside a labelled
    curve, and a reader could not tell the selection set's from the test split's."""
    from cxr_tune.calibration import plot_reliability

    curves = {"carved validation": {"predicted": [0.62, 0.74], "observed": [0.7, 0.8], "count": [30, 51]},
              "external validation (selection set)": {"predicted": [0.73], "observed": [0.78], "count": [100]},
              "test": {"predicted": [0.72], "observed": [0.68], "count": [63]}}
    plot_reliability(tmp_path / "reliability.png", curves)
    [legend] = [ax.get_legend() for ax in drawn[-1].axes if ax.get_legend()]
    assert [text.get_text() for text in legend.get_texts()] == ["perfectly calibrated", *curves]


def test_learning_curves_and_the_pareto_front_keep_their_points_clear_of_their_legends(tmp_path, drawn):
    from cxr_tune.search.report import _plot_learning, _plot_pareto

    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.5, 0.452, 0.44], "val_loss": [0.6, 0.61, 0.61], "val_auc": [0.36, 0.335, 0.352],
                            "val_balanced_accuracy": [0.51, 0.52, 0.651]})
    assert _plot_learning(tmp_path / "learning.png", history, "val") is None
    table = pd.DataFrame({"val_sensitivity": [0.9184, 0.97, 0.96], "val_specificity": [0.9453, 0.99, 0.98]})
    assert _plot_pareto(tmp_path / "pareto.png", table, table.iloc[1], "val") is None
    assert [covered(fig) for fig in drawn] == [[], []]


DRAW_EACH_WAY = """
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use(sys.argv[2])
import cxr_tune.search.report as report
from cxr_tune.bench.replay import plot_anytime
from cxr_tune.calibration import plot_reliability
from cxr_tune.saliency import explain_figure, plot_gallery
from cxr_tune.search.transfer import plot_transfer

seen = [matplotlib.get_backend()]
out = Path(sys.argv[1])
image, heat = np.zeros((8, 8), np.uint8), np.ones((8, 8))
curve = {"predicted": [0.2, 0.8], "observed": [0.3, 0.7], "count": [5, 5]}
plot_reliability(out / "reliability.png", {"carved validation": curve})
plot_transfer(out / "transfer.png", pd.DataFrame({"trial_id": ["a", "b"], "rank": [1, 2], "tied": False, "val_auc": [0.7, 0.6],
              "ext_auc": [0.6, 0.7], "val_balanced_accuracy": [0.7, 0.6], "ext_balanced_accuracy": [0.6, 0.7]}), "external")
explain_figure(out / "explain.png", image, heat, "x.png")
plot_gallery(out / "gallery.png", {"mistakes": [(image, heat, "x.png")]})
plot_anytime(out / "anytime.png", {"search": pd.Series([0.5, 0.6], index=[1, 2])}, "anytime")
report._plot_roc(out / "roc.png", pd.DataFrame({"label": [0, 1, 0, 1], "score": [0.1, 0.9, 0.4, 0.6]}), 0.5, "carved validation")
print(seen[0], matplotlib.get_backend(), len(list(out.glob("*.png"))))
"""


def test_drawing_the_packages_figures_from_python_leaves_the_callers_matplotlib_backend_as_it_was(tmp_path):
    """A notebook's predict.main([..., "--explain", D]) switched its backend to Agg for good (matplotlib.use("Agg") at
    report's import and in each plot function), and its own figures stopped showing."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", DRAW_EACH_WAY, str(tmp_path), "svg"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "svg", "6"]  # after report's import, and after each figure was drawn and saved
