"""ALIGN's masker: a lightweight 3-layer CNN that outputs a soft mask in [0, 1] at the input's resolution."""

from __future__ import annotations

import torch
from torch import nn


class Masker(nn.Module):
    """conv3x3-ReLU, conv3x3-ReLU, conv3x3-sigmoid; one output channel, broadcast over the colour channels.

    Padding 1 with stride 1 keeps the input's spatial size. No BatchNorm, so "frozen" is simply no gradient.
    """

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Soft masks ``[N, 1, H, W]`` in [0, 1]."""
        return torch.sigmoid(self.layers(images).float())
