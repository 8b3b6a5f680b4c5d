"""One trial: hyperparameters → CNN, augmentation, loss → Ray Train loop → metrics and checkpoints."""

from cxr_tune.train.hparams import HParams, HParamsError
from cxr_tune.selection import choose_threshold
from cxr_tune.train.metrics import evaluate_scores
from cxr_tune.train.model import PneumoniaCNN, ServingModel, build_model
from cxr_tune.train.trainer import Resources, make_trainer

__all__ = [
    "HParams",
    "HParamsError",
    "PneumoniaCNN",
    "Resources",
    "ServingModel",
    "build_model",
    "choose_threshold",
    "evaluate_scores",
    "make_trainer",
]
