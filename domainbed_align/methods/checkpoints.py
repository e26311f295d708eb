"""Load what a DomainBed run saved: ``<output_dir>/model.pkl`` (upstream's train.py writes it when a run ends).

Needs no DomainBed and no network: the weights are in the file, so the backbone is built without ImageNet weights.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from domainbed_align.annotations import ShapeWithMaskChannel, wants_mask_channel
from domainbed_align.errors import CheckpointError
from domainbed_align.methods import registry
from domainbed_align.methods.trainer import ExplanationGuidedAlgorithm

# What upstream's save_checkpoint writes (b93c22a).
CHECKPOINT_KEYS = ("args", "model_input_shape", "model_num_classes", "model_num_domains", "model_hparams",
                   "model_dict")


# Hparams that runs saved before they existed lack, with the value that reproduces how those runs trained.
ADDED_LATER = {"mask_dir": "", "annotation_method": True}


def load_algorithm(model_pkl: str | os.PathLike, device: str | torch.device = "cpu") -> ExplanationGuidedAlgorithm:
    """The algorithm of ours saved in a DomainBed ``model.pkl``, with its hparams and warm-up progress, in eval mode.

    Loaded with ``weights_only`` (no code in the file runs); numpy scalars, which DomainBed's random hparam
    draws produce, are the only other types allowed.
    """
    return algorithm_from_checkpoint(read_checkpoint(model_pkl, device), device)


def read_checkpoint(model_pkl: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """The dict upstream's save_checkpoint wrote (``args`` holds the run's train.py arguments), checked to be one
    of our algorithms'; one CheckpointError for a missing, damaged or foreign file."""
    path = Path(model_pkl)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file: give a DomainBed run's model.pkl (train.py writes it into "
                              f"--output_dir when the run ends, unless --skip_model_save).")
    allowing = _allowing_numpy_scalars()  # outside the try: an old torch is not a damaged file
    try:
        with allowing:
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch/pickle/zip raise many types; all mean "not a readable checkpoint"
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path} cannot be read as a DomainBed checkpoint ({type(error).__name__}: "
                              f"{reason}); a run killed while saving leaves a damaged file: run it again.") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a DomainBed model.pkl: it lacks {missing}.")
    name = checkpoint["args"].get("algorithm")
    ours = registry.algorithm_names()
    if name not in ours:
        raise CheckpointError(f"{path} holds a {name!r} model; load_algorithm loads {list(ours)}. Load "
                              f"DomainBed's own algorithms with domainbed.algorithms.get_algorithm_class({name!r}).")
    return checkpoint


def algorithm_from_checkpoint(checkpoint: dict, device: str | torch.device = "cpu") -> ExplanationGuidedAlgorithm:
    """The algorithm of a checkpoint :func:`read_checkpoint` returned, in eval mode on ``device``."""
    # The file has the trained weights; building the backbone must not fetch ImageNet ones.
    saved = checkpoint["model_hparams"]
    name = checkpoint["args"]["algorithm"]
    defined = {spec.name for spec in registry.entry(name).hparams}
    # hparams added after a run was saved, whose value then was this one (no mask folder; the registry's marker)
    added = {key: value for key, value in ADDED_LATER.items() if key in defined and key not in saved}
    hparams = {**saved, **added, "pretrained": False, "pretrained_file": ""}
    shape = tuple(checkpoint["model_input_shape"])
    if "gt_masks" in saved and wants_mask_channel(saved):  # an annotation method's run: its dataset gave the
        # mask channel (its trainer checked it when train.py built it)
        shape = ShapeWithMaskChannel(shape)
    algorithm = registry.algorithm_class(name)(
        shape, checkpoint["model_num_classes"], checkpoint["model_num_domains"], hparams)
    algorithm.load_state_dict(checkpoint["model_dict"])
    # ... but the hparams report how the run was trained.
    algorithm.hparams.update({key: saved[key] for key in ("pretrained", "pretrained_file") if key in saved})
    return algorithm.to(device).eval()


def _allowing_numpy_scalars() -> contextlib.AbstractContextManager:
    """``weights_only`` loading that also accepts :func:`_numpy_scalar_types`: scoped to the load where torch has
    ``safe_globals`` (2.5), process-wide on torch 2.4 (``add_safe_globals``; data types only, so harmless)."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        return scoped(_numpy_scalar_types())
    torch.serialization.add_safe_globals(_numpy_scalar_types())
    return contextlib.nullcontext()


def _numpy_scalar_types() -> list:
    """numpy scalar reconstruction, dtype classes and tuple: data, not code (DomainBed's hparam draws are numpy
    floats)."""
    import _codecs

    import numpy

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    # every dtype's class (numpy.dtypes lists them from numpy 1.25 on; type(dtype) gives them on any numpy)
    dtype_classes = list({type(numpy.dtype(code)) for code in numpy.typecodes["All"]})
    # tuple: a dataset's input_shape with a mask channel (annotations.ShapeWithMaskChannel) pickles as tuple(...);
    # _codecs.encode: numpy 1.x pickles a scalar's bytes through it (str -> bytes, no code)
    return [scalar, numpy.dtype, *dtype_classes, tuple, _codecs.encode]
