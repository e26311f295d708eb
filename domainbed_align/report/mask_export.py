"""``python -m domainbed_align.masks export``: an ALIGN run's masker masks as a mask folder for any other method.

The paper's annotation baselines train on SAM pseudo-masks where a dataset has none; the first sanity check it
suggests, "SAM masks vs ALIGN masks", becomes: export an ALIGN run's masks, then train GRADIA (or any annotation
method) on them with ``--hparams '{"mask_dir": "<folder>"}'``.

Each image of the chosen environments goes through the run's dataset as train.py built it, without augmentation
(e.g. DomainBed's 224x224 resize), through the masker; the soft mask is resized (bilinear) back to the image's own
size and written as an 8-bit grayscale PNG (round(255 m)) in :mod:`domainbed_align.annotations.folder`'s layout, so
it lines up with the original file whatever transform a later run applies. ``manifest.json`` records the run, its
step and what was written. The folder is built beside ``--output_dir`` under a temporary name and renamed into place
complete (:mod:`domainbed_align.atomic`): a killed export leaves no folder that could pass for the user's own masks.
``--output_dir`` must be new (or empty): masks written into an existing folder, e.g. an image-folder root, would be
loaded as images. On datasets with ground-truth masks (the TextureMNIST family) the exported masks are
read back and their IoU with the ground truth (mask > 0.5) is reported per environment, mean ± standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from domainbed_align import annotations, atomic
from domainbed_align.report import metrics
from domainbed_align.methods.checkpoints import algorithm_from_checkpoint, read_checkpoint
from domainbed_align.errors import CheckpointError, DomainbedAlignError
from domainbed_align.annotations.folder import environment_keys, mask_path, read_mask
from domainbed_align.errors import print_error

COMMAND = "domainbed-align masks"  # how its errors are prefixed (errors.print_error)

MANIFEST = "manifest.json"


class MaskExportError(DomainbedAlignError):
    """An --output_dir that masks export must not write into."""


def image_size(environment: Any, index: int, transformed: torch.Tensor) -> tuple[int, int]:
    """(width, height) of sample ``index``'s own image: its file's for image folders, else the tensor's."""
    if hasattr(environment, "samples"):
        from PIL import Image

        with Image.open(environment.samples[index][0]) as image:
            return image.size
    return int(transformed.shape[-1]), int(transformed.shape[-2])


