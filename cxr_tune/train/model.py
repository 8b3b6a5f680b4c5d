"""The CNN: conv blocks (conv, batch norm, ReLU, max-pool), global pooling, dropout, one logit.

:class:`PneumoniaCNN` takes float images ``(B, 1, H, W)`` already normalized;
:class:`ServingModel` wraps it with the input pipeline (uint8 → intensity normalization → logit →
probability) so the exported model needs nothing but decoded, resized pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from cxr_tune.train.hparams import HParams, HParamsError
from cxr_tune.train.intensity import normalize_intensity


def max_depth(image_size: int) -> int:
    """Deepest network whose last feature map is still at least 1x1 (one halving per block)."""
    return max(0, image_size.bit_length() - 1)


class PneumoniaCNN(nn.Module):
    """A plain VGG-style CNN sized by :class:`HParams`; outputs the PNEUMONIA logit ``(B,)``."""

    def __init__(self, hp: HParams) -> None:
        super().__init__()
        if hp.depth > max_depth(hp.image_size):
            raise HParamsError(
                f"depth={hp.depth} would shrink a {hp.image_size} px image below 1x1 "
                f"({hp.image_size}/2^{hp.depth}); use depth <= {max_depth(hp.image_size)} or larger images"
            )
        layers: list[nn.Module] = []
        channels = 1
        for width in hp.widths:
            for _ in range(hp.convs_per_block):
                layers += [
                    nn.Conv2d(channels, width, hp.kernel_size, padding=hp.kernel_size // 2, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(hp.dropout),
            nn.Linear(channels, 1),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


class ServingModel(nn.Module):
    """uint8 grayscale ``(B, 1, H, W)`` → PNEUMONIA probability ``(B,)``; what gets exported."""

    def __init__(self, net: PneumoniaCNN, intensity: str) -> None:
        super().__init__()
        self.net = net
        self.intensity = intensity

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize_intensity(images.float() / 255.0, self.intensity)
        return torch.sigmoid(self.net(x))


def build_model(hp: HParams) -> PneumoniaCNN:
    return PneumoniaCNN(hp)
