"""Batched, differentiable Grad-CAM as pure functions.

The map is computed with ``torch.autograd.grad(..., create_graph=True)`` on a feature map that is part of the
forward graph (never with hooks), so a loss on the map trains the network that produced it. When the feature map
is the last stage of a network whose head is global average pooling then a linear layer (a ResNet at layer4),
:func:`linear_head_grad_cam` gives the same map in closed form, with no backward pass at all.
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


def linear_head_grad_cam(activations: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps ``[N, h, w]`` of a head ``score = W_c . mean_ij(A) + b``, in closed form.

    There ``d score / d A[k, i, j] = W_c[k] / (h w)`` at every position, so Grad-CAM's channel weights (the
    spatial mean of that gradient) are ``W_c / (h w)``: the same map as :func:`grad_cam`, without the backward
    pass, and differentiable in ``activations`` and ``class_weights`` without double backward.
    ``class_weights``: ``[N, C]``, row i the linear layer's weights of sample i's target class.
    """
    height, width = activations.shape[-2:]
    return F.relu(torch.einsum("nc,nchw->nhw", class_weights / (height * width), activations))


def normalize_per_sample(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Min-max normalise each map of ``[N, ...]`` to [0, 1] (a constant map becomes all zeros)."""
    flat = maps.flatten(1)
    low, high = flat.aminmax(dim=1, keepdim=True)  # one reduction kernel for both
    return ((flat - low) / (high - low + eps)).view_as(maps)


def true_class_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logit of each sample's label, ``[N]``."""
    return logits.gather(1, labels.view(-1, 1)).squeeze(1)
