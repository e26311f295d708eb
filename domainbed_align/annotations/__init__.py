"""Annotation masks: how they travel with the images and how a method reads them.

The one protocol (the shape marker, the sentinel, the rule, the split, what a degenerate mask is);
:mod:`domainbed_align.annotations.folder` reads mask folders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import torch

# A sample's annotation channel filled with this value means "no mask for this image" (for mask folders with gaps;
# no dataset of this release produces it).
MISSING_ANNOTATION = -1.0

# A degenerate mask: a mean under EMPTY_MASK keeps (almost) no pixel, over FULL_MASK (almost) every pixel; either way
# the mask selects nothing. Here because both readers need them: the collapse monitor
# (:mod:`domainbed_align.methods.monitor`, as the masker trains) and the run records
# (:func:`domainbed_align.runs.records.degenerate_mask`, a run's final mask), siblings that may not import each other.
EMPTY_MASK = 0.02
FULL_MASK = 0.98


class ShapeWithMaskChannel(tuple):
    """A dataset's ``input_shape`` whose last channel is the ground-truth mask (our datasets with ``gt_masks``).

    The marker is how an annotation method knows the extra channel is there: ``gt_masks: true`` on a dataset without
    masks (e.g. upstream's Debug28) would otherwise make it read the last colour channel as a mask. It pickles as a
    plain tuple (model.pkl stays loadable with ``weights_only``); checkpoints re-mark it from the run's hparams.
    """

    has_mask_channel = True

    def __reduce__(self) -> tuple:
        return (tuple, (tuple(self),))


def wants_mask_channel(hparams: Mapping[str, Any]) -> bool:
    """A run with these hparams gets its annotation masks as the inputs' last channel: ``gt_masks`` true (datasets
    with their own masks) or a mask folder (``mask_dir``). The one statement of the rule: datasets append the
    channel by it, methods split it off by it, checkpoints and evaluation rebuild a run's input shape by it."""
    return hparams.get("gt_masks", False) is True or bool(hparams.get("mask_dir"))


def has_mask_channel(input_shape: Sequence[int]) -> bool:
    """``input_shape`` is a dataset's shape marked as carrying the mask channel (:class:`ShapeWithMaskChannel`)."""
    return bool(getattr(input_shape, "has_mask_channel", False))


def split(inputs: torch.Tensor, image_channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images ``[N, image_channels, H, W]``, masks ``[N, 1, H, W]`` or None): the mask channel split off when
    ``inputs`` carries it (one channel more than the images), else the inputs unchanged and None."""
    if inputs.dim() == 4 and inputs.shape[1] == image_channels + 1:
        return inputs[:, :-1], inputs[:, -1:]
    return inputs, None
