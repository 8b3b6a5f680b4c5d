"""Subgroups the Kermany file names carry, and the model's rate in each.

Kermany names pneumonia files ``personN_bacteria_M.jpeg`` / ``personN_virus_M.jpeg`` and normal
files ``IM-NNNN-MMMM.jpeg`` / ``NORMAL2-IM-NNNN-MMMM.jpeg`` (two batches of normal films); the current
Mendeley download names them ``BACTERIA-<id>-<n>`` / ``VIRUS-<id>-<n>`` / ``NORMAL-<id>-<n>`` (no batch). A model
that finds bacterial pneumonia (dense lobar consolidation) but misses viral (diffuse, subtler), or
clears one batch of normals but not the other, hides that behind one sensitivity and one
specificity. :func:`subgroup_rates` gives sensitivity per pneumonia type and specificity per
normal batch, with counts and 95 % Wilson score intervals (groups are small: a bootstrap of five
detected cases would claim [1, 1]). Data whose names carry no group get None: no table.

    subgroup_rates(["NORMAL/IM-0001-0001.jpeg", "PNEUMONIA/person1_virus_2.jpeg"], [0, 1], [0, 1])
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr_tune.train.metrics import wilson_interval

#: name -> (label the group belongs to, file-name pattern, the rate measured, what people call it)
GROUPS: dict[str, tuple[int, re.Pattern[str], str, str]] = {
    "bacterial": (1, re.compile(r"^(?:person\d+_bacteria_|BACTERIA-\d+-\d+)"), "sensitivity", "bacterial pneumonia"),
    "viral": (1, re.compile(r"^(?:person\d+_virus_|VIRUS-\d+-\d+)"), "sensitivity", "viral pneumonia"),
    "normal_im": (0, re.compile(r"^IM-\d+-\d+"), "specificity", "normal, IM- files"),
    "normal2_im": (0, re.compile(r"^NORMAL2-IM-\d+-\d+"), "specificity", "normal, NORMAL2-IM- files"),
}


def subgroup_of(path: str, label: int) -> str | None:
    """The group of a file (by its name, and only where its label is the group's class), or None."""
    name = re.split(r"[\\/]", str(path))[-1]
    for group, (group_label, pattern, _, _) in GROUPS.items():
        if label == group_label and pattern.match(name):
            return group
    return None


def subgroup_rates(paths: Sequence[str], labels: Sequence[int], predictions: Sequence[int]) -> dict[str, dict[str, Any]] | None:
    """Per group: the rate (sensitivity or specificity), the images and how many were called right,
    with a 95 % Wilson interval; None when no file name carries a group. A group with no image
    has n 0, and no value or interval."""
    labels, predictions = np.asarray(labels).astype(int), np.asarray(predictions).astype(int)
    groups = np.array([subgroup_of(p, int(y)) for p, y in zip(paths, labels, strict=True)], dtype=object)
    if not any(g is not None for g in groups):
        return None
    out = {}
    for group, (group_label, _, rate, description) in GROUPS.items():
        inside = groups == group
        n, correct = int(inside.sum()), int((predictions[inside] == group_label).sum())
        out[group] = {"description": description, "rate": rate, "n": n, "correct": correct,
                      "value": correct / n if n else math.nan, "ci95": wilson_interval(correct, n)}
    return out
