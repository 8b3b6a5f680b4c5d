"""Per-image intensity normalization: exposure differences vanish, order is kept."""

from __future__ import annotations

import torch

from cxr_tune.train.intensity import equalize, normalize_intensity


def test_zscore_removes_brightness_and_contrast_differences():
    x = torch.rand(1, 1, 16, 16)
    darker = x * 0.5 + 0.1
    assert torch.allclose(normalize_intensity(x, "zscore"), normalize_intensity(darker, "zscore"), atol=1e-2)


def test_equalize_spreads_values_over_the_range_and_keeps_their_order():
    x = torch.rand(2, 1, 32, 32) * 0.2 + 0.4  # a low-contrast film
    y = equalize(x)
    assert y.min() == 0.0 and y.max() == 1.0
    order = torch.argsort(x[0].flatten())
    assert bool((y[0].flatten()[order].diff() >= 0).all())
