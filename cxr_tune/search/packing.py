"""How many trials share one GPU by default: small CNN trials leave most of a card idle.

One batch-32 CNN at 64-224 px uses a few hundred MB of an 80-140 GB GPU, and its training step is
bound by kernel launches, not by the card: on an H200 (``python -m cxr_tune.bench gpu``, 2026-12-04,
``results/benchmarks/gpu_h200*/``) one trial's step ran about 4,000-7,000 images/s at every image
size from 64 to 224 px. Several trial processes fill the gaps: 4 at once trained 3.3x one trial's
images/s at 128 px and 1.9x at 224 px, and 6 or 8 at once no more than 4 (+1 % at 128 px, +0.5 % at
224 px; one run each), while each of them trained proportionally slower. So the default share per
trial worker (``--gpus-per-worker`` overrides it) is the most trials that still add throughput, and
it follows the space's largest trial, so every trial of a search gets the same share:

==========================================  ==============  ===================
largest image in the space                  trials per GPU  ``gpus_per_worker``
==========================================  ==============  ===================
<= 256 px                                   4               0.25
larger                                      2               0.5
==========================================  ==============  ===================

and half as many trials per GPU (twice the share) when the space holds a torchvision
architecture (ResNet-18, DenseNet-121), for memory, not speed: on the H200 at 224 px
(``results/benchmarks/gpu_h200_resnet18/``, ``gpu_h200_densenet121/``) 4 packed trials still trained
more than 2 (ResNet-18 2.03x one trial against 1.79x, DenseNet-121 2.84x against 2.12x), but one
DenseNet-121 trial at batch 64 reserved 4,756 MiB in bf16 and 9,220 MiB in fp32, so 4 of them would
leave little of a 24 GB A10G (``cluster.yaml``'s worker) before their CUDA contexts, or overflow it;
on a larger card ``--gpus-per-worker 0.25`` packs 4. A trial with several workers (DDP) is not
packed: each of its workers takes a whole GPU (NCCL refuses two ranks on one device). The check fed images
already on the GPU; a search's trials also spend host time on Ray Data batches, which more trials
per GPU could hide: ``--gpus-per-worker 0.125`` runs 8.
"""

from __future__ import annotations

from cxr_tune.search.space import Space
from cxr_tune.train.hparams import HParams

HEAVY_ARCHITECTURES = ("resnet18", "densenet121")


def trials_per_gpu(largest_image: int, heavy: bool) -> int:
    """The documented rule above.

    >>> trials_per_gpu(64, False), trials_per_gpu(224, False), trials_per_gpu(224, True), trials_per_gpu(512, True)
    (4, 4, 2, 1)
    """
    per_gpu = 4 if largest_image <= 256 else 2
    return max(1, per_gpu // 2) if heavy else per_gpu


def default_gpu_share(space: Space) -> float:
    """``gpus_per_worker`` for every trial of ``space`` (see the module docstring)."""
    return 1.0 / trials_per_gpu(max(space_values(space, "image_size")), any(a in HEAVY_ARCHITECTURES for a in space_values(space, "arch")))


def space_values(space: Space, name: str) -> list:
    """Every value ``name`` can take in ``space``: its choices or bounds, its fixed value, or the default."""
    for param in space.params:
        if param.name == name:
            return list(param.values)
    return [space.fixed.get(name, getattr(HParams(), name))]
