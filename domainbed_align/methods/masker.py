"""ALIGN's masker: a lightweight 3-layer CNN that outputs a soft mask in [0, 1] at the input's resolution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Masker(nn.Module):
    """conv3x3-ReLU, conv3x3-ReLU, conv3x3, then sigmoid; one output channel, broadcast over colour channels.

    With ``downsample`` d > 1 the layers run on a d-times area-downsampled image and their output is upsampled
    bilinearly before the sigmoid: the mask keeps the input's size, is smooth at the pixel level (which the
    smoothness penalty asks for anyway), sees a d-times larger context and costs about 1/d^2 of the full-
    resolution masker, whose cost at 224 px is a sizeable part of an ALIGN step. No BatchNorm, so "frozen" is
    simply "no gradient step".
    """

    def __init__(self, in_channels: int, width: int = 16, downsample: int = 1) -> None:
        super().__init__()
        self.downsample = downsample
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Soft masks ``[N, 1, H, W]`` in [0, 1]."""
        size = images.shape[-2:]
        if self.downsample > 1:
            small = tuple(math.ceil(side / self.downsample) for side in size)
            logits = F.interpolate(self.layers(F.adaptive_avg_pool2d(images, small)), size=size,
                                   mode="bilinear", align_corners=False)
        else:
            logits = self.layers(images)
        return torch.sigmoid(logits.float())
