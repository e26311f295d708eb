"""DRE (Li et al., CVPR 2023): CE plus DRE's same-class mixup explanation-consistency term."""

from __future__ import annotations

from domainbed_align.methods.hparams import BACKBONE_HPARAMS, MIXUP_HPARAMS
from domainbed_align.methods.registry import register_algorithm
from domainbed_align.methods.trainer import ExplanationGuidedAlgorithm


@register_algorithm(
    hparams=BACKBONE_HPARAMS + MIXUP_HPARAMS,
    paper="Li et al., Are Data-driven Explanations Robust against Out-of-distribution Data?, CVPR 2023",
    reference="tangli-udel/DRE: dre/mixuploss.py, dre/train.py",
    explanation="trains on DRE's Grad-CAM (no ReLU, constant channel weights); evaluate scores Grad-CAM.")
class DRE(ExplanationGuidedAlgorithm):
    """DRE (Li et al., "Are Data-driven Explanations Robust against Out-of-distribution Data?", CVPR 2023;
    ``tangli-udel/DRE``, ``dre/mixuploss.py`` and ``dre/train.py``): CE + lambda_reg * DRE's same-class mixup
    explanation-consistency term, on DRE's training Grad-CAM. ALIGN without its masker and alignment is this.
    """
    explanation_term = "reg"

    uses_gradcam = True
    uses_mixup = True
