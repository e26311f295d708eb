"""Batched, differentiable Grad-CAM as pure functions.

The map is computed with ``torch.autograd.grad(..., create_graph=True)`` on a feature map that is part of the
forward graph (never with hooks), so a loss on the map trains the network that produced it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grad_cam(activations: torch.Tensor, class_scores: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """Grad-CAM maps ``[N, h, w]`` (ReLU, not normalised).

    ``activations``: the target stage's feature map ``[N, C, h, w]``; ``class_scores``: ``[N]``, sample i's
    score (e.g. its true-class logit) computed from ``activations[i]``. Summing the scores gives every sample's
    gradient in one backward pass; with BatchNorm in training mode the batch statistics couple samples slightly,
    as in every batched Grad-CAM used for training.
    """
    (gradients,) = torch.autograd.grad(class_scores.sum(), activations, create_graph=create_graph)
    channel_weights = gradients.mean(dim=(2, 3), keepdim=True)  # global-average-pooled gradients
    return F.relu((channel_weights * activations).sum(dim=1))


def normalize_per_sample(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Min-max normalise each map of ``[N, ...]`` to [0, 1] (a constant map becomes all zeros)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low + eps)).view_as(maps)


def true_class_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logit of each sample's label, ``[N]``."""
    return logits.gather(1, labels.view(-1, 1)).squeeze(1)
