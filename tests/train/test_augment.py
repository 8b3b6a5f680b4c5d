"""Batch augmentation: strength 0 is the identity, otherwise a bounded, shape-keeping change."""

from __future__ import annotations

import pytest
import torch

from cxr_tune.train.augment import Augment


def batch() -> torch.Tensor:
    return torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))


def test_strength_zero_is_the_identity():
    x = batch()
    assert torch.equal(Augment(0.0)(x, torch.Generator().manual_seed(1)), x)


@pytest.mark.parametrize("strength", [0.2, 1.0])
def test_output_is_bounded_same_shape_and_changed(strength):
    x = batch()
    y = Augment(strength)(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(x, y)


def test_stronger_means_further_from_the_input_and_seeds_repeat():
    x = batch()
    weak = (Augment(0.1)(x, torch.Generator().manual_seed(3)) - x).abs().mean()
    strong = (Augment(1.0)(x, torch.Generator().manual_seed(3)) - x).abs().mean()
    assert strong > weak
    assert torch.equal(Augment(0.5)(x, torch.Generator().manual_seed(5)), Augment(0.5)(x, torch.Generator().manual_seed(5)))


def test_horizontal_flip_is_off_by_default_and_can_be_switched_on():
    x = torch.zeros(64, 1, 8, 8)
    x[..., :4] = 1.0  # bright left half, like a heart shadow on one side
    unflipped = Augment(0.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(unflipped, x)
    flipped = Augment(0.0, hflip=True)(x, torch.Generator().manual_seed(0))
    moved = (flipped[..., 4:].mean(dim=(1, 2, 3)) > 0.5).float().mean()
    assert 0.2 < moved < 0.8  # about half the images flipped
