"""TimmERM: plain cross-entropy on the shared trainer, the same-backbone reference."""

from __future__ import annotations

from domainbed_align.methods.hparams import BACKBONE_HPARAMS
from domainbed_align.methods.registry import register_algorithm
from domainbed_align.methods.trainer import ExplanationGuidedAlgorithm


@register_algorithm(hparams=BACKBONE_HPARAMS, explanation="trains on no explanation; evaluate scores Grad-CAM.")
class TimmERM(ExplanationGuidedAlgorithm):
    """Plain cross-entropy on the same backbone, input size and trainer as ALIGN: the fair reference."""
