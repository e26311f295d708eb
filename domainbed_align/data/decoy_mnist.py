"""Decoy-MNIST (Ross, Hughes and Doshi-Velez, IJCAI 2017; ``dtak/rrr``, ``rrr/decoy_mnist.py``) as DomainBed datasets.

The reference's ``augment(image, digit, mult=25)`` greys a 4x4 patch in one corner of a 28x28 MNIST digit at level
``255 - 25 * digit``: rows ``0..3`` or ``-1..-4`` by one ``Bern(0.5)`` draw (``np.random.rand() < 0.5`` picks the
first), then columns likewise by a second draw. Its training split (MNIST train) uses the true digit's level, so
the patch predicts the label perfectly; its test split (MNIST t10k) uses a random digit's level
(``np.random.choice`` of the ten digits, drawn before the two Bern draws), so a model that reads the patch fails
there. Its explanation annotation A marks the patch (RRR penalises input gradients there). :func:`decoy_split` does
exactly this per image, in the reference's draw order, from its own ``RandomState`` instead of numpy's global one
(tested against a transcription of ``augment`` on fixed seeds).

Environments (the reference's split mapped onto DomainBed's): ``decoy_a`` and ``decoy_b`` are disjoint samples of
MNIST train with the training rule (two training environments, so leave-one-domain-out selection can be shown beside
training-domain validation); ``randomized`` is a sample of MNIST t10k with the test rule. **Train with test_envs
including 2 and never on ``randomized``.** ``DecoyMNIST`` takes ``N_PER_ENV`` = 2,000 images per environment (a
2-core CPU evaluates every environment at every checkpoint); ``DecoyMNISTFull`` the reference's sizes (30,000 +
30,000 training digits, all 10,000 test digits).

Inputs: one channel, ``pixel / 255`` (as DomainBed's MNIST datasets; no normalisation: a masked-out pixel is black,
MNIST's background). Annotations (the mask channel, ``gt_masks``, on by default here): 1 everywhere but the patch,
i.e. RRR's A = 1 - mask is exactly the patch; every annotation method gets this same mask (the information the
benchmark's authors gave RRR: "the patch is irrelevant"). For evaluation each environment also has ``mask(i)``, the
digit's strokes (pixel > 0), and ``decoy(i)``, the patch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from domainbed_align.annotations import ShapeWithMaskChannel
from domainbed_align.errors import HParamError

from .datasets import _MultiEnv, load_mnist, wants_gt_masks

SIDE = 28
PATCH = 4
MULT = 25  # the reference's mult: the patch's grey level is 255 - MULT * digit
N_TRAIN_DIGITS = 60000  # load_mnist: MNIST train first, then t10k


def decoy_level(digit: int) -> int:
    """The patch's grey level for ``digit`` (the reference's ``255 - mult * digit``)."""
    return 255 - MULT * int(digit)


def add_decoy(image: np.ndarray, digit: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """(image with its patch, the patch as a bool [28, 28]): the corner by two Bern(0.5) draws from ``rng``, rows
    first (``rand() < 0.5``: the first four), then columns; the level is ``decoy_level(digit)``."""
    forward, backward = [0, 1, 2, 3], [-1, -2, -3, -4]
    rows = forward if rng.rand() < 0.5 else backward
    cols = forward if rng.rand() < 0.5 else backward
    out, patch = image.copy(), np.zeros(image.shape, dtype=bool)
    index = np.ix_(rows, cols)
    out[index] = decoy_level(digit)
    patch[index] = True
    return out, patch


def decoy_split(images: np.ndarray, labels: np.ndarray, randomize: bool,
                rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images with patches uint8 [N, 28, 28], patches bool [N, 28, 28], patch digits int [N]) for one split, image by
    image in order: with ``randomize`` (the test rule) a random digit ``rng.choice(10)`` first, then the patch."""
    out, patches, digits = np.empty_like(images), np.zeros(images.shape, dtype=bool), np.empty(len(images), np.int64)
    for i, (image, label) in enumerate(zip(images, labels)):
        digits[i] = rng.choice(10) if randomize else label
        out[i], patches[i] = add_decoy(image, digits[i], rng)
    return out, patches, digits


