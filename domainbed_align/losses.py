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
    it is clamped to [eps, 1-eps]. A NaN in either (from a NaN image: a NaN masker is stopped by its own step's
    check first) is made 0.5 only because torch's BCE raises on it instead of returning NaN; the cross-entropy of
    that image is NaN too, and the trainer's check names it before any step. autocast refuses BCE, hence the
    explicit float32.
    """
    with torch.autocast(device_type=cam.device.type, enabled=False):
        prediction = torch.nan_to_num(cam.float().clamp(eps, 1 - eps), nan=0.5)
        return F.binary_cross_entropy(prediction, torch.nan_to_num(mask.float(), nan=0.5))


def same_class_partners(labels: torch.Tensor, num_classes: int | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """For each sample, the index of a random sample of the same class: a uniform random permutation within each
    class, as DRE's ``inp[torch.randperm(len(inp))]`` per class (so a sample can be its own partner).

    Vectorised and free of host syncs: two independent shuffles, each stably sorted by label, list every class
    group in two independent random orders; pairing them position by position is a uniform permutation per group.
    ``num_classes`` is accepted for symmetry with :func:`class_group_weights` and unused.
    """
    n = labels.numel()
    device = labels.device if generator is None else generator.device

    def grouped_random_order() -> torch.Tensor:
        shuffle = torch.randperm(n, generator=generator, device=device).to(labels.device)
        return shuffle[torch.sort(labels[shuffle], stable=True).indices]

    first, second = grouped_random_order(), grouped_random_order()
    partners = torch.empty_like(first)
    partners[first] = second
    return partners


def class_group_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``1 / (n_c * num_classes)`` for each sample of class c: a per-sample quantity summed with these weights is
    DRE's reduction, the mean within each class group, summed over the groups present, divided by the number of
    classes of the dataset (not of the batch). Sync-free."""
    counts = torch.zeros(num_classes, dtype=torch.float32, device=labels.device)
    counts.scatter_add_(0, labels, torch.ones_like(labels, dtype=torch.float32))
    return 1.0 / (counts[labels] * num_classes)


def dre_sparsity(maps: torch.Tensor) -> torch.Tensor:
    """DRE's sparsity of each map ``[N, h, w]``, ``[N]``: its code's ``torch.linalg.norm(attr, dim=(1, 2), ord=1)``
    on ``[N, 1, h, w]`` is a matrix 1-norm over (channel, height), i.e. the largest |value| of each column, then the
    mean (over columns here; DRE's mean is over samples and columns at once, which the group weights complete)."""
    return torch.linalg.matrix_norm(maps.unsqueeze(1), ord=1, dim=(1, 2)).mean(dim=1)


def dre_mixup_loss(cam: torch.Tensor, cam_partner: torch.Tensor, cam_mixed: torch.Tensor,
                   mix_weight: torch.Tensor, logits_mixed: torch.Tensor, labels: torch.Tensor,
                   num_classes: int) -> dict[str, torch.Tensor]:
    """DRE's regulariser (``dre/mixuploss.py``) on a same-class mixup batch x_mix = lam*x + (1-lam)*x'.

    All maps ``[N, h, w]`` min-max normalised; ``mix_weight`` is lam, ``[N]``. Per sample:
    consistency = mean |cam_mixed - (lam*cam + (1-lam)*cam_partner)| (DRE's L1Loss);
    sparsity = (dre_sparsity(cam) + dre_sparsity(cam_mixed)) / 2; mixed CE = CE(f(x_mix), y).
    Each is reduced as DRE reduces it (:func:`class_group_weights`). Total = 1.0*consistency + 0.5*sparsity +
    0.1*mixed CE (DRE's weights).
    """
    weights = class_group_weights(labels, num_classes)
    lam = mix_weight.view(-1, 1, 1).to(cam.dtype)
    consistency = (cam_mixed - (lam * cam + (1 - lam) * cam_partner)).abs().flatten(1).mean(dim=1)
    sparsity = (dre_sparsity(cam) + dre_sparsity(cam_mixed)) / 2
    mixed_ce = F.cross_entropy(logits_mixed.float(), labels, reduction="none")
    terms = {"consistency": (weights * consistency).sum(), "sparsity": (weights * sparsity).sum(),
             "mixed_ce": (weights * mixed_ce).sum()}
    loss = (DRE_CONSISTENCY_WEIGHT * terms["consistency"] + DRE_SPARSITY_WEIGHT * terms["sparsity"]
            + DRE_MIXED_CE_WEIGHT * terms["mixed_ce"])
    return {"loss": loss, **terms}
