"""The fixed test-time views ``export --tta N`` builds into a model's ONNX graph, torch-free so that a command's
parser can bound ``N`` before anything heavy loads."""

from __future__ import annotations

#: Test-time augmentation views: (zoom, shift x, shift y, rotation in degrees), identity first.
#: Small changes of positioning and scale, the kind a new site's films differ by.
TTA_VIEWS = (
    (1.0, 0.0, 0.0, 0.0),
    (1.08, 0.0, 0.0, 0.0),
    (0.93, 0.0, 0.0, 0.0),
    (1.0, 0.04, 0.0, 0.0),
    (1.0, -0.04, 0.0, 0.0),
    (1.0, 0.0, 0.04, 0.0),
    (1.0, 0.0, -0.04, 0.0),
    (1.0, 0.0, 0.0, 5.0),
    (1.0, 0.0, 0.0, -5.0),
)
