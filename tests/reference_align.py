"""A slow, literal implementation of one ALIGN update, written from shared/align-method.md: a test oracle only.

Deliberately unlike the fast path: every quantity has its own forward (x, x_mix, x*M and x*(1-M) separately),
the timm ResNet is run stage by stage by hand to take the Grad-CAM feature map, Grad-CAM is computed separately
for originals and mixes, DRE's mixup term is a per-class Python loop, and normalisation is per sample in a
loop. The classifier must be in eval mode (BatchNorm on running statistics), so that batching cannot matter.

Choices the method file leaves open follow the project's documented defaults: the mask is area-downsampled to
the Grad-CAM grid (``align_resolution='cam'``), sparsity is mean |M|, smoothness is anisotropic total
variation (mean |vertical diff| + mean |horizontal diff|). DRE's term follows its code (``dre/mixuploss.py``):
per class present, the group's mean L1 consistency, the mean of each map's matrix 1-norm over (channel, height)
and the group's mixed CE, summed over classes and divided by the number of classes; the training Grad-CAM is
captum's LayerGradCam with its defaults (no ReLU, channel weights without gradient) unless the hparams ask for
the standard map differentiated fully. Min-max normalisation adds 1e-7 to the range.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

BCE_CLAMP = 1e-4  # Grad-CAM is clamped to [1e-4, 1 - 1e-4] before BCE (its min-max range holds exact 0 and 1)
NORM_EPS = 1e-7
DRE_WEIGHTS = {"consistency": 1.0, "sparsity": 0.5, "mixed_ce": 0.1}  # DRE's published weights


def resnet_forward(backbone: nn.Module, images: torch.Tensor, input_size: int,
                   stage_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the ``stage_name`` feature map of a timm ResNet, run stage by stage (no hooks, no helpers).

    Inputs are bilinearly resized to ``input_size`` first (align_corners=False), as the classifier does for small
    datasets.
    """
    if images.shape[-2:] != (input_size, input_size):
        images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False)
    captured = None
    h = backbone.act1(backbone.bn1(backbone.conv1(images)))
    if stage_name == "act1":
        captured = h
    h = backbone.maxpool(h)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        h = getattr(backbone, name)(h)
        if name == stage_name:
            captured = h
    if captured is None:
        raise ValueError(f"unknown stage {stage_name!r}")
    pooled = h.mean(dim=(2, 3))  # global average pooling
    return backbone.fc(pooled), captured


def normalized_gradcam(logits: torch.Tensor, feature_map: torch.Tensor, labels: torch.Tensor,
                       relu: bool = False, weight_gradient: bool = False) -> torch.Tensor:
    """Differentiable true-class Grad-CAM, min-max normalised per sample: ``[N, h, w]``. Defaults: DRE's map."""
    score = logits[torch.arange(len(labels)), labels].sum()
    (gradient,) = torch.autograd.grad(score, feature_map, create_graph=weight_gradient, retain_graph=True)
    weights = gradient.mean(dim=(2, 3))  # [N, C]: global-average-pooled gradients
    maps = []
    for i in range(len(labels)):
        cam = (weights[i].view(-1, 1, 1) * feature_map[i]).sum(dim=0)
        cam = F.relu(cam) if relu else cam
        maps.append((cam - cam.min()) / (cam.max() - cam.min() + NORM_EPS))
    return torch.stack(maps)


def mix_per_class(images: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor,
                  lam: torch.Tensor) -> torch.Tensor:
    """x_mix = lam * x + (1 - lam) * x', x' a same-class partner, built class by class."""
    mixed = torch.empty_like(images)
    for c in labels.unique().tolist():
        for i in (labels == c).nonzero().flatten().tolist():
            j = int(partners[i])
            assert labels[j] == c, "partners must share the class"
            mixed[i] = lam[i] * images[i] + (1 - lam[i]) * images[j]
    return mixed


