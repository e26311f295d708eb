"""ALIGN's losses and DRE's mixup explanation-consistency term, as pure functions on tensors.

Formulas follow ``shared/align-method.md``; each function documents the reductions it uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# DRE's published weights inside its regulariser (Li et al., CVPR 2023).
DRE_CONSISTENCY_WEIGHT = 1.0
DRE_SPARSITY_WEIGHT = 0.5
DRE_MIXED_CE_WEIGHT = 0.1


def total_variation(masks: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV of ``[N, 1, H, W]`` masks: mean |vertical diff| + mean |horizontal diff|."""
    vertical = (masks[..., 1:, :] - masks[..., :-1, :]).abs().mean()
    horizontal = (masks[..., :, 1:] - masks[..., :, :-1]).abs().mean()
    return vertical + horizontal


def masker_loss(prob_kept: torch.Tensor, prob_removed: torch.Tensor, masks: torch.Tensor,
                lambda_sparsity: float, lambda_smooth: float) -> dict[str, torch.Tensor]:
    """ALIGN's masker objective.

    ``prob_kept`` / ``prob_removed``: true-class softmax probability of x*M and x*(1-M), ``[N]``.
    dist = prob_kept - prob_removed; loss = mean((dist - 1)^2) + lambda_sparsity * mean|M| +
    lambda_smooth * TV(M). Returns the total under ``loss`` and each term.
    """
    distance = prob_kept - prob_removed
    fidelity = F.mse_loss(distance, torch.ones_like(distance))
    sparsity = masks.abs().mean()
    smooth = total_variation(masks)
    loss = fidelity + lambda_sparsity * sparsity + lambda_smooth * smooth
    return {"loss": loss, "fidelity": fidelity, "sparsity": sparsity, "smooth": smooth,
            "distance": distance.mean()}


def alignment_bce(cam: torch.Tensor, mask: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """BCE(Grad-CAM, mask), mean over pixels and samples, in float32.

    ``cam`` (the prediction) is min-max normalised and so holds exact 0 and 1, where BCE's gradient explodes:
    it is clamped to [eps, 1-eps]. autocast refuses BCE, hence the explicit float32.
    """
    with torch.autocast(device_type=cam.device.type, enabled=False):
        return F.binary_cross_entropy(cam.float().clamp(eps, 1 - eps), mask.float())


def same_class_partners(labels: torch.Tensor, num_classes: int | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """For each sample, the index of a random other sample of the same class (itself if it is alone).

    Vectorised and free of host syncs when ``num_classes`` is given: shuffle on the labels' device, sort by
    label, and pair each sample with the next one of its class group, cyclically.
    """
    n = labels.numel()
    device = labels.device if generator is None else generator.device
    shuffle = torch.randperm(n, generator=generator, device=device).to(labels.device)
    order = shuffle[torch.sort(labels[shuffle], stable=True).indices]
    sorted_labels = labels[order]
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device)
    counts.scatter_add_(0, sorted_labels, torch.ones_like(sorted_labels))
    starts = torch.cumsum(counts, 0) - counts
    group_start, group_size = starts[sorted_labels], counts[sorted_labels]
    position = torch.arange(n, device=labels.device)
    partner_position = group_start + (position - group_start + 1) % group_size
    partners = torch.empty_like(order)
    partners[order] = order[partner_position]
    return partners


def dre_mixup_loss(cam: torch.Tensor, cam_partner: torch.Tensor, cam_mixed: torch.Tensor,
                   mix_weight: torch.Tensor, logits_mixed: torch.Tensor,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """DRE's regulariser on a same-class mixup batch x_mix = lam*x + (1-lam)*x'.

    All maps ``[N, h, w]`` min-max normalised; ``mix_weight`` is lam, ``[N]``.
    consistency = mean |cam_mixed - (lam*cam + (1-lam)*cam_partner)|;
    sparsity = mean of the maps of originals and mixes (they are >= 0, so this is their mean L1 norm);
    mixed CE = CE(f(x_mix), y). Total = 1.0*consistency + 0.5*sparsity + 0.1*mixed CE (DRE's weights).
    """
    lam = mix_weight.view(-1, 1, 1).to(cam.dtype)
    consistency = (cam_mixed - (lam * cam + (1 - lam) * cam_partner)).abs().mean()
    sparsity = torch.cat([cam, cam_mixed]).abs().mean()
    mixed_ce = F.cross_entropy(logits_mixed.float(), labels)
    loss = (DRE_CONSISTENCY_WEIGHT * consistency + DRE_SPARSITY_WEIGHT * sparsity
            + DRE_MIXED_CE_WEIGHT * mixed_ce)
    return {"loss": loss, "consistency": consistency, "sparsity": sparsity, "mixed_ce": mixed_ce}
