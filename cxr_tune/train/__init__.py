"""One trial: hyperparameters → network, augmentation, loss → training step → Ray Train loop → metrics and checkpoints.

Names are imported lazily, so ``cxr_tune.train.hparams`` (a dataclass) can be read without
loading torch, the Ray Train loop or the trainer::

    hparams.HParams        every hyperparameter, checked
    model.build_model      the network (CNN, residual/SE blocks, torchvision ResNet-18/DenseNet-121)
    precision.resolve      the precision and memory layout the step runs in, per device
    steps.train_one_epoch  the training step every path uses (Ray Train, benchmarks, device check)
    trainer.make_trainer   the Ray Train trainer of one configuration
    progress.epoch_lines   a line per epoch on the console for runs no search watches
"""

from cxr_tune.lazy import lazy_exports

_EXPORTS = {
    "HParams": "hparams",
    "HParamsError": "hparams",
    "build_model": "model",
    "ServingModel": "model",
    "evaluate_scores": "metrics",
    "Resources": "trainer",
    "RunOptions": "trainer",
    "make_trainer": "trainer",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
