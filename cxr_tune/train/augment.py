"""Batch augmentation from one ``augment_strength`` knob, as tensor ops (runs on the GPU if any).

At strength ``s`` each image gets a random affine warp (rotation up to 10°·s, shift up to 8 %·s,
zoom within ±12 %·s), exposure changes (brightness ±0.15·s, contrast ×(1 ± 0.3·s), gamma
×exp(±0.35·s)) and, with ``noise``, Gaussian noise up to 0.03·s. Strength 0 is the identity.
Horizontal flips move the heart to the wrong side, so they are off unless ``hflip`` is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Callable on ``(B, 1, H, W)`` images in [0, 1]; returns a tensor of the same shape in [0, 1]."""

    strength: float
    hflip: bool = False
    noise: bool = True
    max_rotation_deg: float = 10.0
    max_shift: float = 0.08
    max_zoom: float = 0.12
    max_brightness: float = 0.15
    max_contrast: float = 0.3
    max_log_gamma: float = 0.35
    max_noise_std: float = 0.03

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.strength <= 0 and not self.hflip:
            return x
        if self.strength > 0:
            x = self._affine(x, generator)
            x = self._photometric(x, generator)
        if self.hflip:
            flip = _uniform(x, generator, 0.0, 1.0) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x.clamp(0.0, 1.0)

    def _affine(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        s = self.strength
        angle = _uniform(x, generator, -1, 1) * math.radians(self.max_rotation_deg) * s
        zoom = 1.0 + _uniform(x, generator, -1, 1) * self.max_zoom * s
        shift_x = _uniform(x, generator, -1, 1) * self.max_shift * 2 * s  # grid units span 2
        shift_y = _uniform(x, generator, -1, 1) * self.max_shift * 2 * s
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([
            torch.stack([cos, -sin, shift_x], dim=1),
            torch.stack([sin, cos, shift_y], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Border padding repeats the film edge instead of inventing black bars.
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _photometric(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        s = self.strength
        shape = (-1, 1, 1, 1)
        gamma = torch.exp(_uniform(x, generator, -1, 1) * self.max_log_gamma * s).view(shape)
        x = x.clamp_min(1e-6) ** gamma
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        contrast = (1.0 + _uniform(x, generator, -1, 1) * self.max_contrast * s).view(shape)
        brightness = (_uniform(x, generator, -1, 1) * self.max_brightness * s).view(shape)
        x = (x - mean) * contrast + mean + brightness
        if self.noise:
            std = (_uniform(x, generator, 0, 1) * self.max_noise_std * s).view(shape)
            x = x + torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * std
        return x


def _uniform(x: torch.Tensor, generator: torch.Generator | None, low: float, high: float) -> torch.Tensor:
    """One uniform draw per image in the batch."""
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    return low + (high - low) * u
