"""One training step's shared quantities, computed once, up front, into an immutable :class:`Step`.

The trainer decides what a method needs from its class (``uses_gradcam``, ``uses_mixup``, ``needs_input_gradient``),
draws DRE's random pairing itself, and calls :func:`compute` inside its autocast: the one forward of the step (the
originals and, for DRE's term, their same-class mixes) through the classifier, with the training Grad-CAM of the true
class where the method reads one, and the input gradient where it reads that. A method's loss then reads the
:class:`Step`'s fields; nothing here calls back into the algorithm. The annotation channel lives in
``Step.annotations``, never in ``Step.images``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from domainbed_align.annotations import MISSING_ANNOTATION
from domainbed_align.methods.backbones import CamClassifier
from domainbed_align.methods.gradcam import normalize_per_sample, zero_map_share


@dataclass(frozen=True)
class Mixup:
    """DRE's same-class mixes of the step's images: x_mix = lam * x + (1 - lam) * x[partners]."""

    partners: torch.Tensor  # [N] index of each sample's same-class partner
    weights: torch.Tensor  # [N] lam
    cams: torch.Tensor | None  # [N, h, w] normalised training Grad-CAMs of the mixes (None without Grad-CAM)
    logits: torch.Tensor  # [N, K]


@dataclass(frozen=True)
class Step:
    """What one classifier step's losses read. Tensors keep their graph (a loss on them trains the classifier).

    A field a method did not ask for is None: ``raw_cams`` / ``cams`` without ``uses_gradcam``, ``mixup`` without
    ``uses_mixup``, ``input_gradient`` without ``needs_input_gradient``, ``annotations`` when the run has no mask
    channel (``annotated`` is then all zeros).
    """

    images: torch.Tensor  # [N, C, H, W] image channels only (a leaf requiring grad with needs_input_gradient)
    labels: torch.Tensor  # [N]
    annotations: torch.Tensor | None  # [N, 1, H, W] masks, MISSING_ANNOTATION where a sample has none
    annotated: torch.Tensor  # [N] float, 1 for samples with a mask
    logits: torch.Tensor  # [N, K] the originals' logits
    raw_cams: torch.Tensor | None  # [N, h, w] the originals' training Grad-CAMs of the true class, not normalised
    cams: torch.Tensor | None  # [N, h, w] the same, min-max normalised per sample
    mixup: Mixup | None
    input_gradient: torch.Tensor | None  # [N, C, H, W] d(sum_k log p_k(x)) / dx with its graph (RRR)

    @property
    def zero_cams(self) -> torch.Tensor:
        """Share of the originals whose standard (ReLU) Grad-CAM is zero everywhere."""
        return zero_map_share(self.raw_cams)

    @property
    def annotated_fraction(self) -> torch.Tensor:
        return self.annotated.mean()

    def annotations_at(self, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """The masks area-averaged to ``size`` (e.g. the Grad-CAM grid), ``[N, h, w]`` in [0, 1]; a sample
        without a mask gets zeros (its loss is weighted out by :attr:`annotated`)."""
        if self.annotations is None:
            return torch.zeros(self.labels.numel(), *size, device=self.labels.device)
        masks = self.annotations.float().clamp(min=0.0)
        return F.adaptive_avg_pool2d(masks, tuple(size)).squeeze(1)


@dataclass(frozen=True)
class TrainingCam:
    """The reading of Grad-CAM a method trains on (hparams ``train_cam_relu``, ``train_cam_weight_gradient``)."""

    relu: bool
    weight_gradient: bool


def compute(classifier: CamClassifier, images: torch.Tensor, labels: torch.Tensor,
            annotations: torch.Tensor | None, *, cam: TrainingCam | None = None,
            mixup_draw: tuple[torch.Tensor, torch.Tensor] | None = None,
            input_gradient: bool = False) -> Step:
    """The :class:`Step` of ``images`` ``[N, C, H, W]`` and ``labels`` ``[N]`` through ``classifier`` (in its current
    mode, under the caller's autocast).

    ``cam``: also the training Grad-CAM of the true class, in that reading. ``mixup_draw`` (partners, lam), drawn by
    the caller: the mixes go through the same forward as the originals. ``input_gradient``: the images become a leaf
    that requires grad before the forward, and the step carries the gradient of the summed log-probabilities.
    """
    n = labels.numel()
    if input_gradient:  # the forward must see a leaf that requires grad
        images = images.detach().requires_grad_(True)
    batch, batch_labels = images, labels
    if mixup_draw is not None:
        partners, weights = mixup_draw
        lam = weights.view(-1, 1, 1, 1).to(images.dtype)
        mixed = lam * images + (1 - lam) * images[partners]
        # One forward over originals and mixes; mixes share their label (same-class pairs).
        batch, batch_labels = torch.cat([images, mixed]), torch.cat([labels, labels])
    if cam is None:
        all_logits, all_raw_cams = classifier(batch), None
    else:
        all_logits, all_raw_cams = classifier.forward_with_cams(batch, batch_labels, relu=cam.relu,
                                                                weight_gradient=cam.weight_gradient)
    logits = all_logits[:n]
    all_cams = None if all_raw_cams is None else normalize_per_sample(all_raw_cams.float())
    mixup = None
    if mixup_draw is not None:
        mixup = Mixup(mixup_draw[0], mixup_draw[1], None if all_cams is None else all_cams[n:], all_logits[n:])
    gradient = None
    if input_gradient:
        log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
        (gradient,) = torch.autograd.grad(log_probs.sum(), images, create_graph=True)
    if annotations is None:
        annotated = torch.zeros(n, device=labels.device)
    else:
        annotated = (annotations.flatten(1).amin(dim=1) > MISSING_ANNOTATION).float()
    return Step(images=images, labels=labels, annotations=annotations, annotated=annotated, logits=logits,
                raw_cams=None if all_raw_cams is None else all_raw_cams[:n],
                cams=None if all_cams is None else all_cams[:n], mixup=mixup, input_gradient=gradient)
