"""Annotation masks from a folder, for any image-folder dataset (and the TextureMNIST family).

Layout: one 8-bit grayscale PNG per image, at the image's own size, at the image's path relative to the dataset's
folder with the suffix replaced by ``.png``: VLCS's ``VLCS/Caltech101/bird/img.jpg`` has its mask at
``<mask_dir>/Caltech101/bird/img.png`` (0 = background, 255 = object; soft values allowed). TextureMNIST's images
have no files: theirs are ``<mask_dir>/<environment>/<index, 5 digits>.png``. ``python -m domainbed_align.masks
export`` writes this layout from an ALIGN run; SAM pseudo-masks saved this way are read the same.

Given by the hparam ``mask_dir`` of the annotation methods, the masks become the last input channel exactly as our
datasets' own (:mod:`domainbed_align.annotations`): the trainer splits it off before any network sees an input. The
training environments need every mask (a missing one is refused when the dataset is built, before training); the
test environments' masks are never read (their channel is :data:`~domainbed_align.annotations.MISSING_ANNOTATION`), and
their images go through the dataset's own transform, unchanged.

DomainBed augments training images (random resized crop, flip, colour jitter, grayscale): the image's transform is
rebuilt with torchvision's ``transforms.v2``, which applies each geometric step to the image and its
``tv_tensors.Mask`` with the same random parameters (masks resampled nearest-neighbour, torchvision's rule for
masks) and leaves the mask out of the photometric ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from domainbed_align.errors import DomainbedAlignError
from domainbed_align.annotations import MISSING_ANNOTATION, ShapeWithMaskChannel

MASK_SUFFIX = ".png"
MANIFEST = "manifest.json"  # written by `masks export`: the ALIGN run the masks come from
_SHOWN = 5  # missing files named in an error
_SAMPLED = 16  # masks read whole before training, to catch 0/1-valued files


class MaskFolderError(DomainbedAlignError, FileNotFoundError):
    """A mask folder that is missing, incomplete, or holds a mask that cannot be used."""


def reads_annotations(hparams: dict) -> bool:
    """Whether the run is an annotation method's: the registry puts ``annotation_method`` into their hparams only. A
    sweep's --hparams reach every algorithm (DomainBed's own too): the others must keep their plain images."""
    return hparams.get("annotation_method") is True


def mask_dir_of(hparams: dict) -> str:
    """The run's mask folder ('' for none, and for every algorithm that reads no annotations)."""
    if not reads_annotations(hparams):
        return ""
    folder = hparams.get("mask_dir", "")
    if not isinstance(folder, str):
        raise MaskFolderError(f"hparam 'mask_dir' must be a folder path (a string), got {folder!r}.")
    return os.path.expanduser(folder)


def mask_path(mask_dir: str | os.PathLike, key: str) -> Path:
    """Where the mask of the image with layout key ``key`` (its relative path without suffix) lives."""
    return Path(mask_dir) / f"{key}{MASK_SUFFIX}"


def image_folder_keys(environment: Any) -> list[str]:
    """Layout keys of an ImageFolder-like environment (``samples`` of (path, label) and ``root``, its folder):
    ``<environment folder>/<path inside it, without suffix>``."""
    root = Path(environment.root)
    return [(Path(root.name) / Path(path).relative_to(root)).with_suffix("").as_posix()
            for path, _ in environment.samples]


def environment_keys(environment: Any) -> list[str]:
    """The layout keys of every sample of ``environment`` (ours define ``mask_keys``; image folders have samples)."""
    if hasattr(environment, "mask_keys"):
        return list(environment.mask_keys)
    if hasattr(environment, "samples") and hasattr(environment, "root"):
        return image_folder_keys(environment)
    raise MaskFolderError(f"{type(environment).__name__} environments have no image files to mirror: mask folders "
                          f"work for image-folder datasets (DomainBed's MultipleEnvironmentImageFolder) and ours.")


