"""Choosing among trials: the balance first, near-ties by validation loss, the Pareto front."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_tune.errors import UserError
from cxr_tune.search.results import pareto_front, ranked_trials, select_best


def table(**columns) -> pd.DataFrame:
    base = {"trial_id": ["a", "b", "c", "d"], "epochs": [5, 5, 5, 0]}
    return pd.DataFrame({**base, **columns})


def test_the_best_balance_wins_when_nothing_is_close():
    trials = table(val_balanced_accuracy=[0.90, 0.95, 0.80, np.nan], val_auc=[0.9, 0.9, 0.9, np.nan], val_loss=[0.2, 0.5, 0.1, np.nan])
    assert select_best(trials, "balanced_accuracy", tolerance=0.005)["trial_id"] == "b"


def test_near_ties_go_to_the_lowest_validation_loss():
    trials = table(val_balanced_accuracy=[0.990, 0.992, 0.960, np.nan], val_auc=[0.999, 0.999, 0.99, np.nan], val_loss=[0.08, 0.15, 0.05, np.nan])
    assert select_best(trials, "balanced_accuracy", tolerance=0.005)["trial_id"] == "a"
    assert select_best(trials, "balanced_accuracy", tolerance=0.0)["trial_id"] == "b"
    assert list(ranked_trials(trials, "balanced_accuracy", 0.005)["trial_id"]) == ["a", "b", "c"]  # d never reported


def test_other_criteria_and_no_results():
    trials = table(val_balanced_accuracy=[0.9, 0.9, 0.9, np.nan], val_min_sens_spec=[0.7, 0.85, 0.8, np.nan],
                   val_auc=[0.9] * 3 + [np.nan], val_loss=[0.3] * 3 + [np.nan])
    assert select_best(trials, "min_sens_spec")["trial_id"] == "b"
    with pytest.raises(UserError, match="no trial has reported"):
        select_best(trials.assign(epochs=0), "balanced_accuracy")


def test_pareto_front_keeps_only_undominated_points():
    sensitivity = np.array([0.99, 0.95, 0.90, 0.94])
    specificity = np.array([0.80, 0.90, 0.95, 0.85])
    assert pareto_front(sensitivity, specificity).tolist() == [True, True, True, False]
