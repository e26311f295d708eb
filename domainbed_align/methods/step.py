"""One classifier step's shared quantities, computed on first use and cached: what methods' losses read.

A method's :meth:`~domainbed_align.methods.trainer.ExplanationGuidedAlgorithm.explanation_loss` asks the
:class:`StepContext` for what it needs (``step.logits``, ``step.cams``, ``step.input_gradient``,
``step.annotations_at(...)``, ...) and the context computes each once, in the one forward the step makes: the
originals (and, for DRE's term, their same-class mixes) through the classifier, with the training Grad-CAM of
the true class where the method reads one. The annotation channel lives here, never in ``step.images``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from domainbed_align.annotations import MISSING_ANNOTATION
from domainbed_align.methods.gradcam import normalize_per_sample, zero_map_share

if TYPE_CHECKING:
    from domainbed_align.methods.trainer import ExplanationGuidedAlgorithm

@dataclass
class Mixup:
    """DRE's same-class mixes of the step's images: x_mix = lam * x + (1 - lam) * x[partners]."""

    partners: torch.Tensor  # [N] index of each sample's same-class partner
    weights: torch.Tensor  # [N] lam
    cams: torch.Tensor | None  # [N, h, w] normalised training Grad-CAMs of the mixes (None without Grad-CAM)
    logits: torch.Tensor  # [N, K]


@dataclass
class _Forward:
    logits: torch.Tensor  # [N (+ N mixes), K]
    raw_cams: torch.Tensor | None  # [N (+ N), h, w] training maps before normalisation


class StepContext:
    """The step's images ``[N, C, H, W]`` (image channels only), labels ``[N]`` and annotations
    ``[N, 1, H, W]`` (None when the run has no mask channel), and everything derived from them on demand."""

    def __init__(self, algorithm: "ExplanationGuidedAlgorithm", images: torch.Tensor, labels: torch.Tensor,
                 annotations: torch.Tensor | None) -> None:
        self.algorithm = algorithm
        if algorithm.needs_input_gradient:  # the forward must see a leaf that requires grad
            images = images.detach().requires_grad_(True)
        self.images = images
        self.labels = labels
        self.annotations = annotations
        self.n = labels.numel()

    @cached_property
    def _forward(self) -> _Forward:
        algorithm = self.algorithm
        batch, batch_labels = self.images, self.labels
        if algorithm.uses_mixup:
            partners, weights = algorithm.sample_mixup(self.labels)
            lam = weights.view(-1, 1, 1, 1).to(self.images.dtype)
            mixed = lam * self.images + (1 - lam) * self.images[partners]
            # One forward over originals and mixes; mixes share their label (same-class pairs).
            batch, batch_labels = torch.cat([self.images, mixed]), torch.cat([self.labels, self.labels])
            self._mixup_draw = (partners, weights)
        if not algorithm.uses_gradcam:
            return _Forward(algorithm.classifier(batch), None)
        logits, raw_cams = algorithm.classifier.forward_with_cams(
            batch, batch_labels, relu=algorithm.hparams["train_cam_relu"],
            weight_gradient=algorithm.hparams["train_cam_weight_gradient"])
        return _Forward(logits, raw_cams)

    @cached_property
    def logits(self) -> torch.Tensor:
        """The originals' logits ``[N, K]``, with their graph."""
        return self._forward.logits[: self.n]

    @property
    def _all_raw_cams(self) -> torch.Tensor:
        """Raw training maps of originals (and mixes)."""
        if self._forward.raw_cams is None:
            raise RuntimeError(f"{type(self.algorithm).__name__} reads Grad-CAMs but does not set uses_gradcam")
        return self._forward.raw_cams

    @cached_property
    def _normalized_cams(self) -> torch.Tensor:
        return normalize_per_sample(self._all_raw_cams.float())

    @cached_property
    def cams(self) -> torch.Tensor:
        """The originals' training Grad-CAMs of the true class, min-max normalised per sample, ``[N, h, w]``."""
        return self._normalized_cams[: self.n]

    @cached_property
    def raw_cams(self) -> torch.Tensor:
        """The originals' training Grad-CAMs before normalisation, ``[N, h, w]`` (for a method's own min-max)."""
        return self._all_raw_cams[: self.n]

    @property
    def zero_cams(self) -> torch.Tensor:
        """Share of the originals whose standard (ReLU) Grad-CAM is zero everywhere."""
        return zero_map_share(self.raw_cams)

    @property
    def mixup(self) -> Mixup:
        if not self.algorithm.uses_mixup:
            raise RuntimeError(f"{type(self.algorithm).__name__} reads DRE's mixes but does not set uses_mixup")
        forward = self._forward
        partners, weights = self._mixup_draw
        cams = self._normalized_cams[self.n:] if forward.raw_cams is not None else None
        return Mixup(partners, weights, cams, forward.logits[self.n:])

    @cached_property
    def input_gradient(self) -> torch.Tensor:
        """d(sum_k log p_k(x)) / dx ``[N, C, H, W]`` with its graph (a loss on it is a double backward): RRR's
        right-reasons gradient. Needs ``needs_input_gradient`` (the images must require grad before the forward)."""
        if not self.images.requires_grad:
            raise RuntimeError(f"{type(self.algorithm).__name__} reads input gradients but does not set "
                               f"needs_input_gradient")
        logits = self.logits
        log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
        (gradient,) = torch.autograd.grad(log_probs.sum(), self.images, create_graph=True)
        return gradient

    # --- annotations ------------------------------------------------------------------------------------
    @cached_property
    def annotated(self) -> torch.Tensor:
        """``[N]`` float, 1 for samples with a mask (none without a mask channel)."""
        if self.annotations is None:
            return torch.zeros(self.n, device=self.labels.device)
        return (self.annotations.flatten(1).amin(dim=1) > MISSING_ANNOTATION).float()

    @property
    def annotated_fraction(self) -> torch.Tensor:
        return self.annotated.mean()

    def annotations_at(self, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """The masks area-averaged to ``size`` (e.g. the Grad-CAM grid), ``[N, h, w]`` in [0, 1]; a sample
        without a mask gets zeros (its loss is weighted out by :attr:`annotated`)."""
        if self.annotations is None:
            return torch.zeros(self.n, *size, device=self.labels.device)
        masks = self.annotations.float().clamp(min=0.0)
        return F.adaptive_avg_pool2d(masks, tuple(size)).squeeze(1)
