"""Export's metrics stay readable when a metric is undefined (a test split of one class reads n/a), and a
set's objective is measured at the stored threshold, not at the one that set would choose."""

from __future__ import annotations

import json

import numpy as np

from cxr_tune.export import summary
from cxr_tune.set_metrics import held_out_metrics, set_metrics
from cxr_tune.formatting import fmt
from cxr_tune.formatting import json_safe
from cxr_tune.train.hparams import HParams


def test_a_one_class_test_split_gives_na_not_a_crash():
    labels = np.ones(40, dtype=int)
    scores = np.linspace(0.2, 0.9, 40)
    metrics = held_out_metrics(labels, scores, 0.5)
    assert np.isnan(metrics["auc"]) and np.isnan(metrics["specificity"]) and metrics["sensitivity"] > 0
    assert "auc" not in metrics["ci95"] and "sensitivity" in metrics["ci95"]
    meta = {"trial_id": "t1", "epoch": 3, "members": [{}], "threshold": 0.5, "threshold_rule": "rule", "data": {"synthetic": False},
            "validation": {"auc": 0.9, "sensitivity": 0.8, "specificity": 0.7, "balanced_accuracy": 0.75}, "test": metrics}
    text = summary(json.loads(json.dumps(json_safe(meta))), "best")
    assert "AUC n/a" in text and "specificity n/a" in text and "nan" not in text.lower()


def test_fmt_writes_na_for_missing_and_nan():
    assert fmt(None) == fmt(float("nan")) == fmt(float("inf")) == "n/a"
    assert fmt(0.91234) == "0.9123"


def test_a_sets_objective_and_its_interval_are_at_the_stored_threshold():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(100, int), np.ones(100, int)]
    scores = 1 / (1 + np.exp(-(rng.normal(0, 1, 200) + 3 * (labels - 0.5))))
    metrics = set_metrics(labels, scores, 0.8, HParams())  # far from the threshold this set would choose
    assert metrics["threshold"] == 0.8 and metrics["objective"] == metrics["balanced_accuracy"]
    assert metrics["objective_low"] <= metrics["objective"] <= metrics["objective_high"] < 0.85
