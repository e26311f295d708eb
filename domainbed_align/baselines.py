"""The explanation-guided baselines on the shared trainer: SGT and RRR (input gradients), GRADIA and HAICS
(Grad-CAM against annotation masks). DRE and ALIGN are in :mod:`domainbed_align.algorithms`.

Each method is one small class: what it reads from the step (:class:`~domainbed_align.step.StepContext`) and one
pure loss function from :mod:`domainbed_align.losses`. Every difference from its reference code is listed in the
README's table of methods.
"""

from __future__ import annotations

import torch

import domainbed_align.algorithms  # noqa: F401  (TimmERM, DRE, ALIGN register first, whichever is imported first)
from domainbed_align import losses
from domainbed_align.explain import input_gradient_saliency
from domainbed_align.gradcam import normalize_per_sample
from domainbed_align.hparams import (BACKBONE_HPARAMS, GT_MASKS_HPARAM, HParam, choice, log_uniform,
                                     train_cam_hparams)
from domainbed_align.registry import register_algorithm
from domainbed_align.step import StepContext
from domainbed_align.trainer import ExplanationGuidedAlgorithm

Terms = tuple[torch.Tensor | float, dict[str, torch.Tensor | float]]


@register_algorithm(
    hparams=BACKBONE_HPARAMS + (
        HParam("sgt_fraction", float, 0.5, choice(0.1, 0.3, 0.5, 0.7),
               "SGT: share of each image's pixels (lowest saliency) replaced by random values (its experiments: "
               "0.5; its flag's default 0.1).", minimum=0.0, maximum=1.0),
        HParam("lambda_sgt", float, 1.0, log_uniform(-0.5, 0.5),
               "SGT: weight of KL(p(x) || p(x masked)) (its code: 1, fixed).", minimum=0.0),
    ),
    paper="Ismail et al., Improving Deep Learning Interpretability by Saliency Guided Training, NeurIPS 2021",
    reference="ayaabdelsalam91/saliency_guided_training: Scripts/interpretable.py, Scripts/Helper.py",
    explanation="trains on the input-gradient saliency of the true-class logit; evaluate scores Grad-CAM.")
class SGT(ExplanationGuidedAlgorithm):
    """SGT: CE(f(x)) + lambda_sgt * KL(f(x) || f(x~)), where x~ replaces the ``sgt_fraction`` lowest-saliency
    pixels of x (eval-mode signed input gradient of the true-class logit, mean over channels) by uniform noise in
    each channel's range. Both forwards in train mode, separately (each its own BatchNorm statistics), as its code.
    Cost: a saliency pass (forward + backward) and a trained second forward: about 3x ERM.
    """

    def explanation_loss(self, step: StepContext) -> Terms:
        if self.hparams["sgt_fraction"] == 0:  # its code: featuresDroped 0 switches SGT off (plain CE)
            return 0.0, {"sgt_kl": 0.0}
        saliency = input_gradient_saliency(self.classifier, step.images, step.labels)
        masked = losses.saliency_guided_masking(step.images, saliency, self.hparams["sgt_fraction"])
        kl = losses.sgt_kl(step.logits, self.classifier(masked))
        return self.hparams["lambda_sgt"] * kl, {"sgt_kl": kl}


@register_algorithm(
    hparams=BACKBONE_HPARAMS + train_cam_hparams(whose="GRADIA") + (
        GT_MASKS_HPARAM,
        HParam("lambda_gradia", float, 1.0, log_uniform(-1.0, 1.0),
               "GRADIA: weight of L1(Grad-CAM, blurred mask) (its code: 1; --attention_weight is never read).",
               minimum=0.0),
    ),
    paper="Gao et al., Aligning Eyes between Humans and Deep Neural Network through Interactive Attention "
          "Alignment, CSCW 2022 (arXiv 2202.02838)",
    reference="YuyangGao/GRADIA: GRADIA.py",
    explanation="trains on Grad-CAM (no ReLU, constant channel weights, as its code) against the masks; "
                "evaluate scores Grad-CAM.")