def check_complete(mask_dir: str | os.PathLike, keys: Sequence[str], where: str,
                   sizes: Iterable[tuple[int, int]]) -> None:
    """Refuse, before training, a folder that lacks any of ``keys``' masks, holds one whose header cannot be read or
    whose size differs from its image's (``sizes``: each image's (width, height)), or whose masks are 0/1-valued
    instead of 0/255: one error naming the first few files. Reads two image headers per image, and a few masks."""
    from PIL import Image

    if not Path(mask_dir).is_dir():
        raise MaskFolderError(f"mask_dir {str(mask_dir)!r} is not a folder ({where}); give the folder that "
                              f"`python -m domainbed_align.masks export` wrote, or your own masks in its layout.")
    missing = [key for key in keys if not mask_path(mask_dir, key).is_file()]
    if missing:
        shown = ", ".join(str(mask_path(mask_dir, key)) for key in missing[:_SHOWN])
        raise MaskFolderError(
            f"mask_dir {str(mask_dir)!r} lacks {len(missing)} of the {len(keys)} masks of {where}, e.g. {shown}. "
            f"Every training image needs one (the image's relative path, suffix {MASK_SUFFIX}); re-export or "
            f"complete the folder.")
    wrong = []
    for key, size in zip(keys, sizes):
        path = mask_path(mask_dir, key)
        try:
            with Image.open(path) as mask:  # lazy: the header only
                if mask.size != tuple(size):
                    wrong.append(f"{path} is {mask.size[0]}x{mask.size[1]}, its image {size[0]}x{size[1]}")
        except (OSError, ValueError) as error:
            wrong.append(f"{path} cannot be read ({type(error).__name__})")
    if wrong:
        raise MaskFolderError(f"{len(wrong)} masks of {where} in {str(mask_dir)!r} cannot be used: "
                              f"{'; '.join(wrong[:_SHOWN])}. Masks are 8-bit PNGs at their image's own size.")
    peaks = [int(read_mask(mask_path(mask_dir, key)).max()) for key in keys[:_SAMPLED]]
    if peaks and max(peaks) == 1:
        raise MaskFolderError(f"the masks of {where} in {str(mask_dir)!r} hold 0/1 values (e.g. "
                              f"{mask_path(mask_dir, keys[0])}): they would read as at most 1/255; save them as "
                              f"0 (background) / 255 (object).")