class DecoyEnvironment(Dataset):
    """One environment: ``(x, y)`` with x ``[1, 28, 28]`` in [0, 1] (plus the annotation channel with gt_masks)."""

    def __init__(self, images: np.ndarray, patches: np.ndarray, digits: np.ndarray, labels: np.ndarray,
                 clean: np.ndarray, gt_masks: bool, name: str) -> None:
        self.images = torch.from_numpy(images)  # uint8 [N, 28, 28], patch included
        self.patches = torch.from_numpy(patches)  # bool [N, 28, 28]
        self.decoy_digits = digits  # the digit each patch's level encodes (the label in training environments)
        self.labels = labels.astype(np.int64)
        self.clean = torch.from_numpy(clean)  # uint8 [N, 28, 28], the MNIST digit without its patch
        self.gt_masks = gt_masks
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        """The image in [0, 1], float [1, 28, 28]."""
        return self.images[i].float()[None] / 255.0

    def mask(self, i: int) -> torch.Tensor:
        """The digit's strokes (pixel > 0 before the patch, outside the patch), float [1, 28, 28] in {0, 1}: what
        evaluate's foreground mass and the masker's IoU are scored against."""
        return ((self.clean[i] > 0) & ~self.patches[i]).float()[None]

    def decoy(self, i: int) -> torch.Tensor:
        """The patch, float [1, 28, 28] in {0, 1}: evaluate's decoy mass."""
        return self.patches[i].float()[None]

    def annotation(self, i: int) -> torch.Tensor:
        """The training annotation: 1 everywhere but the patch (RRR's A = 1 - annotation = the patch)."""
        return 1.0 - self.decoy(i)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.image(i)
        if self.gt_masks:
            x = torch.cat([x, self.annotation(i)], 0)
        return x, int(self.labels[i])


class DecoyMNIST(_MultiEnv):
    """Decoy-MNIST: environments ``decoy_a``, ``decoy_b`` (training rule) and ``randomized`` (test rule); see the
    module doc. Deterministic: fixed seeds, independent of DomainBed's trial seed."""
    ENVIRONMENTS = ["decoy_a", "decoy_b", "randomized"]
    INPUT_SHAPE = (1, SIDE, SIDE)
    N_PER_ENV: int | None = 2000  # None: the reference's sizes (N_TRAIN_PER_ENV per training env, all of t10k)
    N_TRAIN_PER_ENV = 30000
    SEED = 2017
    CHECKPOINT_FREQ = 100

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None) -> None:
        hparams = hparams or {}
        if hparams.get("mask_dir"):
            raise HParamError(f"hparam 'mask_dir' is {hparams['mask_dir']!r}: {type(self).__name__} has its own "
                              f"annotation (the patch is irrelevant); drop mask_dir.")
        self.gt_masks = wants_gt_masks(hparams)
        images, labels = load_mnist(root)
        train_pool = np.random.RandomState(self.SEED).permutation(N_TRAIN_DIGITS)
        test_pool = N_TRAIN_DIGITS + np.random.RandomState(self.SEED + 1).permutation(len(labels) - N_TRAIN_DIGITS)
        n_train = self.N_PER_ENV or self.N_TRAIN_PER_ENV
        n_test = self.N_PER_ENV or len(test_pool)
        pools = [train_pool[:n_train], train_pool[n_train:2 * n_train], test_pool[:n_test]]
        self.datasets = []
        for e, (name, index) in enumerate(zip(self.ENVIRONMENTS, pools)):
            rng = np.random.RandomState(self.SEED + 10 + e)
            decoyed, patches, digits = decoy_split(images[index], labels[index], name == "randomized", rng)
            env = DecoyEnvironment(decoyed, patches, digits, labels[index], images[index], self.gt_masks, name)
            env.digit_index = index  # position in the 70k MNIST digits (train then t10k), for analysis
            self.datasets.append(env)
        c, h, w = self.INPUT_SHAPE
        self.input_shape = ShapeWithMaskChannel((c + 1, h, w)) if self.gt_masks else (c, h, w)
        self.num_classes = 10


class DecoyMNISTFull(DecoyMNIST):
    """Decoy-MNIST at the reference's sizes: 30,000 + 30,000 training digits (all of MNIST train), 10,000 test."""
    N_PER_ENV = None
    CHECKPOINT_FREQ = 1000  # DomainBed evaluates all 70,000 digits at each checkpoint
