"""Explanation-quality metrics, as pure functions of a model, images, saliency maps and classes.

The paper reports three (``align-method.md``):

- **Comprehensiveness** (higher is better, ERASER): how much the class probability drops when the top-k% most
  salient pixels are removed, averaged over the fractions k.
- **Sufficiency** (lower is better, ERASER): how much it drops when *only* the top-k% pixels are kept.
- **Insertion AUC** (higher is better, DRE's evaluation, after RISE): start from a blurred copy of the image, put
  the original pixels back in order of decreasing saliency, and integrate the class probability over the fraction
  inserted (trapezoid rule on [0, 1]).

Choices, the same for all three so they measure one thing:

- "Removed" pixels take the value of a blurred copy of the image (:func:`blurred`: Gaussian, 11 px, sigma 5, as
  DRE's insertion game), on all channels of a pixel at once. Pass ``substrate`` to use another (e.g. zeros: the
  dataset's mean colour for ImageNet-normalised inputs).
- Saliency maps of any resolution are upsampled bilinearly to the image size before pixels are ranked. Equal
  saliency says nothing about order: ties are broken in one fixed pseudo-random pixel order (:func:`tie_order`), so
  an all-zero map (Grad-CAM's ReLU can zero a whole map) or a map's flat zero region is inserted in scattered order
  and scores like a random map, instead of favouring the image's top rows (index order) or bottom rows (DRE's
  reversed argsort).
- The probability is the softmax probability of ``classes`` (one class per image). DRE's script explains the true
  class but tracks the predicted one; here one class is both explained and tracked (the caller chooses which).
- ``DEFAULT_FRACTIONS`` are ERASER's bins (1, 5, 10, 20, 50 %); ``INSERTION_STEPS`` = 28 is DRE's (224·8 pixels
  per step at 224 px).

Every function returns one value per image (``[N]``, or ``[N, steps + 1]`` for the curve): average them over a
dataset. ``predict`` maps images to logits and is called without gradients; put the model in eval mode first.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from domainbed_align.errors import MetricInputError

Predict = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)
INSERTION_STEPS = 28
BLUR_KERNEL_SIZE = 11
BLUR_SIGMA = 5.0


def blurred(images: torch.Tensor, kernel_size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Each channel convolved with a normalised Gaussian (reflected at the borders, so a constant image stays
    constant): the substrate "removed" pixels take."""
    radius = kernel_size // 2
    offsets = torch.arange(kernel_size, dtype=torch.float32, device=images.device) - radius
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    # Separable: rows then columns, one depthwise convolution each.
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, kernel_size), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, kernel_size, 1), groups=channels)


