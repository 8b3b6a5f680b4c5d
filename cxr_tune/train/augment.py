"""Batch augmentation that models acquisition shift, as tensor ops (runs on the GPU if any).

New sites differ from the training population in positioning (scale, crop, rotation, shift),
exposure (brightness, contrast, gamma), sharpness (blur) and detector noise. Each family has its
own maximum (a hyperparameter, so the search can find out which ones transfer), and one
``strength`` in [0, 1] scales them all: at strength ``s`` an image gets a random affine warp
(rotation up to ``rotation``·s degrees, shift up to ``shift``·s of the side, zoom within
±``scale``·s, i.e. a random crop when zooming in), a Gaussian blur of sigma up to ``blur``·s
pixels, gamma ×exp(±``gamma``·s), contrast ×(1 ± ``contrast``·s), brightness ±``brightness``·s
and Gaussian noise of standard deviation up to ``noise``·s. Strength 0 (or every maximum 0) is the
identity. Horizontal flips move the heart to the wrong side, so they are off unless ``hflip``.

The network's input is normalized per image after this (:mod:`cxr_tune.train.intensity`), and
that undoes part of it: ``zscore`` removes any per-image brightness and contrast change (an affine
map of the pixels) but for what clipping at 0 and 1 leaves, and ``equalize`` removes every
increasing map, gamma too (measured on images in [0.2, 0.8] at the defaults: the largest change
after ``zscore`` was 0.0017, against 0.11 before, on 16 random images). So with those intensities ``brightness`` and
``contrast`` (and under ``equalize`` ``gamma``) are all but inert, as the exposure shift they model
is at test time: a search that tunes them tunes little. Blur, noise and the affine warp reach the network.
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
    rotation: float = 10.0
    shift: float = 0.08
    scale: float = 0.12
    blur: float = 0.0
    brightness: float = 0.15
    contrast: float = 0.3
    gamma: float = 0.35
    noise: float = 0.03

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.strength <= 0 and not self.hflip:
            return x
        if self.strength > 0:
            if self.rotation or self.shift or self.scale:
                x = self._affine(x, generator)
            if self.blur:
                x = self._blur(x, generator)
            x = self._photometric(x, generator)
        if self.hflip:
            flip = _uniform(x, generator, 0.0, 1.0) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x.clamp(0.0, 1.0)

    def _affine(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        s = self.strength
        angle = _uniform(x, generator, -1, 1) * math.radians(self.rotation) * s
        zoom = 1.0 + _uniform(x, generator, -1, 1) * self.scale * s
        shift_x = _uniform(x, generator, -1, 1) * self.shift * 2 * s  # grid units span 2
        shift_y = _uniform(x, generator, -1, 1) * self.shift * 2 * s
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([
            torch.stack([cos, -sin, shift_x], dim=1),
            torch.stack([sin, cos, shift_y], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Border padding repeats the film edge instead of inventing black bars.
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _blur(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A separable Gaussian blur with its own sigma per image (one grouped convolution per axis)."""
        batch, channels, height, width = x.shape
        sigma = (_uniform(x, generator, 0, 1) * self.blur * self.strength).clamp_min(1e-3)
        radius = max(1, math.ceil(3 * self.blur * self.strength))
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
        y = F.pad(x.reshape(1, batch * channels, height, width), (radius, radius, radius, radius), mode="replicate")
        y = F.conv2d(y, kernel.view(batch * channels, 1, 1, -1), groups=batch * channels)
        y = F.conv2d(y, kernel.view(batch * channels, 1, -1, 1), groups=batch * channels)
        return y.reshape(batch, channels, height, width)

    def _photometric(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        s = self.strength
        shape = (-1, 1, 1, 1)
        gamma = torch.exp(_uniform(x, generator, -1, 1) * self.gamma * s).view(shape)
        x = x.clamp_min(1e-6) ** gamma
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        contrast = (1.0 + _uniform(x, generator, -1, 1) * self.contrast * s).view(shape)
        brightness = (_uniform(x, generator, -1, 1) * self.brightness * s).view(shape)
        x = (x - mean) * contrast + mean + brightness
        if self.noise:
            std = (_uniform(x, generator, 0, 1) * self.noise * s).view(shape)
            x = x + torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * std
        return x


def augment_for(hp: object) -> Augment:
    """The augmentation a run's :class:`~cxr_tune.train.hparams.HParams` ask for."""
    return Augment(
        hp.augment_strength, hflip=hp.hflip, rotation=hp.aug_rotation, shift=hp.aug_shift, scale=hp.aug_scale,
        blur=hp.aug_blur, brightness=hp.aug_brightness, contrast=hp.aug_contrast, gamma=hp.aug_gamma, noise=hp.aug_noise,
    )


def _uniform(x: torch.Tensor, generator: torch.Generator | None, low: float, high: float) -> torch.Tensor:
    """One uniform draw per image in the batch."""
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    return low + (high - low) * u
