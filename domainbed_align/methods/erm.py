"""TimmERM: plain cross-entropy on the shared trainer, the same-backbone reference."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from domainbed_align.methods.backbones import eval_mode
from domainbed_align.methods.gradcam import true_class_scores
from domainbed_align.methods.hparams import ALIGN_HPARAMS, BACKBONE_HPARAMS, MIXUP_HPARAMS
from domainbed_align.methods.losses import alignment_bce, masker_loss
from domainbed_align.methods.masker import Masker
from domainbed_align.methods.registry import register_algorithm
from domainbed_align.methods.step import StepContext
from domainbed_align.methods.trainer import ExplanationGuidedAlgorithm, overflow_key


@register_algorithm(hparams=BACKBONE_HPARAMS, explanation="trains on no explanation; evaluate scores Grad-CAM.")
class TimmERM(ExplanationGuidedAlgorithm):
    """Plain cross-entropy on the same backbone, input size and trainer as ALIGN: the fair reference."""
