"""The ONNX file an export ships: the members' mean probability over uint8 views of each image, and
checked against PyTorch before anything is written."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import cxr_tune.modelfile as modelfile
from cxr_tune.modelfile import Members, build_files, serving_model, torch_scores
from cxr_tune.views import TTA_VIEWS
from tests.model_exports import brightness_members, kermany_set


def two_members() -> Members:
    """Two networks that disagree: the same brightness score at a calibrated and at an overconfident gain."""
    a, b = brightness_members(30.0), brightness_members(90.0)
    return Members(a.nets + b.nets, a.hparams + b.hparams)


def own_scores(members: Members, images: np.ndarray) -> np.ndarray:
    """Each member scored on its own, one row per member."""
    return np.stack([torch_scores(serving_model(Members([net], [hp])), images) for net, hp in zip(members.nets, members.hparams, strict=True)])


def view(images: np.ndarray, zoom: float, dx: float, dy: float, degrees: float) -> np.ndarray:
    """One test-time view as a real image would be: resampled bilinearly (border pixels repeated) and stored as uint8."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[[cos, -sin, 2 * dx], [sin, cos, 2 * dy]]], dtype=torch.float32).expand(len(images), -1, -1)
    x = torch.from_numpy(images[:, None]).float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return np.rint(moved[:, 0].numpy()).clip(0, 255).astype(np.uint8)


def test_an_ensemble_s_onnx_scores_are_the_mean_of_its_members_own_scores():
    members, images = two_members(), kermany_set(40, 0).images
    mine = own_scores(members, images)
    assert np.abs(mine[0] - mine[1]).max() > 0.05  # the members disagree, so the first alone is not the mean
    assert np.allclose(build_files(members).scores(images), mine.mean(axis=0), atol=1e-5)


def test_test_time_views_score_each_view_as_a_uint8_image():
    members, images = two_members(), kermany_set(40, 0).images
    expected = np.mean([own_scores(members, view(images, *v)) for v in TTA_VIEWS], axis=0).mean(axis=0)
    assert np.allclose(build_files(members, len(TTA_VIEWS)).scores(images), expected, atol=1e-4)  # views truncated to uint8 are off by 2e-2


def test_an_export_whose_onnx_scores_drift_from_pytorch_is_refused(monkeypatch):
    members, images = two_members(), kermany_set(10, 0).images
    build_files(members, check_images=images)  # agrees: no complaint
    monkeypatch.setattr(modelfile, "torch_scores", lambda model, images: torch_scores(model, images) + 1e-3)
    with pytest.raises(RuntimeError, match="the ONNX export disagrees with the PyTorch model"):
        build_files(members, check_images=images)
