"""The shared trainer of the explanation-guided family, under DomainBed's Algorithm contract.

:class:`ExplanationGuidedAlgorithm` owns the machinery: the timm classifier from the one factory, its optimizer,
mixed precision, the step's shared quantities (computed once into a :class:`~domainbed_align.methods.step.Step`:
logits, the batched differentiable Grad-CAM of the true class, DRE's same-class mixes, input gradients), DRE's mixup
term, the check that stops a diverged step before its optimizer step, the collapse warnings and the conversion of
every loss term to Python floats. A method declares what its loss reads (``uses_gradcam``, ``uses_mixup``,
``needs_input_gradient``, ``uses_gt_masks``) and overrides one small hook, :meth:`explanation_loss`, a function of
the step. ALIGN, which adds masker steps, writes its own :meth:`update` from the same pieces. The class imports no
DomainBed: the registration hook mixes ``domainbed.algorithms.Algorithm`` in when DomainBed is imported.

Annotations cannot leak: with ``gt_masks`` our datasets append the mask as a last input channel; the trainer
splits it off in ``update``, ``predict`` and ``explain`` before any network sees an input, and only methods that
set ``uses_gt_masks`` may have it at all (the others refuse ``gt_masks``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from domainbed_align.annotations import has_mask_channel, wants_mask_channel
from domainbed_align.annotations import split as split_mask_channel
from domainbed_align.errors import HParamError, NonFiniteLossError
from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods import precision
from domainbed_align.methods import step as step_lib
from domainbed_align.methods.backbones import NO_GRADCAM, build_classifier
from domainbed_align.methods.explain import check_explanation_inputs, grad_cam_explanations
from domainbed_align.methods.losses import dre_mixup_loss, same_class_partners
from domainbed_align.methods.monitor import CollapseMonitor
from domainbed_align.methods.step import Step

Minibatches = Sequence[tuple[torch.Tensor, torch.Tensor]]
# A loss and its terms: (weighted total, terms reported under the same keys every step).
Terms = tuple[torch.Tensor | float, dict[str, torch.Tensor | float]]

NO_ANNOTATIONS = ("{name} trains on annotation masks, but this run has none (hparam 'gt_masks' is false, or the "
                  "dataset has no masks): its explanation loss is zero and it trains as plain ERM. Give a mask folder "
                  "(hparam mask_dir) or use a dataset with masks (TextureMNIST, SpuriousTextureMNIST, DecoyMNIST).")


def overflow_key(optimizer_name: str) -> str:
    """The results.jsonl key of an optimizer's skipped fp16 steps: ``fp16_overflow`` (classifier),
    ``masker_fp16_overflow`` (ALIGN's masker)."""
    return "fp16_overflow" if optimizer_name == "classifier" else f"{optimizer_name}_fp16_overflow"


class ExplanationGuidedAlgorithm(nn.Module):
    """Base of TimmERM, DRE, ALIGN and the explanation-guided baselines.

    DomainBed contract: ``__init__(input_shape, num_classes, num_domains, hparams)``; ``update(minibatches,
    unlabeled=None)`` does one optimisation step on the concatenated training environments and returns Python
    floats; ``predict(x)`` returns logits. Domain-adaptation ``unlabeled`` batches are ignored.
    """

    name = ""  # its registry name (set by registry.register_algorithm)
    # What the method's loss reads, computed once per step into its Step (methods.step.compute):
    uses_gradcam = False  # the training Grad-CAM of the true class (Step.raw_cams, Step.cams)
    uses_mixup = False  # DRE's same-class mixes (Step.mixup) and DRE's term in the loss (needs uses_gradcam)
    uses_gt_masks = False  # annotations (Step.annotations); the other methods must never see the mask channel
    needs_input_gradient = False  # the input gradient of the summed log-probabilities (Step.input_gradient)
    explanation_term = ""  # the results.jsonl key of the method's own explanation loss (figures' curves)
    # Extra diagnostic floats in update()'s report (ALIGN: each masker term's gradient norm); the per-step trace
    # (upstream.step_trace) switches it on. Never changes a step.
    diagnostics = False

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
        # With masks (gt_masks, or a mask folder) the dataset's last channel is the mask: no network sees it.
        self.mask_channel = self.uses_gt_masks and wants_mask_channel(self.hparams)
        if self.mask_channel and not has_mask_channel(input_shape):
            setting = "mask_dir is set" if self.hparams["mask_dir"] else "gt_masks is true"
            raise HParamError(
                f"hparam {setting} for {self.name}, but the dataset's input shape {tuple(input_shape)} has no mask "
                f"channel (TextureMNIST, SpuriousTextureMNIST and DecoyMNIST give their own; image-folder datasets "
                f"take mask_dir): {self.name} would read the last colour channel as a mask. Drop it from --hparams (the "
                f"method then trains as plain ERM); building it by hand, pass the dataset's own input_shape.")
        self.monitor = CollapseMonitor(type(self).__name__)
        if has_mask_channel(input_shape) and not self.mask_channel:
            raise HParamError(
                f"the dataset appends a mask channel (input shape {tuple(input_shape)}) but {self.name} "
                f"{'reads no annotations' if not self.uses_gt_masks else 'has gt_masks false and no mask_dir'}: the "
                f"mask would reach its network. Build it with the dataset of its own hparams (DomainBed's train.py "
                f"does), or drop annotation_method from --hparams.")
        if not self.uses_gt_masks and hparams.get("mask_dir"):
            self.monitor.warn_once("mask_dir_ignored", 0, f"{self.name} reads no annotations: hparam mask_dir "
                                   f"{hparams['mask_dir']!r} is ignored (a sweep's --hparams reach every algorithm; "
                                   f"only annotation methods read it).")
        self.in_channels = input_shape[0] - int(self.mask_channel)  # image channels, what every network gets
        h = self.hparams
        self.classifier = build_classifier(h, num_classes, (self.in_channels, *input_shape[1:]))
        if self.uses_gradcam and not self.classifier.has_gradcam:
            raise HParamError(NO_GRADCAM.format(what=f"{self.name}'s training loss and evaluate's metrics"))
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=h["lr"],
                                          weight_decay=h["weight_decay"])
        self.steps_done = 0
        self._grad_scalers: dict[str, torch.amp.GradScaler] = {}  # fp16 only: one per optimizer (see step_optimizer)

    # --- the hooks a method overrides ---------------------------------------------------------------
    @classmethod
    def check_run_length(cls, hparams: Mapping[str, Any], steps: int) -> None:
        """Raise HParamError when a run of ``steps`` update() calls would never train this method's own loss
        (sweeps and train.py ask before any data is loaded). Every step does here; ALIGN starts after warm-ups."""

    def explanation_loss(self, step: Step) -> Terms:
        """The method's weighted loss beyond CE (and DRE's term, which ``uses_mixup`` adds), from ``step``.

        Returns (weighted total added to the classifier loss, terms to report under the same keys every step).
        """
        return 0.0, {}

    def cross_entropy_weight(self) -> float:
        """The weight of CE in the classifier loss (1; CARE trades it against its term: 1 - alpha)."""
        return 1.0

    # --- DomainBed contract -------------------------------------------------------------------------
    def update(self, minibatches: Minibatches, unlabeled: Any = None) -> dict[str, float]:
        images, labels, annotations = self.training_batch(minibatches)
        with self.autocast(images):
            step = self.compute_step(images, labels, annotations)
            loss, terms = self.classifier_loss(step)
        floats = self.classifier_step(loss, terms, images)
        return self.finish_update(floats)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        images = self.prepare_images(self.split_annotations(images)[0])
        with self.autocast(images):
            return self.classifier(images).float()

    def explain(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Grad-CAM explanations ``[N, h, w]`` in [0, 1] (float32, detached) of class ``labels[i]``, by default
        each image's predicted class, at the Grad-CAM stage's resolution, in the trainer's precision.

        Always explains the model as it predicts in eval mode (BatchNorm running statistics, no dropout), whatever
        the current mode, and changes nothing (the mode is restored).
        :class:`domainbed_align.methods.explain.CudaGraphExplainer` gives the same maps faster on a GPU.
        """
        self.check_explanation_inputs(images, labels)
        images = self.prepare_images(self.split_annotations(images)[0])
        with self.autocast(images):
            return grad_cam_explanations(self.classifier, images, labels)

    def check_explanation_inputs(self, images: Any, labels: Any) -> None:
        """Raise one ExplanationInputError naming what is wrong with ``images`` or ``labels``."""
        model_device = next(self.classifier.parameters()).device
        channels = self.in_channels  # or with the run's mask channel, which explain() splits off
        if self.mask_channel and isinstance(images, torch.Tensor) and images.dim() == 4:
            channels += int(images.shape[1] == self.in_channels + 1)
        check_explanation_inputs(images, labels, channels, self.num_classes, model_device)

    # --- the pieces of a training step (update() above; ALIGN's own update) -------------------------
    def training_batch(self, minibatches: Minibatches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(images, labels, annotations or None) of the concatenated environments: the mask channel split off,
        the images in the classifier's memory layout."""
        images, annotations = self.split_annotations(torch.cat([x for x, _ in minibatches]))
        labels = torch.cat([y for _, y in minibatches])
        if self.uses_gt_masks and annotations is None:
            self.monitor.warn_once("no_annotations", self.steps_done, NO_ANNOTATIONS.format(name=type(self).__name__))
        return self.prepare_images(images), labels, annotations

    def compute_step(self, images: torch.Tensor, labels: torch.Tensor, annotations: torch.Tensor | None) -> Step:
        """The step's shared quantities, everything this method's class declares it reads, in the classifier's
        one forward (call it inside :meth:`autocast`). DRE's pairing is drawn first, as every run has drawn it."""
        h = self.hparams
        mixup_draw = self.sample_mixup(labels) if self.uses_mixup else None
        cam = step_lib.TrainingCam(h["train_cam_relu"], h["train_cam_weight_gradient"]) if self.uses_gradcam else None
        return step_lib.compute(self.classifier, images, labels, annotations, cam=cam, mixup_draw=mixup_draw,
                                input_gradient=self.needs_input_gradient)

    def base_loss(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """CE (times :meth:`cross_entropy_weight`) plus, with ``uses_mixup``, lambda_reg times DRE's mixup term;
        with the step's bookkeeping terms (blank Grad-CAMs, annotated share)."""
        cross_entropy = F.cross_entropy(step.logits.float(), step.labels)
        weight = self.cross_entropy_weight()
        loss, terms = (cross_entropy if weight == 1.0 else weight * cross_entropy), {"ce": cross_entropy}
        if self.uses_gradcam:  # the standard (ReLU) map's blank share, whichever map is trained on
            terms["zero_cams"] = step.zero_cams
        if self.uses_gt_masks:
            terms["annotated"] = step.annotated_fraction
        if self.uses_mixup:
            mixup = step.mixup
            regulariser = dre_mixup_loss(step.cams, step.cams[mixup.partners], mixup.cams, mixup.weights,
                                         mixup.logits, step.labels, self.num_classes)
            loss = loss + self.hparams["lambda_reg"] * regulariser["loss"]
            terms.update({f"reg_{key}" if key != "loss" else "reg": value for key, value in regulariser.items()})
        return loss, terms

    def classifier_loss(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """:meth:`base_loss` plus the method's :meth:`explanation_loss`, with all their terms."""
        loss, terms = self.base_loss(step)
        explanation, explanation_terms = self.explanation_loss(step)
        return loss + explanation, {**terms, **explanation_terms}

    def classifier_step(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor | float],
                        images: torch.Tensor) -> dict[str, float]:
        """The classifier's backward and optimizer step on ``loss``; returns ``loss``, ``terms`` and the gradient
        norm as checked floats (:meth:`step_optimizer`)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaled(loss, "classifier", images).backward()
        return self.step_optimizer(self.optimizer, "classifier", {"loss": loss, **terms},
                                   self.classifier.parameters(), "grad_norm", "classifier step")

    def finish_update(self, floats: dict[str, float]) -> dict[str, float]:
        """The end of every update: the collapse monitor sees the step, which is then counted."""
        self.monitor.observe(self.steps_done, floats)
        floats["diverged"] = float(self.monitor.diverged)  # every step, so results.jsonl marks a diverged run
        self.steps_done += 1
        return floats

    def sample_mixup(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DRE's pairing: a random same-class partner per sample and lam ~ Beta(alpha, alpha) per pair."""
        alpha = self.hparams["mixup_alpha"]
        concentration = torch.full((labels.numel(),), alpha, device=labels.device)
        # Sampled on the device. validate_args=False: the default check of alpha > 0 is a host sync every step
        # on CUDA, and hparams.validate already refused alpha <= 0 at construction.
        mix_weight = torch.distributions.Beta(concentration, concentration, validate_args=False).sample()
        return same_class_partners(labels, self.num_classes), mix_weight

    # --- machinery ----------------------------------------------------------------------------------
    def split_annotations(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, annotations ``[N, 1, H, W]`` or None): the run's mask channel split off, if it has one and
        ``inputs`` carries it (DomainBed's evaluation loaders do; explanations may pass plain images)."""
        return split_mask_channel(inputs, self.in_channels) if self.mask_channel else (inputs, None)

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the memory layout the classifier runs in (channels_last on CUDA unless switched off); the
        model itself was converted when it moved to the GPU (:meth:`to`)."""
        if images.is_cuda and self.hparams["channels_last"]:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    # DomainBed moves the algorithm once (algorithm.to(device)): on CUDA the weights then also take the
    # channels_last layout the inputs get (hparam channels_last), the layout cuDNN's convolutions run fastest in.
    def to(self, *args: Any, **kwargs: Any) -> ExplanationGuidedAlgorithm:
        """As nn.Module's; on a CUDA device with hparam ``channels_last`` (and no memory_format of the caller's)
        the weights also become channels_last. On the CPU nothing else changes."""
        super().to(*args, **kwargs)
        if "memory_format" not in kwargs:
            self._channels_last_on_cuda()
        return self

    def cuda(self, device: Any = None) -> ExplanationGuidedAlgorithm:
        """As nn.Module's, with :meth:`to`'s channels_last rule."""
        super().cuda(device)
        self._channels_last_on_cuda()
        return self

    def _channels_last_on_cuda(self) -> None:
        if self.hparams["channels_last"] and next(self.classifier.parameters()).is_cuda:
            super().to(memory_format=torch.channels_last)

    def precision(self, device: torch.device) -> str:
        """The precision this run trains in on ``device``: "bf16", "fp16" or "fp32" (:mod:`domainbed_align.methods.precision`)."""
        return precision.resolve(self.hparams["mixed_precision"], device)

    def autocast(self, images: torch.Tensor, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
        """The trainer's precision for work on ``images``: bf16 or fp16 autocast, or nothing (``mixed_precision``).
        ``cache_enabled`` False for CUDA-graph capture, which must not keep autocast's cast weights."""
        return precision.autocast(self.precision(images.device), images.device, cache_enabled)

    def scaled(self, loss: torch.Tensor, optimizer_name: str, images: torch.Tensor) -> torch.Tensor:
        """``loss`` as its backward pass must see it: multiplied by the fp16 gradient scale of ``optimizer_name``'s
        scaler (created on first use), unchanged in bf16 and fp32."""
        scaler = self._grad_scalers.get(optimizer_name)
        if scaler is None:
            scaler = precision.grad_scaler(self.precision(images.device), images.device)
            if scaler is None:
                return loss
            self._grad_scalers[optimizer_name] = scaler
        return scaler.scale(loss)

    def step_optimizer(self, optimizer: torch.optim.Optimizer, optimizer_name: str,
                       terms: Mapping[str, torch.Tensor | float], parameters: Any, norm_name: str,
                       where: str) -> dict[str, float]:
        """After a backward pass of :meth:`scaled`: the checked floats of ``terms`` (:meth:`checked_floats`), then
        the optimizer step. In fp16 the gradients are unscaled first; a step whose gradients overflowed is skipped
        by the scaler (reported as :func:`overflow_key` 1.0, its gradient norm as 0.0), not an error."""
        scaler = self._grad_scalers.get(optimizer_name)
        if scaler is None:
            floats = self.checked_floats(terms, parameters, norm_name, where)
            optimizer.step()
            return floats
        scaler.unscale_(optimizer)
        floats = self.checked_floats(terms, parameters, norm_name, where, gradient_overflow_allowed=True)
        overflow = not math.isfinite(floats[norm_name])
        if overflow:
            floats[norm_name] = 0.0
        floats[overflow_key(optimizer_name)] = float(overflow)
        scaler.step(optimizer)  # skipped by the scaler when unscale_ found an inf or NaN
        scaler.update()
        return floats

    def checked_floats(self, terms: Mapping[str, torch.Tensor | float], parameters: Any, norm_name: str,
                       where: str, gradient_overflow_allowed: bool = False) -> dict[str, float]:
        """The loss terms and the gradient norm of ``parameters`` (as ``norm_name``) as floats, read back in one
        host sync; a non-finite one raises :class:`NonFiniteLossError` naming it, the step and ``where``.

        Called after ``backward()`` and before ``optimizer.step()``, so a diverged step never reaches the weights.
        ``gradient_overflow_allowed`` (fp16 with a scaler): a non-finite gradient of finite losses is returned, not
        raised, for the scaler to skip the step.
        """
        gradients = [p.grad.detach() for p in parameters if p.grad is not None]
        if gradients:  # torch.nn.utils.get_total_norm's value (that function needs torch >= 2.6)
            norms = torch.stack([torch.linalg.vector_norm(gradient) for gradient in gradients])
            terms = {**terms, norm_name: torch.linalg.vector_norm(norms)}
        tensor_names = [k for k, v in terms.items() if isinstance(v, torch.Tensor)]
        floats = {k: float(v) for k, v in terms.items() if not isinstance(v, torch.Tensor)}
        if tensor_names:
            stacked = torch.stack([terms[k].detach().float().reshape(()) for k in tensor_names])
            floats.update(zip(tensor_names, stacked.tolist()))
        floats = {k: floats[k] for k in terms}
        bad = [k for k, v in floats.items() if not math.isfinite(v)]
        if gradient_overflow_allowed and bad == [norm_name]:
            return floats
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
