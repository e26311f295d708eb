"""Grad-CAM explanations of a trained classifier, a whole batch at a time (for figures and explanation metrics).

``algorithm.explain(images[, labels])`` gives min-max normalised Grad-CAMs of the true (or predicted) class, the
maps ALIGN's classifier step aligns with the mask, detached. :class:`CudaGraphExplainer` gives the same maps on a
GPU by replaying one captured CUDA graph per input shape: an eval forward of a ResNet-18 is ~100 small kernels,
and launching them one by one from Python may cost as much as running them (on an H200 our eager bf16 Grad-CAM was
no faster than fp32, a sign of launch-bound work; ``python -m domainbed_align.bench --device cuda`` measures both).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from domainbed_align.methods.backbones import eval_mode
from domainbed_align.errors import ExplanationInputError
from domainbed_align.methods.gradcam import normalize_per_sample, true_class_scores


def check_explanation_inputs(images: Any, labels: Any, in_channels: int, num_classes: int,
                             model_device: torch.device) -> None:
    """One clear error for images or labels that cannot be explained, instead of an indexing, device or
    convolution error deep inside the network (reads the labels' range: one host sync)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != in_channels:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ExplanationInputError(f"images must be a tensor [N, {in_channels}, H, W], as DomainBed's datasets "
                                    f"give them; got {got}.")
    if images.device != model_device:
        raise ExplanationInputError(f"images are on {images.device} but the model is on {model_device}; move "
                                    f"one of them (images.to({str(model_device)!r}) or algorithm.to(...)).")
    if labels is None:
        return
    if (not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (images.shape[0],)
            or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool):
        got = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ExplanationInputError(f"labels must be an integer tensor [{images.shape[0]}] of class indices (one "
                                    f"per image), or None for the predicted classes; got {got}.")
    if labels.numel():
        low, high = (int(v) for v in torch.stack([labels.min(), labels.max()]).tolist())
        if low < 0 or high >= num_classes:
            raise ExplanationInputError(f"labels must be class indices in [0, {num_classes}); got values from "
                                        f"{low} to {high}.")


def grad_cam_explanations(classifier: nn.Module, images: torch.Tensor,
                          labels: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised Grad-CAMs ``[N, h, w]`` (float32, no graph) of ``classifier`` (a ``CamClassifier``) for class
    ``labels[i]``, or each image's predicted class when ``labels`` is None.

    Always in eval mode (BatchNorm's running statistics, no dropout: the model as it predicts), whatever the
    current mode, which is restored: explaining never changes the model.
    """
    if labels is not None:
        labels = labels.long()  # uint8 would index the linear layer's rows as a mask; gather needs int64
    with eval_mode(classifier):
        _, maps = classifier.forward_with_cams(images, labels, differentiable=False)
    return normalize_per_sample(maps.float())


def input_gradient_saliency(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SGT's saliency ``[N, H, W]`` (float32, no graph): d logit_{labels[i]} / dx, signed, averaged over channels,
    in eval mode (restored afterwards), as its code's ``Saliency(model).attribute(x, y, abs=False).mean(1)``.

    Samples are independent in eval mode, so the gradient of the summed true-class logits is each sample's own.
    """
    with eval_mode(classifier), torch.enable_grad():
        inputs = images.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(true_class_scores(classifier(inputs), labels.long()).sum(), inputs)
    return gradient.float().mean(dim=1)


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    images: torch.Tensor  # static input the graph reads
    labels: torch.Tensor | None
    maps: torch.Tensor  # static output the graph writes


class CudaGraphExplainer:
    """``algorithm.explain`` replayed as a CUDA graph: the same maps, without eager mode's per-kernel launches.

    One graph per input shape, dtype and labels-given, captured on its first call (after a few eager calls on a
    side stream, as CUDA-graph capture requires). The graph reads the parameters in place, so optimiser steps and
    ``load_state_dict`` between calls are seen; when the parameters' storage changes (``.to()``, a new model) or
    the precision changes, it is captured anew. Inputs on the CPU simply go to ``algorithm.explain``.
    Each graph keeps its own memory (about one eval forward's activations for its batch shape).
    """

    warmup_calls = 3

    def __init__(self, algorithm: Any) -> None:
        self.algorithm = algorithm
        self._graphs: dict[tuple, _Captured] = {}
        self._storage: tuple[int, ...] = ()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if not (isinstance(images, torch.Tensor) and images.is_cuda):
            return self.algorithm.explain(images, labels)
        self.algorithm.check_explanation_inputs(images, labels)
        images = self.algorithm.prepare_images(self.algorithm.split_annotations(images)[0])
        if labels is not None:
            labels = labels.to(images.device)
        classifier = self.algorithm.classifier
        storage = tuple(t.data_ptr() for t in itertools.chain(classifier.parameters(), classifier.buffers()))
        if storage != self._storage:  # graphs of the old tensors would read freed memory
            self._graphs.clear()
            self._storage = storage
        key = (tuple(images.shape), images.dtype, images.device, labels is None,
               self.algorithm.hparams["mixed_precision"], self.algorithm.hparams["channels_last"])
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(images, labels)
        captured.images.copy_(images)
        if labels is not None:
            captured.labels.copy_(labels)
        captured.graph.replay()
        return captured.maps.clone()  # the next replay overwrites the static output

    def _run(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        # No autocast cache inside a graph: cached casts would outlive the capture that allocated them.
        with self.algorithm.autocast(images, cache_enabled=False):
            return grad_cam_explanations(self.algorithm.classifier, images, labels)

    def _capture(self, images: torch.Tensor, labels: torch.Tensor | None) -> _Captured:
        static_images = images.clone()  # clone keeps the memory format
        static_labels = None if labels is None else labels.clone()
        current = torch.cuda.current_stream(images.device)
        side = torch.cuda.Stream(device=images.device)
        side.wait_stream(current)
        # Eager warm-up on a side stream (cuDNN/cuBLAS set-up must not happen during capture).
        with torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                self._run(static_images, static_labels)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            maps = self._run(static_images, static_labels)
        return _Captured(graph, static_images, static_labels, maps)
