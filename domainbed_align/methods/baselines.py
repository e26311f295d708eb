"""The explanation-guided baselines on the shared trainer: SGT and RRR (input gradients), GRADIA, HAICS, RES-G,
RES-L and CARE (Grad-CAM against annotation masks). DRE and ALIGN are in :mod:`domainbed_align.methods.dre` and
:mod:`domainbed_align.methods.align`.

Each method is one small class: what it declares its loss reads (``uses_gradcam``, ``uses_gt_masks``,
``needs_input_gradient``: the trainer computes them once into the step's :class:`~domainbed_align.methods.step.Step`)
and one pure loss function from :mod:`domainbed_align.methods.losses`. Every difference from its reference code is listed in the
README's table of methods.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from domainbed_align.methods import losses
from domainbed_align.methods.explain import input_gradient_saliency
from domainbed_align.methods.gradcam import normalize_per_sample
from domainbed_align.methods.hparams import (ANNOTATION_HPARAMS, BACKBONE_HPARAMS, HParam, choice, log_uniform,
                                     train_cam_hparams)
from domainbed_align.methods.registry import register_algorithm
from domainbed_align.methods.step import Step
from domainbed_align.methods.trainer import ExplanationGuidedAlgorithm, Terms


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
    explanation_term = "sgt_kl"

    def explanation_loss(self, step: Step) -> Terms:
        if self.hparams["sgt_fraction"] == 0:  # its code: featuresDroped 0 switches SGT off (plain CE)
            return 0.0, {"sgt_kl": 0.0}
        saliency = input_gradient_saliency(self.classifier, step.images, step.labels)
        masked = losses.saliency_guided_masking(step.images, saliency, self.hparams["sgt_fraction"])
        kl = losses.sgt_kl(step.logits, self.classifier(masked))
        return self.hparams["lambda_sgt"] * kl, {"sgt_kl": kl}


@register_algorithm(
    hparams=BACKBONE_HPARAMS + train_cam_hparams(whose="GRADIA") + (
        *ANNOTATION_HPARAMS,
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
    explanation_term = "gradia_l1"

    uses_gradcam = True
    uses_gt_masks = True

    def explanation_loss(self, step: Step) -> Terms:
        targets = losses.gradia_target(step.annotations_at(step.cams.shape[-2:]))
        l1 = losses.gradia_l1(step.cams, targets, step.annotated)
        return self.hparams["lambda_gradia"] * l1, {"gradia_l1": l1}


@register_algorithm(
    hparams=BACKBONE_HPARAMS + train_cam_hparams(whose="RES's HAICS") + (
        *ANNOTATION_HPARAMS,
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
    explanation_term = "haics_bce"

    uses_gradcam = True
    uses_gt_masks = True

    def explanation_loss(self, step: Step) -> Terms:
        cams = normalize_per_sample(step.raw_cams.float(), eps=1e-6)  # RES: (cam - min) / (max + 1e-6)
        bce = losses.haics_bce(cams, step.annotations_at(cams.shape[-2:]), step.annotated)
        return self.hparams["lambda_haics"] * bce, {"haics_bce": bce}


# dtak/rrr's Decoy MNIST lambda 1000 is on raw 0-255 pixels; on ImageNet-normalised inputs the squared input
# gradient is (255 * std)^2 ~ 3.3e3 times larger, so the same trade-off is lambda ~ 0.3 (README, table of methods).
RRR_DEFAULT_LAMBDA = 0.3
# On DecoyMNIST (pixel / 255, unnormalised) the squared input gradient is 255^2 times the reference's: lambda 1000
# becomes 1000 / 255^2 ~ 0.0154 (both losses are means here, sums there: their ratio, hence lambda, is the same).
RRR_DECOY_LAMBDA = 1000 / 255 ** 2
DECOY_DATASETS = ("DecoyMNIST", "DecoyMNISTFull")


def rrr_lambda_scale(dataset: str | None) -> float:
    """lambda_rrr's unit on ``dataset``, relative to ImageNet-normalised inputs (its default and search range move
    together)."""
    return RRR_DECOY_LAMBDA / RRR_DEFAULT_LAMBDA if dataset in DECOY_DATASETS else 1.0


@register_algorithm(
    hparams=BACKBONE_HPARAMS + (
        *ANNOTATION_HPARAMS,
        HParam("lambda_rrr", float, lambda dataset: RRR_DEFAULT_LAMBDA * rrr_lambda_scale(dataset),
               log_uniform(-1.0, 2.0),
               "RRR: weight of the squared input gradient of sum_k log p_k on the pixels outside the mask "
               "(dtak/rrr's Decoy MNIST 1000, translated to ImageNet-normalised inputs: 0.3; on DecoyMNIST's "
               "pixel/255 inputs: 1000/255^2, the search range scaled alike).", minimum=0.0,
               scale_for=rrr_lambda_scale),
    ),
    paper="Ross et al., Right for the Right Reasons: Training Differentiable Models by Constraining their "
          "Explanations, IJCAI 2017",
    reference="dtak/rrr: rrr/multilayer_perceptron.py",
    explanation="trains on the input gradient of sum_k log p_k outside the masks; evaluate scores Grad-CAM.")
class RRR(ExplanationGuidedAlgorithm):
    """RRR: CE + lambda_rrr * || (1 - mask) * d(sum_k log p_k)/dx ||^2 over the annotated samples (a double
    backward: the input gradient keeps its graph). The gradient is of the same train-mode forward as the CE."""
    explanation_term = "rrr_penalty"

    uses_gt_masks = True
    needs_input_gradient = True

    def explanation_loss(self, step: Step) -> Terms:
        masks = step.annotations_at(step.images.shape[-2:]).unsqueeze(1)
        penalty = losses.rrr_penalty(step.input_gradient, masks, step.annotated)
        return self.hparams["lambda_rrr"] * penalty, {"rrr_penalty": penalty}


RES_HPARAMS = BACKBONE_HPARAMS + train_cam_hparams(whose="RES") + (
    *ANNOTATION_HPARAMS,
    HParam("lambda_res", float, 1.0, log_uniform(-1.0, 1.0),
           "RES: weight of (robust alignment + imputation term) (its code: 1, fixed).", minimum=0.0),
    HParam("res_eta", float, 0.1, choice(0.0, 0.05, 0.1, 0.2),
           "RES: margin eta of the robust alignment, relu(term - eta) (its README's runs: 0.1; its flag's default 0).",
           minimum=0.0),
)
RES_REFERENCE = "YuyangGao/RES: RES.py (BF_solver, --transforms Gaussian / S1)"
RES_PAPER = "Gao et al., RES: A Robust Framework for Guiding Visual Explanation, KDD 2022"


class _RES(ExplanationGuidedAlgorithm):
    """RES: CE + lambda_res * (R + I) on the annotated samples, C the min-max (+1e-6) Grad-CAM of the true class.

    R, the robust alignment: relu(mean |tanh(5 (C - a)) - M| - eta) over the labelled cells, M in {-1, +1} the cell
    labels (:func:`~domainbed_align.methods.losses.res_labels`: the mask's complement is the negative map) and a the batch's
    threshold found without gradient (:func:`~domainbed_align.methods.losses.res_threshold`). I, the imputation term:
    mean |C - T| with T the imputed map of the positive cells (RES-G: Gaussian, RES-L: learned).
    """
    explanation_term = "res_robust"

    uses_gradcam = True
    uses_gt_masks = True

    def imputed(self, step: Step, positive: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def explanation_loss(self, step: Step) -> Terms:
        cams = losses.res_min_max(step.raw_cams)
        labels = losses.res_labels(step.annotations_at(cams.shape[-2:]))
        threshold = losses.res_threshold(cams, labels, step.annotated)
        robust = losses.res_alignment(cams, labels, threshold, step.annotated, self.hparams["res_eta"])
        imputed, extra = self.imputed(step, (labels > 0).float())
        imputation = losses.res_imputation_l1(cams, imputed, step.annotated)
        total = robust + imputation + sum(extra.values())
        return self.hparams["lambda_res"] * total, {"res_robust": robust, "res_imputation": imputation,
                                                    "res_threshold": threshold, **extra}


@register_algorithm(hparams=RES_HPARAMS, paper=RES_PAPER, reference=RES_REFERENCE,
                    explanation="trains on Grad-CAM (no ReLU, constant channel weights, as RES's code) against the "
                                "masks; evaluate scores Grad-CAM.")
class RES_G(_RES):
    """RES-G: the imputed map is the positive cells blurred by OpenCV's 3x3 Gaussian, over (its maximum + 1e-6)."""

    def imputed(self, step: Step, positive: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return losses.res_gaussian_target(positive), {}


@register_algorithm(
    hparams=RES_HPARAMS + (
        HParam("res_reg", float, 0.0, None,
               "RES-L: weight of MSE(imputed map, positive cells), which keeps the learned imputation near the mask "
               "(its --reg, default 0: the layer is then pulled only towards Grad-CAM).", minimum=0.0),
    ),
    paper=RES_PAPER, reference=RES_REFERENCE,
    explanation="trains on Grad-CAM (no ReLU, constant channel weights, as RES's code) against the masks; evaluate "
                "scores Grad-CAM.")
class RES_L(_RES):
    """RES-L: the imputed map is a learned convolution of the full-resolution positive mask, min-max normalised.

    RES's layer, ``Conv2d(1, 1, 64, stride=32, padding=16)``, maps 224 px to its 7x7 grid; here the stride s is the
    classifier's input side over the Grad-CAM grid's (at least 2; s = 32 at 224 px / 7: exactly RES's layer), kernel
    2s, padding ceil(s/2) (:func:`imputation_layer`), and the binarised mask (>= 0.5; RES: > 0 of its binary masks)
    is area-resized to s times the grid. The layer is trained by the classifier's optimizer, as RES trains it with
    the model's Adam; predict() never uses it.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, num_domains: int,
                 hparams: Mapping[str, Any]) -> None:
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.imputation, self.imputation_side = imputation_layer(self.classifier.cam_side,
                                                                 self.classifier.input_size)
        self.optimizer.add_param_group({"params": list(self.imputation.parameters())})

    def imputed(self, step: Step, positive: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        full = (step.annotations_at(step.images.shape[-2:]) >= 0.5).float().unsqueeze(1)  # binarised, as RES's
        if full.shape[-1] != self.imputation_side or full.shape[-2] != self.imputation_side:
            full = F.adaptive_avg_pool2d(full, self.imputation_side)
        with torch.autocast(device_type=full.device.type, enabled=False):
            raw = self.imputation(full).squeeze(1)
        imputed = losses.res_min_max(raw)
        extra = {}
        if self.hparams["res_reg"] > 0:
            mse = losses.annotated_mean((imputed - positive).pow(2).flatten(1).mean(dim=1), step.annotated)
            extra["res_reg"] = self.hparams["res_reg"] * mse
        return imputed, extra


def imputation_layer(grid: int, input_side: int) -> tuple[nn.Conv2d, int]:
    """RES-L's layer for a ``grid`` x ``grid`` Grad-CAM of ``input_side``-px inputs, and the side the mask is resized
    to: stride s = max(2, round(input_side / grid)), kernel 2s, padding ceil(s / 2) (s / 2 for even s, RES's 16 for
    32), whose output on a (grid * s)-px mask is exactly grid x grid."""
    stride = max(2, round(input_side / grid))
    return nn.Conv2d(1, 1, kernel_size=2 * stride, stride=stride, padding=(stride + 1) // 2), grid * stride


# CARE's release has no configuration: alpha and T are ours (README, table of methods).
CARE_DEFAULT_ALPHA = 0.01
CARE_DEFAULT_THRESHOLD = 0.1


@register_algorithm(
    hparams=BACKBONE_HPARAMS + train_cam_hparams(whose="CARE") + (
        *ANNOTATION_HPARAMS,
        HParam("care_alpha", float, CARE_DEFAULT_ALPHA, log_uniform(-3.0, -1.0),
               "CARE: loss = alpha * sum_i attention_i + (1 - alpha) * CE (its release sets no value; a sum over the "
               "batch, as its code: at DomainBed's 3 x 32 images, 0.01 weighs the batch's mean term about like the "
               "CE, and the weight grows with batch_size).", minimum=0.0,
               maximum=1.0),
        HParam("care_threshold", float, CARE_DEFAULT_THRESHOLD, choice(0.05, 0.1, 0.2),
               "CARE: T of -min(inner, T), as a share of the image's pixels (inner = the Grad-CAM's mean over the "
               "image of cam * mask; its release sets no value).", minimum=0.0, maximum=1.0),
    ),
    paper="Zhuang et al., CARE: Class Attention to Regions of Lesion for Classification on Imbalanced Data, "
          "MIDL 2019",
    reference="JiaxinZhuang/CARE: src/loss.py (GradLoss, grad), src/trainer.py",
    explanation="trains on Grad-CAM (no ReLU, constant channel weights, upsampled to the image, as its code) against "
                "the masks; evaluate scores Grad-CAM.")
class CARE(ExplanationGuidedAlgorithm):
    """CARE: (1 - alpha) * CE + alpha * sum over annotated samples of (-min(inner, T) + outer), the min-max
    Grad-CAM upsampled bilinearly to the image (:func:`~domainbed_align.methods.losses.care_attention`).

    Its trainer backpropagates the summed true-class logits into the weights' gradients to read Grad-CAM's
    gradients, and that gradient stays in the update; here the map's gradients come from ``torch.autograd.grad``
    and only the loss reaches the weights.
    """
    explanation_term = "care_attention"

    uses_gradcam = True
    uses_gt_masks = True

    def cross_entropy_weight(self) -> float:
        return 1.0 - self.hparams["care_alpha"]

    def explanation_loss(self, step: Step) -> Terms:
        size = step.images.shape[-2:]
        cams = F.interpolate(step.cams.unsqueeze(1), size=tuple(size), mode="bilinear",
                             align_corners=False).squeeze(1)
        loss, inner, outer = losses.care_attention(cams, step.annotations_at(size), step.annotated,
                                                   self.hparams["care_threshold"])
        return self.hparams["care_alpha"] * loss, {"care_attention": loss, "care_inner": inner, "care_outer": outer}
