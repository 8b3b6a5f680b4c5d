"""The CNN builds for every depth the image allows and refuses the rest."""

from __future__ import annotations

import pytest
import torch

from cxr_tune.train.hparams import HParams, HParamsError
from cxr_tune.train.model import ServingModel, build_model, max_depth


@pytest.mark.parametrize("depth", range(1, max_depth(32) + 1))
def test_every_possible_depth_builds_and_gives_one_logit(depth):
    hp = HParams(image_size=32, depth=depth, filters=4, width_growth=1.5, convs_per_block=2)
    logits = build_model(hp)(torch.randn(3, 1, 32, 32))
    assert logits.shape == (3,)


@pytest.mark.parametrize(("size", "depth"), [(32, 6), (64, 7), (16, 5)])
def test_a_depth_that_shrinks_the_map_below_one_pixel_is_refused(size, depth):
    with pytest.raises(HParamsError, match=rf"depth={depth} would shrink a {size} px image below 1x1"):
        build_model(HParams(image_size=size, depth=depth))


def test_serving_model_takes_uint8_and_returns_probabilities():
    hp = HParams(image_size=32, depth=2, filters=4, intensity="equalize")
    probabilities = ServingModel(build_model(hp), hp.intensity).eval()(torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8))
    assert probabilities.shape == (4,) and bool(((probabilities > 0) & (probabilities < 1)).all())
