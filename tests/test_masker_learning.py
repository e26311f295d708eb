"""The masker learns what the classifier reads: a learning test, in seconds on a CPU.

Every image carries two equally visible patches whose sign is the label, in two colourings; a fixed classifier
reads only one of them. Trained with ALIGN's own masker step (defaults but for a quicker ``masker_lr``), the mask
must cover the patch the classifier reads and not the other, which the image alone cannot tell apart from it.
"""

import pytest
import torch
from torch import nn

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods.align import ALIGN
from domainbed_align.report.metrics import mask_iou

SIZE = 32
PATCHES = {"A": (slice(4, 12), slice(4, 12)), "B": (slice(20, 28), slice(18, 26))}  # 64 of 1024 pixels each
COLOURS = {"A": (1.0, 1.0, 1.0), "B": (1.0, -1.0, 1.0)}


class ReadsOnePatch(nn.Module):
    """Two-class logits from the mean of one patch (a model that uses exactly that region)."""

    def __init__(self, patch: str) -> None:
        super().__init__()
        self.rows, self.cols = PATCHES[patch]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        evidence = images[:, :, self.rows, self.cols].mean(dim=(1, 2, 3))
        return torch.stack([-2 * evidence, 2 * evidence], dim=1)


def _batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randn(n, 3, SIZE, SIZE, generator=generator)
    sign = (2 * labels - 1).float().view(-1, 1, 1, 1)
    for name, (rows, cols) in PATCHES.items():
        colour = torch.tensor(COLOURS[name]).view(1, 3, 1, 1)
        images[:, :, rows, cols] = sign * colour * (1 + 0.1 * torch.randn(n, 3, 8, 8, generator=generator))
    return images, labels


def _patch_mask(name: str) -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE)
    mask[PATCHES[name]] = 1
    return mask


@pytest.mark.parametrize("read, ignored", [("A", "B"), ("B", "A")])
def test_the_masker_finds_the_region_the_classifier_reads(read, ignored):
    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("ALIGN", "Debug28", warmup_steps=0, masker_warmup_steps=0, masker_lr=3e-3)
    algorithm = ALIGN((3, SIZE, SIZE), 2, 1, hparams)
    algorithm.classifier = ReadsOnePatch(read)  # frozen: masker_step never steps the classifier
    generator = torch.Generator().manual_seed(0)
    for _ in range(120):
        algorithm.masker_step(*_batch(32, generator))
    images, _ = _batch(64, torch.Generator().manual_seed(99))  # unseen images
    with torch.no_grad():
        masks = algorithm.masker(images).squeeze(1)
    target, other = (_patch_mask(name).expand_as(masks) for name in (read, ignored))
    found = mask_iou(masks, target).mean().item()
    all_ones = mask_iou(torch.ones_like(masks), target).mean().item()  # 1/16
    assert found >= 3 * all_ones, (found, all_ones)
    assert mask_iou(masks, other).mean().item() < found / 3  # the equally visible patch it does not read
    assert 0.02 < masks.mean().item() < 0.5  # neither empty nor everything


class ReadsNothing(nn.Module):
    """A classifier whose output does not depend on the image: the masker's fidelity term has no gradient, the case a
    weak single-domain classifier approaches (issue 29: p_y(x*M) and p_y(x*(1-M)) barely differ)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], 2) + 0.0 * images.sum()


@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_without_fidelity_signal_sparsity_empties_the_mask_unless_it_stops_at_a_floor(floor):
    """Issue 29's mechanism in miniature: with nothing for the fidelity term to find, the published sparsity term
    (floor 0) drives the mask under EMPTY_MASK (the collapse the monitor reports); with sparsity_floor the mask stays
    near the floor instead (a one-sided floor, relu(mean - floor), fails this: Adam's momentum carries the masker
    past the floor and nothing brings it back)."""
    from domainbed_align.annotations import EMPTY_MASK

    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("ALIGN", "Debug28", warmup_steps=0, masker_warmup_steps=0, masker_lr=3e-3,
                                          sparsity_floor=floor)
    algorithm = ALIGN((3, SIZE, SIZE), 2, 1, hparams)
    algorithm.classifier = ReadsNothing()
    generator = torch.Generator().manual_seed(0)
    means = [algorithm.masker_step(*_batch(16, generator))["mask_mean"] for _ in range(300)]
    assert means[0] > 0.3  # a fresh masker keeps about half
    if floor == 0.0:
        assert means[-1] < EMPTY_MASK / 2, means[-1]
    else:
        assert 0.8 * floor < min(means[-50:]) and max(means[-50:]) < 2 * floor, (min(means[-50:]), max(means[-50:]))