def write_mask(path: Path, mask: torch.Tensor, size: tuple[int, int]) -> None:
    """Write a soft mask ``[1, H, W]`` in [0, 1] resized (bilinear) to ``size`` (width, height) as an 8-bit PNG."""
    from PIL import Image

    width, height = size
    resized = F.interpolate(mask[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (resized.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    Image.fromarray(pixels).save(path)  # 2-D uint8: mode L


def export(model_pkl: Path, output_dir: Path, data_dir: str | None = None, envs: str = "all",
           batch_size: int = 64, device: str = "cpu", progress: bool = True) -> dict:
    """Write the masks of ``model_pkl``'s masker for its dataset's environments (``envs``: 'all', 'train' for the
    training environments or 'test') into ``output_dir``; returns the manifest (with IoUs where the dataset has
    ground truth)."""
    from domainbed_align.report.evaluate import dataset_of_run

    output_dir = Path(output_dir)
    _check_new_folder(output_dir)  # before the model is even read: a refusal costs nothing
    checkpoint = read_checkpoint(model_pkl, device)
    algorithm = algorithm_from_checkpoint(checkpoint, device)
    if not hasattr(algorithm, "masker"):
        raise CheckpointError(f"{model_pkl} holds a {checkpoint['args']['algorithm']} model, which has no masker: "
                              f"export the masks of an ALIGN run.")
    test_envs = list(checkpoint["args"]["test_envs"])
    dataset = dataset_of_run(checkpoint, data_dir)
    chosen = [e for e in range(len(dataset.datasets))
              if envs == "all" or (envs == "test") == (e in test_envs)]
    manifest: dict[str, Any] = {
        "model": str(model_pkl), "algorithm": checkpoint["args"]["algorithm"], "dataset": checkpoint["args"]["dataset"],
        "step": algorithm.steps_done, "test_envs": test_envs, "format": "8-bit grayscale PNG, soft (round(255 m)), "
        "at each image's own size (bilinear)", "environments": {}}
    try:
        with atomic.building_folder(output_dir) as building:
            _write_masks(algorithm, dataset, chosen, test_envs, building, manifest, batch_size, device, progress)
            atomic.write_text(building / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    except atomic.FolderExists:  # it appeared while the masks were computed
        _check_new_folder(output_dir)
        raise
    return manifest


def _check_new_folder(output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        what = "is a file" if not output_dir.is_dir() else "exists and is not empty"
        raise MaskExportError(
            f"--output_dir {str(output_dir)!r} {what}: masks export writes a new folder (masks written among other "
            f"files, e.g. into an image folder, would be read as images). Give a new --output_dir, or remove that "
            f"one first (rm -r {shlex.quote(str(output_dir))}) if it is an earlier export.")


def _write_masks(algorithm: Any, dataset: Any, chosen: list[int], test_envs: list[int], output_dir: Path,
                 manifest: dict, batch_size: int, device: str, progress: bool) -> None:
    from tqdm import tqdm

    for env in chosen:
        environment, name = dataset.datasets[env], dataset.ENVIRONMENTS[env]
        keys = environment_keys(environment)
        ious: list[float] = []
        ground_truth = metrics.has_ground_truth(environment)
        starts = range(0, len(environment), batch_size)
        for start in tqdm(starts, desc=f"masks of {name}", disable=not progress, file=sys.stderr):
            indices = range(start, min(start + batch_size, len(environment)))
            images = torch.stack([environment[i][0] for i in indices]).to(device)
            with torch.no_grad():
                # the run's dataset without the mask channel (dataset_of_run): split() keeps the images as they are
                masks = algorithm.masker(annotations.split(images, algorithm.in_channels)[0]).float()
            for i, mask in zip(indices, masks):
                path = mask_path(output_dir, keys[i])
                write_mask(path, mask, image_size(environment, i, images[0]))
                if ground_truth:  # score what was written, read back
                    written = read_mask(path).float() / 255.0
                    ious.append(float(metrics.mask_iou(written, environment.mask(i).to(written))[0]))
        entry: dict[str, Any] = {"images": len(environment), "split": "test" if env in test_envs else "train"}
        if ious:
            entry["iou"] = float(np.mean(ious))
            entry["iou_se"] = float(np.std(ious, ddof=1) / math.sqrt(len(ious))) if len(ious) > 1 else 0.0
        manifest["environments"][name] = entry


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed_align.masks", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    e = commands.add_parser("export", help="write an ALIGN run's masks as a mask folder")
    e.add_argument("--model", type=Path, required=True, help="the ALIGN run's model.pkl")
    e.add_argument("--output_dir", type=Path, required=True, help="the mask folder to write (hparam mask_dir)")
    e.add_argument("--data_dir", help="where the dataset is (default: the run's own --data_dir)")
    e.add_argument("--envs", choices=("all", "train", "test"), default="all",
                   help="which environments (default all; training on the masks needs the training ones)")
    e.add_argument("--batch_size", type=int, default=64)
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    if options.batch_size < 1:
        parser().error("--batch_size must be at least 1")
    try:
        manifest = export(options.model, options.output_dir, options.data_dir, options.envs, options.batch_size,
                          options.device)
    except DomainbedAlignError as error:
        print_error(f"{error}", COMMAND)
        return 1
    except OSError as error:  # e.g. a full disk: the temporary folder is gone, --output_dir untouched
        print_error(f"masks export failed ({error}); {str(options.output_dir)!r} was not "
                    f"written.", COMMAND)
        return 1
    for name, entry in manifest["environments"].items():
        iou = f"; IoU with the ground truth {entry['iou']:.3f} ± {entry['iou_se']:.3f}" if "iou" in entry else ""
        print(f"{name} ({entry['split']}): {entry['images']} masks{iou}")
    print(f"wrote {options.output_dir} (step {manifest['step']} of {manifest['model']}); train on it with "
          f"--hparams '{{\"mask_dir\": \"{options.output_dir}\"}}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
