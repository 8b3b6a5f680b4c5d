"""Per-image intensity normalization, part of the model's input pipeline (and of the export).

X-rays differ in exposure between machines and technicians; normalizing each image on its own
makes brightness and contrast differences matter less. Written with plain tensor ops so that it
runs batched on the GPU in training and traces into the exported ONNX graph unchanged.
"""

from __future__ import annotations

import torch

_BINS = 256


def normalize_intensity(x: torch.Tensor, method: str) -> torch.Tensor:
    """``x``: images ``(B, 1, H, W)`` in [0, 1]. Returns the network's input.

    - ``none``: a fixed affine map to roughly zero mean, unit spread;
    - ``zscore``: each image to zero mean, unit standard deviation;
    - ``equalize``: histogram equalization per image (256 bins), then to [-1, 1].
    """
    if method == "none":
        return (x - 0.5) / 0.25
    if method == "zscore":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / (std + 1e-3)
    if method == "equalize":
        return equalize(x) * 2.0 - 1.0
    raise ValueError(f"unknown intensity normalization {method!r}")


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalization of each image in a batch: pixel value → its empirical CDF in [0, 1]."""
    batch = x.shape[0]
    flat = x.reshape(batch, -1)
    bins = (flat.clamp(0.0, 1.0) * (_BINS - 1)).round().long()
    counts = torch.zeros(batch, _BINS, dtype=x.dtype, device=x.device)
    counts = counts.scatter_add(1, bins, torch.ones_like(flat))
    cdf = counts.cumsum(dim=1)
    occupied = torch.where(cdf > 0, cdf, cdf[:, -1:].expand_as(cdf))
    lowest = occupied.min(dim=1, keepdim=True).values  # CDF at the darkest occupied bin -> 0
    cdf = (cdf - lowest) / (cdf[:, -1:] - lowest).clamp_min(1.0)
    return cdf.gather(1, bins).reshape(x.shape)
