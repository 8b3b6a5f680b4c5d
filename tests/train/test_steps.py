"""The training step's optimizer and learning-rate schedule, built from HParams."""

from __future__ import annotations

import torch

from cxr_tune.train.hparams import HParams
from cxr_tune.train.steps import build_optimizer, build_scheduler, steps_per_epoch, train_one_epoch


def test_sgd_with_momentum_zero_is_plain_sgd_and_nesterov_otherwise():
    model = torch.nn.Linear(2, 1)
    plain = build_optimizer(HParams(optimizer="sgd", momentum=0.0), model)  # torch refuses Nesterov without momentum
    assert plain.param_groups[0]["nesterov"] is False
    assert build_optimizer(HParams(optimizer="sgd", momentum=0.9), model).param_groups[0]["nesterov"] is True


def lr_per_step(hp: HParams, steps_per_epoch: int, epochs: range, resumed_from: tuple[int, int] | None = None) -> list[float]:
    """The rate of every optimizer step in ``epochs``; ``resumed_from`` (steps per epoch, epochs done): first train that
    many epochs at that many steps each, save, and resume from the checkpoint as the loop does."""
    from cxr_tune.train.steps import build_scheduler, resume_scheduler

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(hp, model)
    scheduler = build_scheduler(hp, optimizer, steps_per_epoch)
    if resumed_from:
        saved_steps, done = resumed_from
        old = build_optimizer(hp, torch.nn.Linear(2, 1))
        old_scheduler = build_scheduler(hp, old, saved_steps)
        for _ in range(saved_steps * done):
            old.step()
            old_scheduler.step()
        optimizer.load_state_dict(old.state_dict())
        resume_scheduler(scheduler, old_scheduler.state_dict(), done * steps_per_epoch)
    rates = []
    for _ in range(len(epochs) * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_a_run_resumed_with_another_worker_count_continues_the_schedule_where_its_epochs_left_it():
    # 1 worker then 2 (so half the steps per epoch): before, the resumed run kept the old step count, jumped to the schedule's
    # end and never reached zero; 2 then 1: the rate jumped back up.
    hp = HParams(epochs=6, warmup_epochs=1, lr=0.01)
    for saved_steps, steps in ((9, 9), (9, 4), (4, 9)):
        uninterrupted = lr_per_step(hp, steps, range(6))
        resumed = lr_per_step(hp, steps, range(2, 6), resumed_from=(saved_steps, 2))
        assert resumed == uninterrupted[2 * steps:], (saved_steps, steps)  # bit-identical, not close


def test_a_last_training_batch_of_one_image_is_skipped_and_takes_no_step_of_the_schedule():
    # 2 + 1 images: torchvision's networks at 32-63 px crashed inside Ray on the one ("Expected more than 1 value per
    # channel when training": their last BatchNorm sees a 1x1 map).
    from cxr_tune.train.model import build_model
    from cxr_tune.train.precision import resolve

    hp = HParams(arch="resnet18", image_size=32, batch_size=2, epochs=1, warmup_epochs=0, augment_strength=0.0)
    torch.manual_seed(0)
    model = build_model(hp)
    optimizer = build_optimizer(hp, model)
    scheduler = build_scheduler(hp, optimizer, steps_per_epoch(3, hp.batch_size))
    batches = [{"image": torch.randint(0, 256, (n, 32, 32), dtype=torch.uint8), "label": torch.tensor([0.0, 1.0][:n])} for n in (2, 1)]
    loss, seen = train_one_epoch(model, batches, hp, optimizer, scheduler, torch.tensor(1.0), torch.Generator().manual_seed(0),
                                 resolve("fp32", "cpu", "contiguous"))
    assert seen == 2 and loss > 0
    assert scheduler.last_epoch == steps_per_epoch(3, 2) == 1  # the one step taken ends the schedule: its rate reaches zero
    assert optimizer.param_groups[0]["lr"] == 0.0
    assert [steps_per_epoch(n, 4) for n in (8, 9, 10, 11)] == [2, 2, 3, 3]
    one = HParams(image_size=16, batch_size=1, epochs=1, warmup_epochs=0, augment_strength=0.0)  # every batch one image: each trains
    model = build_model(one)
    optimizer = build_optimizer(one, model)
    scheduler = build_scheduler(one, optimizer, steps_per_epoch(3, one.batch_size))
    batches = [{"image": torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8), "label": torch.tensor([float(i % 2)])} for i in range(3)]
    _, seen = train_one_epoch(model, batches, one, optimizer, scheduler, torch.tensor(1.0), torch.Generator().manual_seed(0),
                              resolve("fp32", "cpu", "contiguous"))
    assert seen == 3 and scheduler.last_epoch == steps_per_epoch(3, 1) == 3
