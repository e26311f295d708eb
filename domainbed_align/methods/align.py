"""ALIGN (Hong et al., AAAI 2026): a masker and the classifier trained in alternation.

One ALIGN update reads top to bottom in :meth:`ALIGN.update`: the step's shared quantities, the classifier's loss
(CE + DRE's mixup term + the alignment of its Grad-CAM with the frozen masker's mask), its optimizer step, then the
masker's steps through the frozen classifier.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from domainbed_align.errors import HParamError
from domainbed_align.methods.backbones import eval_mode
from domainbed_align.methods.gradcam import true_class_scores
from domainbed_align.methods.hparams import ALIGN_HPARAMS, BACKBONE_HPARAMS, MIXUP_HPARAMS
from domainbed_align.methods.losses import alignment_bce, masker_loss
from domainbed_align.methods.masker import Masker
from domainbed_align.methods.registry import register_algorithm
from domainbed_align.methods.trainer import ExplanationGuidedAlgorithm, Minibatches, overflow_key


# Reported by ALIGN at every step (zeros during warm-up) so results.jsonl has the same keys throughout.
MASKER_REPORT = ("masker_loss", "masker_fidelity", "masker_sparsity", "masker_smooth", "masker_distance",
                 "mask_mean", "mask_kept", "masker_grad_norm")


@register_algorithm(
    hparams=BACKBONE_HPARAMS + MIXUP_HPARAMS + ALIGN_HPARAMS,
    paper="Hong et al., ALIGN, AAAI 2026 (arXiv 2511.06944)",
    reference="none public; built on tangli-udel/DRE (the paper's ablation reproduces DRE's numbers)",
    explanation="trains on DRE's Grad-CAM against its masker's mask; evaluate scores Grad-CAM and the mask.")
class ALIGN(ExplanationGuidedAlgorithm):
    """ALIGN (Hong et al., AAAI 2026): a masker and the classifier trained in alternation.

    Warm-up (``warmup_steps`` update() calls): the classifier alone, CE + lambda_reg * DRE's mixup term.
    Masker warm-up (the next ``masker_warmup_steps`` calls): the same classifier step, then ``masker_steps``
    masker steps, so the first alignment target is a trained mask, not a random CNN's ~0.5 everywhere.
    Afterwards each update() runs one classifier step (masker frozen: its current mask is a constant target)
    with CE + lambda_align * BCE(Grad-CAM_y, M) + lambda_reg * L_mixup, then ``masker_steps`` masker steps
    (classifier frozen: eval mode, so neither its weights nor its BatchNorm statistics change). ALIGN thus gets
    exactly as many classifier steps as TimmERM. The first masker step reuses the mask the classifier step
    computed (the masker has not changed in between), which saves one masker forward pass.
    """
    explanation_term = "align_bce"

    uses_gradcam = True
    uses_mixup = True

    def __init__(self, input_shape: Sequence[int], num_classes: int, num_domains: int,
                 hparams: Mapping[str, Any]) -> None:
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.masker = Masker(self.in_channels, self.hparams["masker_width"], self.hparams["masker_downsample"])
        self.masker_optimizer = torch.optim.Adam(self.masker.parameters(), lr=self.hparams["masker_lr"])

    @classmethod
    def check_run_length(cls, hparams: Mapping[str, Any], steps: int) -> None:
        start = hparams["warmup_steps"] + hparams["masker_warmup_steps"]
        if steps <= start:  # the whole run in warm-up: ALIGN would be DRE-regularised ERM under ALIGN's name
            raise HParamError(
                f"ALIGN aligns from update {start} (warmup_steps {hparams['warmup_steps']} + masker_warmup_steps "
                f"{hparams['masker_warmup_steps']}), but the run has {steps} steps: it would never align. Shorten "
                f"the warm-ups, e.g. --hparams '{{\"warmup_steps\": {steps // 2}, \"masker_warmup_steps\": "
                f"{min(hparams['masker_warmup_steps'], steps // 5)}}}' (this project's 500-step sweeps: 250 and 100), "
                f"or run more than {start} steps.")

    @property
    def in_warmup(self) -> bool:
        """The classifier's warm-up: the masker is not touched."""
        return self.steps_done < self.hparams["warmup_steps"]

    @property
    def aligning(self) -> bool:
        """Past both warm-ups: the classifier step includes the alignment term."""
        return self.steps_done >= self.hparams["warmup_steps"] + self.hparams["masker_warmup_steps"]

    def update(self, minibatches: Minibatches, unlabeled: Any = None) -> dict[str, float]:
        images, labels, annotations = self.training_batch(minibatches)
        phase = {"in_warmup": float(self.in_warmup), "in_masker_warmup": float(not self.in_warmup
                                                                                and not self.aligning)}
        # 1. The classifier step, the masker frozen: CE + lambda_reg * DRE's term + lambda_align * BCE(Grad-CAM, M).
        with self.autocast(images):
            step = self.compute_step(images, labels, annotations)
            loss, terms = self.base_loss(step)
            # The masker's current mask, kept with its graph: the first masker step below reuses it (the masker
            # does not change in between); the classifier's loss sees it detached, a constant target.
            masks = self.masker(step.images) if self.aligning else None
            alignment, bce = self.alignment_loss(step.cams, masks)
            loss, terms = loss + alignment, {**terms, "align_bce": bce}
        floats = self.classifier_step(loss, terms, images)
        # 2. The masker's steps, the classifier frozen (none in the classifier's warm-up: the same keys, zeros).
        with self.autocast(images):
            if self.in_warmup:
                fp16 = {overflow_key("masker"): 0.0} if self.precision(images.device) == "fp16" else {}
                floats.update({**{key: 0.0 for key in MASKER_REPORT}, **fp16})
            else:
                for _ in range(self.hparams["masker_steps"]):
                    masker_terms = self.masker_step(images, labels, masks)
                    masks = None  # later steps need the updated masker's mask
                floats.update(masker_terms)
        floats.update(phase)
        return self.finish_update(floats)

    def alignment_loss(self, cams: torch.Tensor, masks: torch.Tensor | None) -> tuple[torch.Tensor | float,
                                                                                     torch.Tensor | float]:
        """(lambda_align * BCE, BCE) of the training Grad-CAMs ``cams`` ``[N, h, w]`` against the masker's
        ``masks`` ``[N, 1, H, W]`` as constant targets, at the resolution of hparam ``align_resolution``;
        (0.0, 0.0) without masks (before alignment starts)."""
        if masks is None:
            return 0.0, 0.0
        targets = masks.detach()  # the frozen masker's mask: a constant target for the classifier
        if self.hparams["align_resolution"] == "cam":
            targets, maps = F.adaptive_avg_pool2d(targets, cams.shape[-2:]).squeeze(1), cams
        else:
            maps = F.interpolate(cams.unsqueeze(1), size=targets.shape[-2:], mode="bilinear",
                                 align_corners=False).squeeze(1)
            targets = targets.squeeze(1)
        bce = alignment_bce(maps, targets)
        return self.hparams["lambda_align"] * bce, bce

    def masker_step(self, images: torch.Tensor, labels: torch.Tensor,
                    masks: torch.Tensor | None = None) -> dict[str, float]:
        """One masker update through the frozen classifier; returns the masker's terms and mask statistics,
        checked for finiteness before the masker's optimizer step.

        ``masks``: the current masker's output on ``images`` with its graph, if already computed.
        """
        with eval_mode(self.classifier):  # frozen: no BatchNorm-statistics update, no dropout
            masks = self.masker(images) if masks is None else masks
            n = labels.numel()
            logits = self.classifier(torch.cat([images * masks, images * (1 - masks)]))
            probs = F.softmax(logits.float(), dim=1)
            true_probs = true_class_scores(probs, torch.cat([labels, labels]))
            terms = masker_loss(true_probs[:n], true_probs[n:], masks, self.hparams["lambda_sparsity"],
                                self.hparams["lambda_smooth"], self.hparams["sparsity_floor"])
            # Gradients w.r.t. the masker only: the classifier's .grad stays untouched.
            parameters = list(self.masker.parameters())
            diagnostics = self.term_gradient_norms(terms, true_probs, n, parameters) if self.diagnostics else {}
            loss = self.scaled(terms["loss"], "masker", images)
            for parameter, gradient in zip(parameters, torch.autograd.grad(loss, parameters)):
                parameter.grad = gradient
            masks = masks.detach()
            report = {**{f"masker_{key}": value for key, value in terms.items()},
                      "mask_mean": masks.mean(), "mask_kept": (masks > 0.5).float().mean(), **diagnostics}
            floats = self.step_optimizer(self.masker_optimizer, "masker", report, parameters, "masker_grad_norm",
                                         "masker step")
        return floats

    def term_gradient_norms(self, terms: Mapping[str, torch.Tensor], true_probs: torch.Tensor, n: int,
                            parameters: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        """Diagnostics (``self.diagnostics``, set by the per-step trace): the norm of each weighted masker term's
        gradient w.r.t. the masker, and the classifier's mean true-class probability on x*M and x*(1-M).

        Issue 29's question: does the fidelity gradient lose to the sparsity term's? Extra backward passes on the
        retained graph only, unscaled; the step itself is unchanged (tested: the same floats with and without)."""
        weighted = {"fidelity": terms["fidelity"], "sparsity": self.hparams["lambda_sparsity"] * terms["sparsity"],
                    "smooth": self.hparams["lambda_smooth"] * terms["smooth"]}
        norms = {}
        for name, term in weighted.items():
            if not term.requires_grad:  # a term without a graph (a constant) has no gradient
                norms[f"masker_{name}_grad_norm"] = torch.zeros(())
                continue
            gradients = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
            norms[f"masker_{name}_grad_norm"] = torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g.float()) for g in gradients if g is not None]))
        return {**norms, "masker_prob_kept": true_probs[:n].mean(), "masker_prob_removed": true_probs[n:].mean()}