class GRADIA(ExplanationGuidedAlgorithm):
    """GRADIA: CE + lambda_gradia * mean |Grad-CAM_y - blur(mask) / max| over the annotated samples."""

    uses_gradcam = True
    uses_gt_masks = True

    def explanation_loss(self, step: StepContext) -> Terms:
        targets = losses.gradia_target(step.annotations_at(step.cams.shape[-2:]))
        l1 = losses.gradia_l1(step.cams, targets, step.annotated)
        return self.hparams["lambda_gradia"] * l1, {"gradia_l1": l1}


@register_algorithm(
    hparams=BACKBONE_HPARAMS + train_cam_hparams(whose="RES's HAICS") + (
        GT_MASKS_HPARAM,
        HParam("lambda_haics", float, 1.0, log_uniform(-1.0, 1.0),
               "HAICS: weight of BCE(Grad-CAM, mask) per annotated sample (RES's code: 1 times the share of labelled "
               "cells in the batch, about the foreground share, a scale we do not copy: 1 here is stronger).",
               minimum=0.0),
    ),
    paper="Shen et al., Human-AI Interactive and Continuous Sensemaking (HAICS), CHI EA 2021; as the BCE mode of "
          "Gao et al., RES: A Robust Framework for Guiding Visual Explanation, KDD 2022",
    reference="YuyangGao/RES: RES.py (--transforms HAICS)",
    explanation="trains on Grad-CAM (no ReLU, constant channel weights, as RES's code) against the masks; "
                "evaluate scores Grad-CAM.")
class HAICS(ExplanationGuidedAlgorithm):
    """HAICS: CE + lambda_haics * BCE(Grad-CAM_y, mask) over the annotated samples."""

    uses_gradcam = True
    uses_gt_masks = True

    def explanation_loss(self, step: StepContext) -> Terms:
        cams = normalize_per_sample(step.raw_cams.float(), eps=1e-6)  # RES: (cam - min) / (max + 1e-6)
        bce = losses.haics_bce(cams, step.annotations_at(cams.shape[-2:]), step.annotated)
        return self.hparams["lambda_haics"] * bce, {"haics_bce": bce}


# dtak/rrr's Decoy MNIST lambda 1000 is on raw 0-255 pixels; on ImageNet-normalised inputs the squared input
# gradient is (255 * std)^2 ~ 3.3e3 times larger, so the same trade-off is lambda ~ 0.3 (README, table of methods).
RRR_DEFAULT_LAMBDA = 0.3


@register_algorithm(
    hparams=BACKBONE_HPARAMS + (
        GT_MASKS_HPARAM,
        HParam("lambda_rrr", float, RRR_DEFAULT_LAMBDA, log_uniform(-1.0, 2.0),
               "RRR: weight of the squared input gradient of sum_k log p_k on the pixels outside the mask "
               "(dtak/rrr's Decoy MNIST 1000, translated to ImageNet-normalised inputs).", minimum=0.0),
    ),
    paper="Ross et al., Right for the Right Reasons: Training Differentiable Models by Constraining their "
          "Explanations, IJCAI 2017",
    reference="dtak/rrr: rrr/multilayer_perceptron.py",
    explanation="trains on the input gradient of sum_k log p_k outside the masks; evaluate scores Grad-CAM.")
class RRR(ExplanationGuidedAlgorithm):
    """RRR: CE + lambda_rrr * || (1 - mask) * d(sum_k log p_k)/dx ||^2 over the annotated samples (a double
    backward: the input gradient keeps its graph). The gradient is of the same train-mode forward as the CE."""

    uses_gt_masks = True
    needs_input_gradient = True

    def explanation_loss(self, step: StepContext) -> Terms:
        masks = step.annotations_at(step.images.shape[-2:]).unsqueeze(1)
        penalty = losses.rrr_penalty(step.input_gradient, masks, step.annotated)
        return self.hparams["lambda_rrr"] * penalty, {"rrr_penalty": penalty}