def tie_order(pixels: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed pseudo-random order (a permutation of ``range(pixels)``, seed 0) in which equally salient pixels
    are ranked; the same for every image and call."""
    return torch.randperm(pixels, generator=torch.Generator().manual_seed(0)).to(device)


def saliency_ranks(saliency: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[N, H*W]`` rank of each pixel of an ``H x W`` image (0 = most salient) after upsampling ``saliency``
    ``[N, h, w]`` bilinearly to ``size``; ties are ranked in :func:`tie_order`."""
    height, width = size
    maps = saliency.float().unsqueeze(1)
    if tuple(maps.shape[-2:]) != (height, width):
        maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    scrambled = tie_order(height * width, maps.device)
    # A stable sort of the pixels taken in tie order keeps that order among equal values.
    order = scrambled[torch.argsort(maps.flatten(1)[:, scrambled], dim=1, descending=True, stable=True)]
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def class_probability(predict: Predict, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``[N]`` softmax probability of ``classes[i]`` for each image."""
    with torch.no_grad():
        logits = predict(images).float()
    return logits.softmax(dim=1).gather(1, classes.view(-1, 1).to(logits.device, torch.long)).squeeze(1)


def with_top_pixels(images: torch.Tensor, substrate: torch.Tensor, ranks: torch.Tensor,
                    count: int | torch.Tensor) -> torch.Tensor:
    """``images`` where a pixel's rank is below ``count`` (its top-``count`` pixels), ``substrate`` elsewhere."""
    keep = (ranks < count).view(images.shape[0], 1, *images.shape[2:])
    return torch.where(keep, images, substrate)


def comprehensiveness(predict: Predict, images: torch.Tensor, saliency: torch.Tensor, classes: torch.Tensor,
                      fractions: Sequence[float] = DEFAULT_FRACTIONS,
                      substrate: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]`` mean over ``fractions`` of p(x) - p(x without its top-k% pixels). Higher is better."""
    check_settings(fractions=fractions)
    return _fraction_drops(predict, *_prepare(images, saliency, classes, substrate), classes, fractions,
                           kinds=("comprehensiveness",))["comprehensiveness"]


def sufficiency(predict: Predict, images: torch.Tensor, saliency: torch.Tensor, classes: torch.Tensor,
                fractions: Sequence[float] = DEFAULT_FRACTIONS,
                substrate: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]`` mean over ``fractions`` of p(x) - p(only the top-k% pixels of x). Lower is better."""
    check_settings(fractions=fractions)
    return _fraction_drops(predict, *_prepare(images, saliency, classes, substrate), classes, fractions,
                           kinds=("sufficiency",))["sufficiency"]


def insertion_curve(predict: Predict, images: torch.Tensor, saliency: torch.Tensor, classes: torch.Tensor,
                    steps: int = INSERTION_STEPS, substrate: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, steps + 1]`` class probability after inserting ``round(i * H*W / steps)`` pixels, i = 0..steps, in
    order of decreasing saliency into the substrate (column 0: the substrate; the last: the image)."""
    check_settings(steps=steps)
    return _insertion_curve(predict, *_prepare(images, saliency, classes, substrate), classes, steps)


def area_under_curve(curve: torch.Tensor) -> torch.Tensor:
    """``[N]`` trapezoid-rule area of curves ``[N, steps + 1]`` sampled evenly on [0, 1] (DRE's ``auc``)."""
    steps = curve.shape[1] - 1
    return (curve.sum(dim=1) - curve[:, 0] / 2 - curve[:, -1] / 2) / steps


def insertion_auc(predict: Predict, images: torch.Tensor, saliency: torch.Tensor, classes: torch.Tensor,
                  steps: int = INSERTION_STEPS, substrate: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]`` area under :func:`insertion_curve`. Higher is better."""
    return area_under_curve(insertion_curve(predict, images, saliency, classes, steps, substrate))


def explanation_metrics(predict: Predict, images: torch.Tensor, saliency: torch.Tensor, classes: torch.Tensor,
                        fractions: Sequence[float] = DEFAULT_FRACTIONS, steps: int = INSERTION_STEPS,
                        substrate: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All three metrics per image (``[N]`` each), sharing the substrate and the pixel ranking, plus
    ``probability`` (p of the class on the unmodified image)."""
    check_settings(fractions, steps)
    prepared = _prepare(images, saliency, classes, substrate)
    drops = _fraction_drops(predict, *prepared, classes, fractions)
    curve = _insertion_curve(predict, *prepared, classes, steps)
    return {**drops, "insertion_auc": area_under_curve(curve)}


def foreground_mass(saliency: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[N]`` share of each map's mass on the ground-truth foreground ``masks`` ``[N, H, W]`` (1 = foreground),
    after upsampling the map bilinearly to the masks' size; a map that is zero everywhere puts none there (0).
    An uninformative map scores the foreground's share of the image, ``masks.mean((1, 2))``."""
    if not isinstance(saliency, torch.Tensor) or not isinstance(masks, torch.Tensor) or saliency.dim() != 3 \
            or masks.dim() != 3 or saliency.shape[0] != masks.shape[0]:
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (saliency, masks)]
        raise MetricInputError(f"saliency [N, h, w] and masks [N, H, W] need one map and one mask per image; got "
                               f"{shapes[0]} and {shapes[1]}.")
    maps = F.interpolate(saliency.float().unsqueeze(1), size=tuple(masks.shape[-2:]), mode="bilinear",
                         align_corners=False).squeeze(1).clamp(min=0)
    total = maps.flatten(1).sum(1)
    on_foreground = (maps * masks.to(maps)).flatten(1).sum(1)
    return torch.where(total > 0, on_foreground / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)


def has_ground_truth(environment: object) -> bool:
    """Whether a dataset environment gives ground-truth foreground masks (``environment.mask(i)``, float
    ``[1, H, W]``: our TextureMNIST datasets). Not the mask channel (:mod:`domainbed_align.annotations`): the report
    commands build datasets without it and read the ground truth from here, for evaluate, figures and mask export."""
    return callable(getattr(environment, "mask", None))


def mask_iou(masks: torch.Tensor, objects: torch.Tensor, threshold: float | None = 0.5) -> torch.Tensor:
    """``[N]`` IoU of soft masks ``[N, H, W]`` in [0, 1] with ground-truth objects ``[N, H, W]`` (1 = object).

    ``threshold`` t: the hard IoU of ``masks > t``; None: the soft IoU ``sum(min(m, o)) / sum(max(m, o))``. Both
    are 1 for a perfect mask; an all-ones mask scores the object's share of the image; an empty prediction of an
    empty object scores 1 (nothing to find, nothing claimed)."""
    if not isinstance(masks, torch.Tensor) or not isinstance(objects, torch.Tensor) or masks.dim() != 3 \
            or masks.shape != objects.shape:
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (masks, objects)]
        raise MetricInputError(f"masks and objects must both be [N, H, W] of one shape; got {shapes[0]} and "
                               f"{shapes[1]}.")
    predicted = (masks > threshold).float() if threshold is not None else masks.float()
    truth = objects.to(predicted)
    intersection = torch.minimum(predicted, truth).flatten(1).sum(1)
    union = torch.maximum(predicted, truth).flatten(1).sum(1)
    return torch.where(union > 0, intersection / union.clamp(min=torch.finfo(union.dtype).tiny), 1.0)


def check_settings(fractions: Sequence[float] = DEFAULT_FRACTIONS, steps: int = INSERTION_STEPS) -> None:
    """One MetricInputError for fractions outside (0, 1] or a step count below 1 (callers check before any work)."""
    fractions = tuple(fractions)
    if not fractions or any(isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1
                            for k in fractions):
        raise MetricInputError(f"fractions must be numbers in (0, 1] (shares of the pixels, e.g. 0.1 for 10 %); "
                               f"got {fractions!r}.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise MetricInputError(f"steps must be a positive integer (insertion steps); got {steps!r}.")


def _fraction_drops(predict: Predict, images: torch.Tensor, substrate: torch.Tensor, ranks: torch.Tensor,
                    classes: torch.Tensor, fractions: Sequence[float],
                    kinds: Sequence[str] = ("sufficiency", "comprehensiveness")) -> dict[str, torch.Tensor]:
    pixels = images.shape[-2] * images.shape[-1]
    counts = [max(1, round(fraction * pixels)) for fraction in fractions]
    # Sufficiency keeps the top pixels (substrate elsewhere); comprehensiveness removes them (substrate there).
    kept_from = {"sufficiency": (images, substrate), "comprehensiveness": (substrate, images)}
    original = class_probability(predict, images, classes)
    drops = {"probability": original}
    for kind in kinds:
        top, rest = kept_from[kind]
        modified = [class_probability(predict, with_top_pixels(top, rest, ranks, count), classes) for count in counts]
        drops[kind] = original - torch.stack(modified, dim=1).mean(dim=1)
    return drops


def _insertion_curve(predict: Predict, images: torch.Tensor, substrate: torch.Tensor, ranks: torch.Tensor,
                     classes: torch.Tensor, steps: int) -> torch.Tensor:
    pixels = images.shape[-2] * images.shape[-1]
    counts = [round(i * pixels / steps) for i in range(steps + 1)]
    return torch.stack([class_probability(predict, with_top_pixels(images, substrate, ranks, count), classes)
                        for count in counts], dim=1)


def _prepare(images: torch.Tensor, saliency: torch.Tensor, classes: torch.Tensor,
             substrate: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the inputs (one clear error each); the images, the substrate and the pixel ranks."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise MetricInputError(f"images must be a tensor [N, C, H, W]; got {got}.")
    n = images.shape[0]
    if not isinstance(saliency, torch.Tensor) or saliency.dim() != 3 or saliency.shape[0] != n:
        got = tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency).__name__
        raise MetricInputError(f"saliency must be a tensor [N, h, w] with one map per image (N = {n}); got {got}. "
                               f"algorithm.explain(images, classes) gives such maps.")
    if not torch.isfinite(saliency).all():
        raise MetricInputError("saliency has NaN or infinite values; the pixels cannot be ranked.")
    if (not isinstance(classes, torch.Tensor) or tuple(classes.shape) != (n,)
            or classes.dtype.is_floating_point or classes.dtype == torch.bool):
        got = f"{tuple(classes.shape)} {classes.dtype}" if isinstance(classes, torch.Tensor) else type(classes).__name__
        raise MetricInputError(f"classes must be an integer tensor [{n}] (the class whose probability is "
                               f"tracked, one per image); got {got}.")
    if substrate is None:
        substrate = blurred(images)
    elif not isinstance(substrate, torch.Tensor) or substrate.shape != images.shape:
        got = tuple(substrate.shape) if isinstance(substrate, torch.Tensor) else type(substrate).__name__
        raise MetricInputError(f"substrate must have the images' shape {tuple(images.shape)}; got {got}.")
    return images, substrate.to(images.dtype), saliency_ranks(saliency.to(images.device), images.shape[-2:])
