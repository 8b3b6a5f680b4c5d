"""The Pareto front of trials (selection itself is tested in tests/test_selection.py)."""

from __future__ import annotations

import numpy as np

from cxr_tune.search.results import pareto_front


def test_pareto_front_keeps_only_undominated_points():
    sensitivity = np.array([0.99, 0.95, 0.90, 0.94])
    specificity = np.array([0.80, 0.90, 0.95, 0.85])
    assert pareto_front(sensitivity, specificity).tolist() == [True, True, True, False]
