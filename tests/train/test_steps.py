"""The training step's optimizer, built from HParams."""

from __future__ import annotations

import torch

from cxr_tune.train.hparams import HParams
from cxr_tune.train.steps import build_optimizer


def test_sgd_with_momentum_zero_is_plain_sgd_and_nesterov_otherwise():
    model = torch.nn.Linear(2, 1)
    plain = build_optimizer(HParams(optimizer="sgd", momentum=0.0), model)  # torch refuses Nesterov without momentum
    assert plain.param_groups[0]["nesterov"] is False
    assert build_optimizer(HParams(optimizer="sgd", momentum=0.9), model).param_groups[0]["nesterov"] is True