def check_provenance(mask_dir: str | os.PathLike, dataset: str, test_envs: Sequence[int]) -> None:
    """Refuse masks exported from an ALIGN run that trained on one of this run's test environments (its masker
    would carry that domain into training) or on another dataset, when the folder's manifest says so."""
    manifest_path = Path(mask_dir) / MANIFEST
    if not manifest_path.is_file():
        return  # the user's own masks (e.g. SAM's): nothing to check
    try:
        manifest = json.loads(manifest_path.read_text())
        source, held_out = manifest["dataset"], set(manifest["test_envs"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MaskFolderError(f"{manifest_path} is damaged ({type(error).__name__}); export the masks again.") from None
    if source != dataset:
        raise MaskFolderError(f"the masks in {str(mask_dir)!r} were exported from a {source} run, not {dataset}.")
    seen = [e for e in test_envs if e not in held_out]
    if seen:
        raise MaskFolderError(
            f"the masks in {str(mask_dir)!r} come from an ALIGN run ({manifest.get('model')}) that trained on "
            f"environment(s) {seen}, this run's test environment(s): its masker carries that domain into training. "
            f"Export the masks of an ALIGN run that held {seen} out.")


def read_mask(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The mask at ``path`` as uint8 ``[1, H, W]``; ``size`` (width, height) is its image's, checked."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if size is not None and image.size != size:
                raise MaskFolderError(f"mask {str(path)!r} is {image.size[0]}x{image.size[1]} but its image is "
                                      f"{size[0]}x{size[1]}: masks are at their image's own size; resize it.")
            array = np.array(image.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise MaskFolderError(f"mask {str(path)!r} cannot be read ({type(error).__name__}: {error}); replace it with "
                              f"an 8-bit grayscale PNG.") from None
    return torch.from_numpy(array).unsqueeze(0)


def _header_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def joint_transform(transform: Any) -> Any:
    """``transform`` (a torchvision v1 ``Compose`` of the steps DomainBed's image datasets use) as the v2 pipeline
    that applies its geometric steps to an image and its mask alike. An unknown step is refused: guessing whether
    it moves pixels could misalign masks."""
    from torchvision import transforms as v1
    from torchvision.transforms import v2

    steps = transform.transforms if isinstance(transform, v1.Compose) else [transform]
    converted: list[Any] = []
    for step in steps:
        if isinstance(step, v1.RandomResizedCrop):
            converted.append(v2.RandomResizedCrop(step.size, scale=step.scale, ratio=step.ratio,
                                                  interpolation=step.interpolation, antialias=step.antialias))
        elif isinstance(step, v1.Resize):
            converted.append(v2.Resize(step.size, interpolation=step.interpolation, max_size=step.max_size,
                                       antialias=step.antialias))
        elif isinstance(step, v1.CenterCrop):
            converted.append(v2.CenterCrop(step.size))
        elif isinstance(step, v1.RandomHorizontalFlip):
            converted.append(v2.RandomHorizontalFlip(step.p))
        elif isinstance(step, v1.RandomVerticalFlip):
            converted.append(v2.RandomVerticalFlip(step.p))
        elif isinstance(step, v1.ColorJitter):
            converted.append(v2.ColorJitter(step.brightness, step.contrast, step.saturation, step.hue))
        elif isinstance(step, v1.RandomGrayscale):
            converted.append(v2.RandomGrayscale(step.p))
        elif isinstance(step, v1.ToTensor):
            converted.extend([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])  # masks stay uint8
        elif isinstance(step, v1.Normalize):
            converted.append(v2.Normalize(step.mean, step.std))
        else:
            raise MaskFolderError(f"the dataset's transform has a step masks cannot follow: {step!r}; mask folders "
                                  f"support DomainBed's (Resize, RandomResizedCrop, flips, ColorJitter, "
                                  f"RandomGrayscale, ToTensor, Normalize).")
    return v2.Compose(converted)


class MaskedImageEnvironment(Dataset):
    """An image-folder environment whose samples carry their mask as a last channel (or the missing marker)."""

    def __init__(self, environment: Any, mask_dir: str, read_masks: bool) -> None:
        self.samples = list(environment.samples)
        self.targets = [label for _, label in self.samples]
        self.classes = getattr(environment, "classes", None)
        self.root = environment.root
        self.transform = environment.transform
        self.mask_dir = mask_dir
        self.read_masks = read_masks
        self.keys = image_folder_keys(environment)
        self.joint = joint_transform(environment.transform) if read_masks else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image
        from torchvision import tv_tensors

        path, label = self.samples[index]
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        if not self.read_masks:
            x = self.transform(image)
            return torch.cat([x, torch.full_like(x[:1], MISSING_ANNOTATION)]), label
        mask = read_mask(mask_path(self.mask_dir, self.keys[index]), size=image.size)
        x, mask = self.joint(image, tv_tensors.Mask(mask))
        return torch.cat([x, mask.as_subclass(torch.Tensor).float() / 255.0]), label


def attach_mask_folder(dataset: Any, test_envs: Sequence[int], hparams: dict) -> None:
    """Give an image-folder dataset (``datasets`` of ImageFolder-like environments, ``input_shape``) the masks of
    ``hparams['mask_dir']``: each environment is wrapped, and ``input_shape`` gains the marked mask channel. Nothing
    changes without a mask folder or for an algorithm that reads none (:func:`mask_dir_of`)."""
    mask_dir = mask_dir_of(hparams)
    if not mask_dir:
        return
    name = type(dataset).__name__
    check_provenance(mask_dir, name, test_envs)
    for index, environment in enumerate(dataset.datasets):
        if index not in test_envs:
            check_complete(mask_dir, image_folder_keys(environment),
                           f"{name}'s training environment {Path(environment.root).name!r}",
                           (_header_size(path) for path, _ in environment.samples))
    dataset.datasets = [MaskedImageEnvironment(environment, mask_dir, read_masks=index not in test_envs)
                        for index, environment in enumerate(dataset.datasets)]
    channels, height, width = dataset.input_shape
    dataset.input_shape = ShapeWithMaskChannel((channels + 1, height, width))
