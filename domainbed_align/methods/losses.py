"""ALIGN's losses and DRE's mixup explanation-consistency term, as pure functions on tensors.

Formulas follow ``shared/align-method.md``; each function documents the reductions it uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

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
                lambda_sparsity: float, lambda_smooth: float, sparsity_floor: float = 0.0) -> dict[str, torch.Tensor]:
    """ALIGN's masker objective.

    ``prob_kept`` / ``prob_removed``: true-class softmax probability of x*M and x*(1-M), ``[N]``.
    dist = prob_kept - prob_removed; loss = mean((dist - 1)^2) + lambda_sparsity * sparsity +
    lambda_smooth * TV(M). Returns the total under ``loss`` and each term.

    sparsity: the published mean |M| when ``sparsity_floor`` is 0; otherwise each image's distance from the floor,
    ``mean_i |mean|M_i| - floor|`` (:func:`floored_sparsity`, issue 29's remedy option).
    """
    distance = prob_kept - prob_removed
    fidelity = F.mse_loss(distance, torch.ones_like(distance))
    sparsity = floored_sparsity(masks, sparsity_floor) if sparsity_floor > 0 else masks.abs().mean()
    smooth = total_variation(masks)
    loss = fidelity + lambda_sparsity * sparsity + lambda_smooth * smooth
    return {"loss": loss, "fidelity": fidelity, "sparsity": sparsity, "smooth": smooth,
            "distance": distance.mean()}


def floored_sparsity(masks: torch.Tensor, floor: float) -> torch.Tensor:
    """Sparsity with a floor: the mean over images of |mean|M_i| - floor|, ``masks`` ``[N, 1, H, W]``.

    Issue 29: trained on one domain, a weak classifier's fidelity gradient lost to the published mean |M| and the
    mask emptied (mean 0.0004). Above the floor this is the published term (the same 1/(N*H*W) push down on every
    pixel); below it the push is reversed, so sparsity pulls a mask back up to the floor instead of emptying it. A
    one-sided floor (relu) is not enough: Adam's momentum carries the masker past it, and nothing brings it back.
    """
    return (masks.abs().flatten(1).mean(1) - floor).abs().mean()


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


# --- SGT (Ismail et al., NeurIPS 2021; ayaabdelsalam91/saliency_guided_training, Scripts/interpretable.py) ------
def saliency_guided_masking(images: torch.Tensor, saliency: torch.Tensor, fraction: float,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """SGT's masked input: per sample, the ``max(1, int(H * W * fraction))`` positions of lowest ``saliency``
    ``[N, H, W]`` (signed: most negative first, as its ``topk(largest=False)``) are replaced, in every channel, by
    values drawn uniformly in that sample's channel range [min_c, max_c] (its ``Helper.fill_SingleMask``).

    Batched (one top-k and one ``where``) where the reference loops over samples; no host sync. Detached: the
    masked input is a constant, as in the reference.
    """
    n, channels, height, width = images.shape
    count = max(1, int(height * width * fraction))
    lowest = saliency.reshape(n, -1).topk(count, dim=1, largest=False).indices
    drop = torch.zeros(n, height * width, dtype=torch.bool, device=images.device)
    drop = drop.scatter(1, lowest, True).view(n, 1, height, width)
    images = images.detach()
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    uniform = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return torch.where(drop, low + (high - low) * uniform, images)


def sgt_kl(logits: torch.Tensor, logits_masked: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x_masked)), summed over classes and averaged over samples (``KLDivLoss(reduction='batchmean')``
    on ``log_softmax(masked), softmax(x)``); neither side detached, as in SGT's code."""
    return F.kl_div(F.log_softmax(logits_masked.float(), dim=1), F.log_softmax(logits.float(), dim=1),
                    reduction="batchmean", log_target=True)


# --- annotation losses (GRADIA, HAICS, RRR): a mean over the annotated samples only ---------------------------
def annotated_mean(per_sample: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_sample`` ``[N]`` over the samples with ``annotated`` 1 (0 if none: the method is then ERM);
    the denominator is the annotated count, as GRADIA's mean over its valid samples. Sync-free."""
    return (per_sample * annotated).sum() / annotated.sum().clamp(min=1.0)


# The sigma whose 3-tap Gaussian is OpenCV's fixed [1/4, 1/2, 1/4], what GRADIA's cv2.GaussianBlur(m, (3, 3), 0) uses.
OPENCV_3X3_SIGMA = 1.0 / math.sqrt(2.0 * math.log(2.0))


def opencv_blur_3x3(maps: torch.Tensor) -> torch.Tensor:
    """``cv2.GaussianBlur(m, (3, 3), 0)`` of each map ``[N, h, w]``: OpenCV's fixed [1/4, 1/2, 1/4] kernel with its
    reflect-101 border (torchvision's ``gaussian_blur`` with :data:`OPENCV_3X3_SIGMA`), in float32."""
    with torch.autocast(device_type=maps.device.type, enabled=False):  # the blur is a conv: not in bf16
        return gaussian_blur(maps.float().unsqueeze(1), kernel_size=[3, 3], sigma=[OPENCV_3X3_SIGMA] * 2).squeeze(1)


def gradia_target(masks: torch.Tensor) -> torch.Tensor:
    """GRADIA's attention target from masks already area-resized to the Grad-CAM grid ``[N, h, w]``
    (``GRADIA.py`` resize_attention_label): :func:`opencv_blur_3x3`, divided by its maximum (an empty mask stays
    zero instead of GRADIA's 0/0). Not rounded to 8 bits as GRADIA's uint8 images are."""
    blurred = opencv_blur_3x3(masks)
    peak = blurred.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return blurred / peak


def gradia_l1(cams: torch.Tensor, targets: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """GRADIA's attention loss: mean over the grid of |cam - target| per sample ``[N, h, w]`` (``nn.L1Loss``),
    averaged over the annotated samples (its reasonability weights are all 1 here: DomainBed has no such labels)."""
    return annotated_mean((cams.float() - targets.float()).abs().flatten(1).mean(dim=1), annotated)


def haics_bce(cams: torch.Tensor, targets: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """HAICS (RES's ``--transforms HAICS``): BCE(cam, mask) per sample, the min-max Grad-CAM taken as the
    probability (no sigmoid; torch's log clamp at -100, no epsilon, as ``nn.BCELoss``), mean over the grid, averaged
    over the annotated samples. Float32: autocast refuses BCE."""
    with torch.autocast(device_type=cams.device.type, enabled=False):
        # a NaN map (a NaN image) would make torch's BCE raise, not return NaN: the NaN CE of that image stops the
        # step instead, in the trainer's check (as alignment_bce)
        prediction = torch.nan_to_num(cams.float(), nan=0.5)
        per_cell = F.binary_cross_entropy(prediction, targets.float(), reduction="none")
    return annotated_mean(per_cell.flatten(1).mean(dim=1), annotated)


def rrr_penalty(input_gradient: torch.Tensor, masks: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """RRR's right-reasons term (``dtak/rrr``, ``rrr/multilayer_perceptron.py``: ``l2_norm(grads[A])``): per sample
    the plain sum of squares (no 1/2, unlike ``tf.nn.l2_loss``) of the input gradient ``[N, C, H, W]`` on the
    irrelevant pixels, A = 1 - mask (``masks`` ``[N, 1, H, W]`` in [0, 1], broadcast over channels), averaged over
    the batch, a sample without a mask contributing 0 (dtak's A = 0 there; dtak sums both CE and this over the
    batch, we average both, so its lambda is unchanged by the batch size)."""
    gradient = input_gradient.to(torch.promote_types(input_gradient.dtype, torch.float32))  # float64 stays
    per_sample = ((1.0 - masks.to(gradient.dtype)) * gradient).pow(2).flatten(1).sum(dim=1)
    return (per_sample * annotated).mean()


# --- RES (Gao et al., KDD 2022; YuyangGao/RES, RES.py) ------------------------------------------------------
# Its threshold search adds this to each negative cell's value to make a candidate (BF_solver's epsilon).
RES_CANDIDATE_EPSILON = 1e-4
RES_TANH_SCALE = 5.0  # tanh(5 * (cam - a)), RES.py
RES_NORMALISATION_EPSILON = 1e-6  # RES: (x - min) / (max(x - min) + 1e-6), for Grad-CAMs and imputed maps


def res_labels(masks: torch.Tensor) -> torch.Tensor:
    """RES's cell labels from foreground masks on the Grad-CAM grid ``[N, h, w]`` (area-averaged, in [0, 1]):
    +1 where at least half the cell is foreground, -1 elsewhere. RES's annotations mark positive (+1) and negative
    (-1) regions and leave the rest unlabelled (0); a foreground mask says the rest is background, so every cell is
    labelled and the negative map is the mask's complement."""
    return torch.where(masks >= 0.5, 1.0, -1.0).to(masks.dtype)


def res_threshold(cams: torch.Tensor, labels: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """RES's robust threshold ``a`` (``BF_solver``): one scalar for the whole batch, without gradient.

    Over every labelled cell of the annotated samples (flattened in batch, row, column order), the candidates are
    each negative cell's value + :data:`RES_CANDIDATE_EPSILON`, then each positive cell's value; a candidate v
    scores (share of negative cells below v) + (share of positive cells at or above v), and the first best
    candidate wins (its strict ``>`` update from a = 0, score 0). No negative cell: that share counts 0, so the
    smallest positive value wins; no labelled cell: a = 0. Batched with sorting (its Python loops are O(n^2))."""
    with torch.no_grad():
        values = cams.detach().float().flatten()
        cell_labels = (labels * annotated.view(-1, 1, 1)).flatten()
        negative, positive = values[cell_labels < 0], values[cell_labels > 0]
        candidates = torch.cat([negative + RES_CANDIDATE_EPSILON, positive])
        if candidates.numel() == 0:
            return values.new_zeros(())
        score = torch.zeros_like(candidates)
        if negative.numel():
            score += torch.searchsorted(negative.sort().values, candidates, side="left") / negative.numel()
        if positive.numel():
            below = torch.searchsorted(positive.sort().values, candidates, side="left")
            score += (positive.numel() - below) / positive.numel()
        best = int(score.argmax())  # argmax returns the first maximum: the reference's first best
        return candidates[best] if score[best] > 0 else values.new_zeros(())


def res_alignment(cams: torch.Tensor, labels: torch.Tensor, threshold: torch.Tensor, annotated: torch.Tensor,
                  eta: float) -> torch.Tensor:
    """RES's robust alignment term: relu(mean over labelled cells of |tanh(5 (cam - a)) - label| - eta), the mean
    over all labelled cells of the annotated samples together (its ``sum(loss * (label != 0)) / sum(label != 0)``);
    0 when no cell is labelled (RES divides by zero there)."""
    per_cell = (torch.tanh(RES_TANH_SCALE * (cams.float() - threshold)) - labels.float()).abs()
    labelled = (labels != 0).float() * annotated.view(-1, 1, 1)
    mean = (per_cell * labelled).sum() / labelled.sum().clamp(min=1.0)
    return F.relu(mean - eta)


def res_gaussian_target(positive: torch.Tensor) -> torch.Tensor:
    """RES-G's imputed map: :func:`opencv_blur_3x3` of the positive cells ``[N, h, w]`` (in {0, 1}), divided by
    (its maximum + 1e-6), as RES.py (float32, no 8-bit rounding)."""
    blurred = opencv_blur_3x3(positive)
    return blurred / (blurred.flatten(1).amax(dim=1).view(-1, 1, 1) + RES_NORMALISATION_EPSILON)


def res_min_max(maps: torch.Tensor) -> torch.Tensor:
    """RES's normalisation of a map ``[N, h, w]``: (x - min) / (max(x - min) + 1e-6) per sample, i.e. the shared
    min-max with RES's epsilon."""
    from domainbed_align.methods.gradcam import normalize_per_sample

    return normalize_per_sample(maps.float(), eps=RES_NORMALISATION_EPSILON)


def res_imputation_l1(cams: torch.Tensor, imputed: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """RES's imputation term: mean over the grid of |cam - imputed map| per sample, averaged over the annotated
    samples (RES: ``L1Loss`` over its fully labelled batch). Neither side detached, as in RES.py."""
    return annotated_mean((cams.float() - imputed.float()).abs().flatten(1).mean(dim=1), annotated)


# --- CARE (Zhuang et al., MIDL 2019; JiaxinZhuang/CARE, src/loss.py and src/trainer.py) ---------------------------
def care_attention(cams: torch.Tensor, masks: torch.Tensor, annotated: torch.Tensor,
                   threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CARE's attention loss: sum over the annotated samples of ``-min(inner_i, T) + outer_i``, with
    inner_i = the mean over pixels of cam * mask and outer_i = of cam * (1 - mask), ``cams`` the min-max maps
    upsampled to the masks' size ``[N, H, W]``.

    The ``min`` is per sample (``GradLoss.grad_loss`` runs on one image; above T its inner term is replaced by the
    constant T, so it gets no gradient there) and the samples are summed, not averaged (its ``cam_losses +=``).
    CARE sums over its 224x224 pixels; the mean here is that sum / (H W), so ``threshold`` is a share of the image
    and one setting means the same at every resolution. Returns (loss, mean inner, mean outer) over annotated."""
    masks = masks.float()
    cams = cams.float()
    inner = (cams * masks).flatten(1).mean(dim=1)
    outer = (cams * (1.0 - masks)).flatten(1).mean(dim=1)
    clipped = torch.where(inner > threshold, torch.full_like(inner, threshold), inner)
    loss = ((outer - clipped) * annotated).sum()
    return loss, annotated_mean(inner.detach(), annotated), annotated_mean(outer.detach(), annotated)
