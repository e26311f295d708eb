"""The shared trainer of the explanation-guided family, under DomainBed's Algorithm contract.

:class:`ExplanationGuidedAlgorithm` owns the machinery: the timm classifier from the one factory, its
optimizer, mixed precision, the batched differentiable Grad-CAM of the true class, DRE's same-class mixup
term, the check that stops a diverged step before its optimizer step, the collapse warnings and the conversion
of every loss term to Python floats. A method overrides one small hook, :meth:`explanation_loss` (and, for ALIGN,
:meth:`after_classifier_step` for its masker). The class imports no DomainBed: the registration hook mixes
``domainbed.algorithms.Algorithm`` in when DomainBed is imported.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from domainbed_align import hparams as hparams_lib
from domainbed_align.backbones import CamClassifier, create_backbone
from domainbed_align.errors import HParamError, NonFiniteLossError
from domainbed_align.explain import check_explanation_inputs, grad_cam_explanations
from domainbed_align.gradcam import normalize_per_sample, zero_map_share
from domainbed_align.losses import dre_mixup_loss, same_class_partners
from domainbed_align.monitor import CollapseMonitor

Minibatches = Sequence[tuple[torch.Tensor, torch.Tensor]]


class ExplanationGuidedAlgorithm(nn.Module):
    """Base of TimmERM, DRE, ALIGN and the explanation-guided baselines.

    DomainBed contract: ``__init__(input_shape, num_classes, num_domains, hparams)``; ``update(minibatches,
    unlabeled=None)`` does one optimisation step on the concatenated training environments and returns Python
    floats; ``predict(x)`` returns logits. Domain-adaptation ``unlabeled`` batches are ignored.
    """

    name = ""  # key of this algorithm's hparams in hparams.SPECS
    uses_gradcam = False
    uses_mixup = False
    uses_gt_masks = False  # annotation-based methods set this; the others must never see the mask channel

    @staticmethod
    def known_hparam_names() -> frozenset | None:
        """Hparam names DomainBed defines (the hook overrides this), so a typo in --hparams is an error
        instead of a silently ignored key; None (without DomainBed) skips that check."""
        return None

    def __init__(self, input_shape: Sequence[int], num_classes: int, num_domains: int,
                 hparams: Mapping[str, Any]) -> None:
        nn.Module.__init__(self)  # not super(): DomainBed's Algorithm.__init__ only stores hparams
        if hparams.get("gt_masks", False) is not False and not self.uses_gt_masks:
            raise HParamError(
                f"hparam 'gt_masks' is {hparams['gt_masks']!r}: our datasets would then append the ground-truth "
                f"mask (the digit's shape, i.e. the label) to {self.name}'s input; {self.name} uses no "
                f"annotations, so drop gt_masks from --hparams.")
        self.hparams = hparams_lib.validate(self.name, hparams, self.known_hparam_names())
        self.num_classes = num_classes
        self.num_domains = num_domains
        self.in_channels = input_shape[0]
        h = self.hparams
        backbone = create_backbone(h["backbone"], num_classes, in_chans=input_shape[0],
                                   pretrained=h["pretrained"], pretrained_file=h["pretrained_file"],
                                   drop_rate=h["resnet_dropout"])
        self.classifier = CamClassifier(backbone, native_size=input_shape[-1], input_size=h["input_size"],
                                        gradcam_layer=h["gradcam_layer"], freeze_bn=h["freeze_bn"])
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=h["lr"],
                                          weight_decay=h["weight_decay"])
        self.steps_done = 0
        self._channels_last_applied = False
        self.monitor = CollapseMonitor(type(self).__name__)

    # --- the hooks a method overrides ---------------------------------------------------------------
    def explanation_loss(self, images: torch.Tensor, labels: torch.Tensor,
                         cams: torch.Tensor) -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
        """The method's weighted explanation loss on normalised true-class Grad-CAMs ``[N, h, w]``.

        Returns (weighted total added to the classifier loss, terms to report). Only called when
        ``uses_gradcam``.
        """
        return 0.0, {}

    def after_classifier_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Work done after each classifier step (ALIGN: its masker steps); returns terms to report (floats,
        each optimizer step checked with :meth:`checked_floats` before it is taken)."""
        return {}

    # --- DomainBed contract -------------------------------------------------------------------------
    def update(self, minibatches: Minibatches, unlabeled: Any = None) -> dict[str, float]:
        images = torch.cat([x for x, _ in minibatches])
        labels = torch.cat([y for _, y in minibatches])
        images = self.prepare_images(images)
        with self.autocast(images):
            loss, terms = self.classifier_loss(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        floats = self.checked_floats({"loss": loss, **terms}, self.classifier.parameters(), "grad_norm",
                                     "classifier step")  # raises before the weights change
        self.optimizer.step()
        with self.autocast(images):
            floats.update(self.after_classifier_step(images, labels))
        self.monitor.observe(self.steps_done, floats)
        self.steps_done += 1
        return floats

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        images = self.prepare_images(images)
        with self.autocast(images):
            return self.classifier(images).float()

    def explain(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Grad-CAM explanations ``[N, h, w]`` in [0, 1] (float32, detached) of class ``labels[i]``, by default
        each image's predicted class, at the Grad-CAM stage's resolution, in the trainer's precision.

        Always explains the model as it predicts in eval mode (BatchNorm running statistics, no dropout), whatever
        the current mode, and changes nothing (the mode is restored).
        :class:`domainbed_align.explain.CudaGraphExplainer` gives the same maps faster on a GPU.
        """
        self.check_explanation_inputs(images, labels)
        images = self.prepare_images(images)
        with self.autocast(images):
            return grad_cam_explanations(self.classifier, images, labels)

    def check_explanation_inputs(self, images: Any, labels: Any) -> None:
        """Raise one ExplanationInputError naming what is wrong with ``images`` or ``labels``."""
        model_device = next(self.classifier.parameters()).device
        check_explanation_inputs(images, labels, self.in_channels, self.num_classes, model_device)

    # --- machinery ----------------------------------------------------------------------------------
    def classifier_loss(self, images: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CE, plus (for Grad-CAM methods) DRE's mixup term and the method's explanation loss."""
        if not self.uses_gradcam:
            cross_entropy = F.cross_entropy(self.classifier(images).float(), labels)
            return cross_entropy, {"ce": cross_entropy}
        n = labels.numel()
        batch, batch_labels = images, labels
        if self.uses_mixup:
            partners, mix_weight = self.sample_mixup(labels)
            lam = mix_weight.view(-1, 1, 1, 1).to(images.dtype)
            mixed = lam * images + (1 - lam) * images[partners]
            # One forward over originals and mixes; mixes share their label (same-class pairs).
            batch, batch_labels = torch.cat([images, mixed]), torch.cat([labels, labels])
        logits, raw_cams = self.classifier.forward_with_cams(
            batch, batch_labels, relu=self.hparams["train_cam_relu"],
            weight_gradient=self.hparams["train_cam_weight_gradient"])
        cams = normalize_per_sample(raw_cams.float())
        cross_entropy = F.cross_entropy(logits[:n].float(), labels)
        # zero_cams: the standard (ReLU) Grad-CAM of the originals is zero everywhere, whichever map is trained on
        loss, terms = cross_entropy, {"ce": cross_entropy, "zero_cams": zero_map_share(raw_cams[:n])}
        if self.uses_mixup:
            regulariser = dre_mixup_loss(cams[:n], cams[:n][partners], cams[n:], mix_weight, logits[n:], labels,
                                         self.num_classes)
            loss = loss + self.hparams["lambda_reg"] * regulariser["loss"]
            terms.update({f"reg_{key}" if key != "loss" else "reg": value for key, value in regulariser.items()})
        explanation, explanation_terms = self.explanation_loss(images, labels, cams[:n])
        return loss + explanation, {**terms, **explanation_terms}

    def sample_mixup(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DRE's pairing: a random same-class partner per sample and lam ~ Beta(alpha, alpha) per pair."""
        alpha = self.hparams["mixup_alpha"]
        concentration = torch.full((labels.numel(),), alpha, device=labels.device)
        # Sampled on the device. validate_args=False: the default check of alpha > 0 is a host sync every step
        # on CUDA, and hparams.validate already refused alpha <= 0 at construction.
        mix_weight = torch.distributions.Beta(concentration, concentration, validate_args=False).sample()
        return same_class_partners(labels, self.num_classes), mix_weight

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the memory layout the classifier runs in (channels_last on CUDA unless switched off)."""
        if images.is_cuda and self.hparams["channels_last"]:
            if not self._channels_last_applied:
                self.to(memory_format=torch.channels_last)
                self._channels_last_applied = True
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def autocast(self, images: torch.Tensor, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
        """The trainer's precision for work on ``images``: bf16 autocast or nothing (``mixed_precision``).
        ``cache_enabled`` False for CUDA-graph capture, which must not keep autocast's cast weights."""
        mode = self.hparams["mixed_precision"]
        if mode == "bf16" or (mode == "auto" and images.is_cuda):
            return torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
        return contextlib.nullcontext()

    def checked_floats(self, terms: Mapping[str, torch.Tensor | float], parameters: Any, norm_name: str,
                       where: str) -> dict[str, float]:
        """The loss terms and the gradient norm of ``parameters`` (as ``norm_name``) as floats, read back in one
        host sync; a non-finite one raises :class:`NonFiniteLossError` naming it, the step and ``where``.

        Called after ``backward()`` and before ``optimizer.step()``, so a diverged step never reaches the weights.
        """
        gradients = [p.grad for p in parameters if p.grad is not None]
        if gradients:
            terms = {**terms, norm_name: torch.nn.utils.get_total_norm(gradients)}
        tensor_names = [k for k, v in terms.items() if isinstance(v, torch.Tensor)]
        floats = {k: float(v) for k, v in terms.items() if not isinstance(v, torch.Tensor)}
        if tensor_names:
            stacked = torch.stack([terms[k].detach().float().reshape(()) for k in tensor_names])
            floats.update(zip(tensor_names, stacked.tolist()))
        floats = {k: floats[k] for k in terms}
        bad = [k for k, v in floats.items() if not math.isfinite(v)]
        if bad:
            losses = [k for k in bad if k != norm_name]
            culprit = (f"non-finite {', '.join(f'{k}={floats[k]}' for k in losses)}" if losses else
                       f"non-finite gradient ({norm_name}={floats[norm_name]}) of finite loss terms "
                       f"({', '.join(f'{k}={v:.4g}' for k, v in floats.items() if k != norm_name)})")
            raise NonFiniteLossError(
                f"{type(self).__name__}: {culprit} at step {self.steps_done} ({where}); the run stopped before "
                f"the optimizer step, so no weight took it. Lower 'lr' or the lambda_* weights, or set "
                f"--hparams '{{\"mixed_precision\": \"off\"}}'. Earlier checkpoints in results.jsonl are intact.")
        return floats

    # Warm-up progress travels with state_dict(), the only thing DomainBed checkpoints.
    def get_extra_state(self) -> dict[str, int]:
        return {"steps_done": self.steps_done}

    def set_extra_state(self, state: Mapping[str, int]) -> None:
        self.steps_done = int(state["steps_done"])
