"""``python -m domainbed_align.figures``: one PNG of where trained DomainBed runs look, and what ALIGN's masker keeps.

    python -m domainbed_align.figures --model erm_run/model.pkl align_run/model.pkl --out figure.png

Columns are images of one environment (by default the first model's first test environment; the same seeded
subset ``evaluate`` starts with); rows are the images, then per run its true-class Grad-CAM over the image
(``jet`` colours, each map min-max normalised as ``explain`` gives it; an image without colour is a map that is zero
everywhere) and, for ALIGN, the image times its masker's mask (what the masker keeps). Row labels are drawn in the
left margin; the command also prints them. Needs only torch and Pillow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from domainbed_align.errors import CheckpointError, DomainbedAlignError

if TYPE_CHECKING:
    from PIL import Image

MIN_TILE = 112  # small images (56 px) are enlarged so the maps stay readable
LABEL_WIDTH = 150
GAP = 2


def jet(values: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` in [0, 1] -> ``[..., 3, H, W]`` RGB in [0, 1] (the usual "jet": blue, cyan, yellow, red)."""
    values = values.clamp(0, 1).unsqueeze(-3)
    centres = torch.tensor([3.0, 2.0, 1.0], device=values.device).view(3, 1, 1)  # red, green, blue
    return (1.5 - (4 * values - centres).abs()).clamp(0, 1)


def heat_overlay(images: torch.Tensor, maps: torch.Tensor, opacity: float = 0.5) -> torch.Tensor:
    """``images`` ``[N, 3, H, W]`` in [0, 1] with ``maps`` ``[N, h, w]`` in [0, 1] upsampled (bilinear) and drawn over
    them in jet colours, weighted by the map itself, so a zero map leaves the image as it is."""
    upsampled = F.interpolate(maps.unsqueeze(1).float(), size=images.shape[-2:], mode="bilinear",
                              align_corners=False).squeeze(1).clamp(0, 1)
    weight = opacity * upsampled.unsqueeze(1)
    return (1 - weight) * images + weight * jet(upsampled)


def unnormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the datasets' normalisation (ImageNet mean/std, as DomainBed's image datasets use) to [0, 1] RGB."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def figure_rows(runs: Sequence[tuple[Path, dict]], images: torch.Tensor, labels: torch.Tensor,
                device: str) -> list[tuple[str, torch.Tensor]]:
    """``[(row label, [N, 3, H, W] in [0, 1])]``: the images, then each run's Grad-CAM overlay (and ALIGN's mask).
    ``runs``: (model.pkl path, its checkpoint as ``checkpoints.read_checkpoint`` returns it)."""
    from domainbed_align.checkpoints import algorithm_from_checkpoint
    from domainbed_align.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    pictures = unnormalize(images, IMAGENET_MEAN, IMAGENET_STD)
    rows = [("image", pictures)]
    for model_pkl, checkpoint in runs:
        algorithm = algorithm_from_checkpoint(checkpoint, device)
        run = model_pkl.parent.name
        name = algorithm.name if run == algorithm.name else f"{algorithm.name} {run[:8]}"  # sweeps name runs by hash
        rows.append((f"{name}\nGrad-CAM", heat_overlay(pictures, algorithm.explain(images, labels))))
        masker = getattr(algorithm, "masker", None)
        if masker is not None:
            with torch.no_grad(), algorithm.autocast(images):
                masks = masker(algorithm.prepare_images(images)).float()
            rows.append((f"{name}\nimage x mask", pictures * masks))
    return rows


def compose(rows: Sequence[tuple[str, torch.Tensor]], tile: int) -> "Image.Image":
    """One RGB image: a row per entry, its label in the left margin, one ``tile``-px square per image."""
    from PIL import Image, ImageDraw

    count = rows[0][1].shape[0]
    width = LABEL_WIDTH + count * (tile + GAP)
    height = len(rows) * (tile + GAP)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, pictures) in enumerate(rows):
        top = r * (tile + GAP)
        draw.multiline_text((4, top + 4), label, fill="black")
        big = F.interpolate(pictures.float().cpu(), size=(tile, tile), mode="bilinear", align_corners=False)
        for c, picture in enumerate(big.clamp(0, 1)):
            pixels = (picture.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            canvas.paste(Image.fromarray(pixels), (LABEL_WIDTH + c * (tile + GAP), top))
    return canvas


def main(argv: Sequence[str] | None = None) -> int:
    from domainbed_align import evaluate
    from domainbed_align.checkpoints import read_checkpoint

    p = argparse.ArgumentParser(prog="python -m domainbed_align.figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", type=Path, required=True, help="model.pkl of DomainBed runs (one dataset)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--env", type=int, help="environment index (default: the first model's first test environment)")
    p.add_argument("--images", type=int, default=8, help="how many images (columns), default 8")
    p.add_argument("--data_dir", help="where the dataset is (default: the first run's own --data_dir)")
    p.add_argument("--seed", type=int, default=0, help="seeds the image subset (as evaluate's --seed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    options = p.parse_args(argv)
    if options.images < 1:
        p.error("--images must be at least 1")
    if evaluate.device_problem(options.device):
        p.error(evaluate.device_problem(options.device))
    try:
        runs = [(model_pkl, read_checkpoint(model_pkl, options.device)) for model_pkl in options.model]
        checkpoint = runs[0][1]
        args = checkpoint["args"]
        others = {other["args"]["dataset"] for _, other in runs[1:]}
        if others - {args["dataset"]}:
            raise CheckpointError(f"the runs must share one dataset to be shown on the same images; {options.model[0]} "
                                  f"is {args['dataset']}, the others {sorted(others)}.")
        env = args["test_envs"][0] if options.env is None else options.env
        dataset = evaluate.dataset_of_run(checkpoint, options.data_dir)
        if not 0 <= env < len(dataset.datasets):
            raise CheckpointError(f"--env {env} is not an environment of {args['dataset']} "
                                  f"(0 to {len(dataset.datasets) - 1}: {', '.join(dataset.ENVIRONMENTS)}).")
        environment = dataset.datasets[env]
        chosen = evaluate.seeded_subset(list(range(len(environment))), options.images,
                                        torch.Generator().manual_seed(options.seed))
        samples = [environment[i] for i in chosen]
        images = torch.stack([x for x, _ in samples]).to(options.device)
        labels = torch.tensor([int(y) for _, y in samples], device=options.device)
        rows = figure_rows(runs, images, labels, options.device)
    except DomainbedAlignError as error:
        print(f"domainbed-align: error: {error}", file=sys.stderr)
        return 1
    tile = max(MIN_TILE, images.shape[-1])
    compose(rows, tile).save(options.out)
    print(f"{options.out}: {args['dataset']} environment {env} ({dataset.ENVIRONMENTS[env]}), images {chosen}; rows: "
          + "; ".join(label.replace("\n", " ") for label, _ in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