def dre_mixup_term(cams: torch.Tensor, cams_mixed: torch.Tensor, logits_mixed: torch.Tensor,
                   labels: torch.Tensor, partners: torch.Tensor, lam: torch.Tensor,
                   num_classes: int) -> dict[str, torch.Tensor]:
    """DRE's regulariser with its per-class loop: 1.0 consistency + 0.5 sparsity + 0.1 mixed CE."""
    consistency = cams.new_zeros(())
    sparsity = cams.new_zeros(())
    mixed_ce = cams.new_zeros(())
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten().tolist()
        expected = torch.stack([lam[i] * cams[i] + (1 - lam[i]) * cams[int(partners[i])] for i in members])
        consistency = consistency + (cams_mixed[members] - expected).abs().mean()
        column_max = [torch.stack([cams[i][:, col].abs().max() for col in range(cams.shape[-1])]) for i in members]
        column_max_mixed = [torch.stack([cams_mixed[i][:, col].abs().max() for col in range(cams.shape[-1])])
                            for i in members]
        sparsity = sparsity + (torch.stack(column_max).mean() + torch.stack(column_max_mixed).mean()) / 2
        mixed_ce = mixed_ce + torch.stack([-F.log_softmax(logits_mixed[i], dim=0)[c] for i in members]).mean()
    consistency, sparsity, mixed_ce = consistency / num_classes, sparsity / num_classes, mixed_ce / num_classes
    loss = (DRE_WEIGHTS["consistency"] * consistency + DRE_WEIGHTS["sparsity"] * sparsity
            + DRE_WEIGHTS["mixed_ce"] * mixed_ce)
    return {"loss": loss, "consistency": consistency, "sparsity": sparsity, "mixed_ce": mixed_ce}


def classifier_loss(backbone: nn.Module, masker: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    partners: torch.Tensor, lam: torch.Tensor, hparams: Mapping[str, Any], input_size: int,
                    stage_name: str) -> dict[str, torch.Tensor]:
    """L_clf = CE(f(x), y) + lambda_align * BCE(GradCAM_y(x), M(x)) + lambda_reg * L_reg (masker frozen)."""
    cam_form = dict(relu=hparams["train_cam_relu"], weight_gradient=hparams["train_cam_weight_gradient"])
    logits, feature_map = resnet_forward(backbone, images, input_size, stage_name)
    cams = normalized_gradcam(logits, feature_map, labels, **cam_form)
    mixed = mix_per_class(images, labels, partners, lam)
    logits_mixed, feature_map_mixed = resnet_forward(backbone, mixed, input_size, stage_name)
    cams_mixed = normalized_gradcam(logits_mixed, feature_map_mixed, labels, **cam_form)  # mixes keep their class

    cross_entropy = F.cross_entropy(logits, labels)
    regulariser = dre_mixup_term(cams, cams_mixed, logits_mixed, labels, partners, lam, backbone.fc.out_features)
    with torch.no_grad():
        target = F.adaptive_avg_pool2d(masker(images), cams.shape[-2:]).squeeze(1)  # area-downsampled mask
    prediction = cams.clamp(BCE_CLAMP, 1 - BCE_CLAMP)
    bce = -(target * prediction.log() + (1 - target) * (1 - prediction).log()).mean()
    loss = cross_entropy + hparams["lambda_reg"] * regulariser["loss"] + hparams["lambda_align"] * bce
    return {"loss": loss, "ce": cross_entropy, "reg": regulariser["loss"],
            "reg_consistency": regulariser["consistency"], "reg_sparsity": regulariser["sparsity"],
            "reg_mixed_ce": regulariser["mixed_ce"], "align_bce": bce}


def masker_loss(backbone: nn.Module, masker: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                hparams: Mapping[str, Any], input_size: int, stage_name: str) -> dict[str, torch.Tensor]:
    """L_mask = MSE(p_y(x*M) - p_y(x*(1-M)), 1) + lambda_sparsity * mean|M| + lambda_smooth * TV(M)."""
    masks = masker(images)
    rows = torch.arange(len(labels))
    logits_kept, _ = resnet_forward(backbone, images * masks, input_size, stage_name)
    logits_removed, _ = resnet_forward(backbone, images * (1 - masks), input_size, stage_name)
    prob_kept = F.softmax(logits_kept, dim=1)[rows, labels]
    prob_removed = F.softmax(logits_removed, dim=1)[rows, labels]
    distance = prob_kept - prob_removed
    fidelity = ((distance - 1) ** 2).mean()
    sparsity = masks.abs().mean()
    smooth = ((masks[:, :, 1:, :] - masks[:, :, :-1, :]).abs().mean()
              + (masks[:, :, :, 1:] - masks[:, :, :, :-1]).abs().mean())
    loss = fidelity + hparams["lambda_sparsity"] * sparsity + hparams["lambda_smooth"] * smooth
    return {"masker_loss": loss, "masker_fidelity": fidelity, "masker_sparsity": sparsity,
            "masker_smooth": smooth, "masker_distance": distance.mean(), "mask_mean": masks.detach().mean()}
