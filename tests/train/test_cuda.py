"""The GPU path, where there is a GPU (skipped cleanly without CUDA; CI has none).

What a GPU search relies on, for the project's CNN and torchvision's ResNet-18 and DenseNet-121
(the ``gpu`` space's architectures): mixed-precision training steps that learn, fp32 scoring on the GPU
that matches the CPU fp32 ONNX export within its tolerance (cuDNN's default TF32 would not), and
``--deterministic`` runs that repeat bit for bit (what "a resumed run continues exactly" needs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_tune.bench.bare import BareRun
from cxr_tune.modelfile import SCORE_TOLERANCE, Members, build_files
from cxr_tune.train.hparams import HParams
from cxr_tune.train.precision import configure_device, resolve

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SIZE = 64


def blobs(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise, with a bright disc on the PNEUMONIA half: learnable in an epoch or two."""
    generator = torch.Generator().manual_seed(0)
    labels = (torch.arange(n) % 2).float()
    images = torch.randint(60, 120, (n, SIZE, SIZE), generator=generator).float()
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = (((yy - 32) ** 2 + (xx - 32) ** 2) < 144).float() * 90
    images = (images + labels[:, None, None] * disc).clamp(0, 255).to(torch.uint8)
    return images.to(device), labels.to(device)


@pytest.mark.parametrize("name", ["bf16", "fp16", "fp32"])
def test_each_precision_trains_on_the_gpu_and_its_scores_match_the_cpu_export(name):
    trains_and_matches_the_cpu_export(HParams(image_size=SIZE, depth=3, filters=8, epochs=3, augment_strength=0.0, lr=3e-3), name)


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_torchvision_architectures_train_in_bf16_on_the_gpu_and_match_the_cpu_export(arch):
    pytest.importorskip("torchvision")
    trains_and_matches_the_cpu_export(HParams(image_size=SIZE, arch=arch, epochs=4, augment_strength=0.0), "bf16")


def trains_and_matches_the_cpu_export(hp: HParams, name: str) -> None:
    device = torch.device("cuda")
    configure_device(device)
    images, labels = blobs(256, device)
    run = BareRun(hp, resolve(name, "cuda"), device, images, labels)
    for _ in range(hp.epochs):
        run.train_epoch()
    pixels = images.cpu().numpy()
    gpu = run.scores(images)  # fp32, TF32 off: what a checkpoint stores
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels.cpu().numpy(), gpu) > 0.95
    net = run.net.cpu().eval().to(memory_format=torch.contiguous_format)
    files = build_files(Members([net], [hp]), check_images=pixels[:32])
    assert np.max(np.abs(files.scores(pixels) - gpu)) < SCORE_TOLERANCE  # export's own check would pass


@pytest.mark.parametrize("arch", ["cnn", "resnet18", "densenet121"])
def test_deterministic_gpu_runs_repeat_bit_for_bit(arch):
    if arch != "cnn":
        pytest.importorskip("torchvision")
    device = torch.device("cuda")
    configure_device(device, deterministic=True)
    try:
        hp = HParams(image_size=SIZE, arch=arch, depth=3, filters=8, epochs=2, augment_strength=0.5)
        images, labels = blobs(128, device)
        weights = []
        for _ in range(2):
            run = BareRun(hp, resolve("bf16", "cuda"), device, images, labels)
            for _ in range(hp.epochs):
                run.train_epoch()
            weights.append({k: v.detach().clone() for k, v in run.net.state_dict().items()})
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    finally:  # a failed run must not leave the later tests in this process on deterministic, unbenchmarked cuDNN
        configure_device(device)
