"""Batched, differentiable Grad-CAM as pure functions.

The map is computed with ``torch.autograd.grad`` on a feature map that is part of the forward graph (never with
hooks), so a loss on the map trains the network that produced it. When the feature map is the last stage of a
network whose head is global average pooling then a linear layer (a ResNet at layer4),
:func:`linear_head_grad_cam` gives the same map in closed form, with no backward pass at all.

Two readings of "a loss on Grad-CAM" exist, and both are here:

- **DRE's** (``relu=False, weight_gradient=False``; what ALIGN's codebase trains on): captum's ``LayerGradCam``
  with its defaults, ``sum_k stopgrad(mean_ij dy/dA_k) * A_k`` without ReLU: the channel weights are constants,
  the loss reaches the network through the activations only, and there is no double backward.
- **The standard map, differentiated fully** (``relu=True, weight_gradient=True``): ReLU, and gradients through
  the channel weights as well (a double backward where the closed form does not apply).

Explanations (figures, metrics) always use the standard ReLU map, as DRE evaluates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grad_cam(activations: torch.Tensor, class_scores: torch.Tensor, create_graph: bool = True,
             relu: bool = True, weight_gradient: bool = True) -> torch.Tensor:
    """Grad-CAM maps ``[N, h, w]`` (not normalised).

    ``activations``: the target stage's feature map ``[N, C, h, w]``; ``class_scores``: ``[N]``, sample i's
    score (e.g. its true-class logit) computed from ``activations[i]``. Summing the scores gives every sample's
    gradient in one backward pass; with BatchNorm in training mode the batch statistics couple samples slightly,
    as in every batched Grad-CAM used for training.

    ``create_graph`` False: an explanation (the map still depends on ``activations``, but nothing is kept for a
    loss). With ``create_graph``: ``weight_gradient`` True differentiates through the channel weights (double
    backward); False makes them constants (DRE / captum), keeping the forward graph for the loss that follows.
    ``relu``: the standard map; False leaves the signed map (DRE's training map).
    """
    keep_forward_graph = create_graph and not weight_gradient
    (gradients,) = torch.autograd.grad(class_scores.sum(), activations,
                                       create_graph=create_graph and weight_gradient,
                                       retain_graph=True if keep_forward_graph else None)
    channel_weights = gradients.mean(dim=(2, 3), keepdim=True)  # global-average-pooled gradients
    maps = (channel_weights * activations).sum(dim=1)
    return F.relu(maps) if relu else maps


def linear_head_grad_cam(activations: torch.Tensor, class_weights: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Grad-CAM maps ``[N, h, w]`` of a head ``score = W_c . mean_ij(A) + b``, in closed form.

    There ``d score / d A[k, i, j] = W_c[k] / (h w)`` at every position, so Grad-CAM's channel weights (the
    spatial mean of that gradient) are ``W_c / (h w)``: the same map as :func:`grad_cam`, without the backward
    pass, and differentiable in ``activations`` and ``class_weights`` without double backward.
    ``class_weights``: ``[N, C]``, row i the linear layer's weights of sample i's target class (detach them for
    DRE's reading, where the channel weights carry no gradient). ``relu`` False: the signed map.
    """
    height, width = activations.shape[-2:]
    maps = torch.einsum("nc,nchw->nhw", class_weights / (height * width), activations)
    return F.relu(maps) if relu else maps


def normalize_per_sample(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Min-max normalise each map of ``[N, ...]`` to [0, 1] (a constant map becomes all zeros)."""
    flat = maps.flatten(1)
    # amin and amax, not aminmax: aminmax has no derivative before torch 2.12 (same values, same gradients)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    return ((flat - low) / (high - low + eps)).view_as(maps)


def zero_map_share(raw_maps: torch.Tensor) -> torch.Tensor:
    """Share of maps ``[N, h, w]`` (before normalisation) that the standard ReLU Grad-CAM makes zero everywhere:
    raw maximum <= 0, with or without a ReLU applied already."""
    return (raw_maps.detach().flatten(1).amax(dim=1) <= 0).float().mean()


def true_class_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logit of each sample's label, ``[N]``."""
    return logits.gather(1, labels.view(-1, 1)).squeeze(1)
