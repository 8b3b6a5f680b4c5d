"""Operating points: a few named thresholds chosen on the deciding set, for different clinical uses.

``balanced`` is the model's own threshold (``model.json``'s ``threshold``, chosen by the search's
criterion). The others put a floor under one rate and keep the other as high as the floor allows:

- ``sens90`` / ``sens95`` / ``sens98``: sensitivity >= 0.90 / 0.95 / 0.98 (screening: miss few);
- ``spec90`` / ``spec95``: specificity >= 0.90 / 0.95 (confirmation: few false alarms).

Each is :func:`cxr_tune.selection.floor_threshold`: the threshold that keeps the floor with the
other rate as high as it can be. Like every threshold, they are chosen on the deciding set, so
that set's rates at them are selection-set numbers. ``predict --operating-point``
uses one::

    points = choose_points(labels, scores, balanced=0.42)
    threshold_for(meta, "sens95")
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxr_tune.errors import UserError
from cxr_tune.selection import floor_threshold

DEFAULT = "balanced"
#: name -> (rate with a floor, floor); ``balanced`` has none.
FLOORS: dict[str, tuple[str, float]] = {
    "sens90": ("sensitivity", 0.90),
    "sens95": ("sensitivity", 0.95),
    "sens98": ("sensitivity", 0.98),
    "spec90": ("specificity", 0.90),
    "spec95": ("specificity", 0.95),
}
NAMES = (DEFAULT, *FLOORS)


def choose_points(labels: np.ndarray, scores: np.ndarray, balanced: float) -> dict[str, dict[str, Any]]:
    """Every operating point's threshold on ``(labels, scores)`` (the deciding set) and its rule."""
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    points: dict[str, dict[str, Any]] = {DEFAULT: {"threshold": float(balanced), "rule": "the model's threshold (its search criterion)"}}
    _mark_given_up(points[DEFAULT], labels, scores >= balanced, ("specificity", "sensitivity"))  # a search criterion can cut outside every score too
    for name, (rate, floor) in FLOORS.items():
        threshold = floor_threshold(labels, scores, rate, floor)
        points[name] = {"threshold": float(threshold), "floor": {rate: floor},
                        "rule": f"{rate} >= {floor:.2f} on the deciding set, the other rate as high as that allows"}
        other = "specificity" if rate == "sensitivity" else "sensitivity"
        called = scores >= threshold
        kept = (called[labels == 1].mean() if rate == "sensitivity" else 1 - called[labels == 0].mean()) if len(np.unique(labels)) == 2 else floor
        if kept < floor - 1e-12:  # NORMAL images scored exactly 1.0: nothing in [0, 1] is above them
            points[name]["misses_floor"] = float(kept)
            points[name]["rule"] += f"; here no threshold keeps it ({rate} {kept:.3f} at {threshold:g} on the deciding set)"
        _mark_given_up(points[name], labels, called, (other,))  # the floor may cost the other rate entirely
    return points


def _mark_given_up(point: dict[str, Any], labels: np.ndarray, called: np.ndarray, rates: tuple[str, ...]) -> None:
    """Record on ``point`` the first of ``rates`` its threshold gives up entirely on the deciding set
    (every image that rate counts called wrong: it calls every image one class, no use as a decision);
    ``predict`` and the model card say so."""
    for rate in rates:
        right = called[labels == 1] if rate == "sensitivity" else ~called[labels == 0]  # the images the rate counts, called right
        if len(right) and not right.any():
            point["gives_up"] = rate
            point["rule"] += f"; here it gives up {rate} entirely ({rate} 0 on the deciding set)"
            return


def known_points(meta: dict[str, Any]) -> dict[str, float]:
    """``{name: threshold}`` of an export; an export from before operating points has ``balanced`` only."""
    stored = meta.get("operating_points")
    points = {name: float(point["threshold"]) for name, point in stored.items()} if isinstance(stored, dict) else {}
    points[DEFAULT] = float(meta["threshold"])
    return points


def threshold_for(meta: dict[str, Any], name: str) -> float:
    """The threshold of operating point ``name``; :class:`UserError` listing the known ones otherwise."""
    points = known_points(meta)
    if name not in points:
        raise UserError(f"unknown operating point {name!r}; this model has {', '.join(sorted(points, key=_order))}")
    return points[name]


def _order(name: str) -> tuple[int, str]:
    return (NAMES.index(name) if name in NAMES else len(NAMES), name)
