"""Explanation metrics against hand-computed values, a per-image loop written independently, and torchvision's blur."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from domainbed_align.report import metrics
from domainbed_align.errors import MetricInputError


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def close(value):
    """Equal up to float32 rounding (the metrics compute in float32)."""
    return pytest.approx(value, abs=1e-6)


def sum_model(images: torch.Tensor) -> torch.Tensor:
    """Two classes: logit 0 is the sum of the image, logit 1 is 0, so p(class 0) = sigmoid(sum)."""
    return torch.stack([images.sum(dim=(1, 2, 3)), torch.zeros(images.shape[0])], dim=1)


# One 2x2 single-channel image [[1, 2], [3, 4]], saliency ranking its pixels 4, 3, 2, 1; substrate zeros.
IMAGE = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
SALIENCY = torch.tensor([[[0.1, 0.2], [0.7, 0.9]]])
ZEROS = torch.zeros_like(IMAGE)
CLASS0 = torch.tensor([0])


def test_ranks_follow_saliency_and_break_ties_in_the_fixed_scrambled_order():
    ranks = metrics.saliency_ranks(torch.tensor([[[0.1, 0.9], [0.5, 0.5]]]), (2, 2))[0].tolist()
    first_of_tie = 2 if metrics.tie_order(4).tolist().index(2) < metrics.tie_order(4).tolist().index(3) else 3
    assert ranks[1] == 0 and ranks[0] == 3 and ranks[first_of_tie] == 1 and ranks[5 - first_of_tie] == 2
    # A 1x2 map upsampled to 2x4: columns 1, 0.75, 0.25, 0 (bilinear, align_corners=False); the two rows tie.
    ranks = metrics.saliency_ranks(torch.tensor([[[1.0, 0.0]]]), (2, 4)).view(2, 4)
    assert [sorted(column) for column in ranks.T.tolist()] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_a_blank_map_ranks_pixels_in_no_spatial_order():
    ranks = metrics.saliency_ranks(torch.zeros(2, 7, 7), (32, 32)).float()
    assert torch.equal(ranks[0], ranks[1])  # one fixed order, the same for every image
    rows = torch.arange(32).repeat_interleave(32).float()
    correlation = torch.corrcoef(torch.stack([ranks[0], rows]))[0, 1]
    assert abs(correlation) < 0.1  # row-major order would give 1.0
    assert sorted(ranks[0].long().tolist()) == list(range(32 * 32))


def test_sufficiency_and_comprehensiveness_by_hand():
    fractions = (0.25, 0.5)  # top 1 pixel ({4}), top 2 pixels ({4, 3})
    full = sigmoid(10)
    expected_sufficiency = full - (sigmoid(4) + sigmoid(7)) / 2  # only the top pixels kept
    expected_comprehensiveness = full - (sigmoid(6) + sigmoid(3)) / 2  # the top pixels removed
    result = metrics.explanation_metrics(sum_model, IMAGE, SALIENCY, CLASS0, fractions=fractions, steps=4,
                                         substrate=ZEROS)
    assert result["probability"].item() == close(full)
    assert result["sufficiency"].item() == close(expected_sufficiency)
    assert result["comprehensiveness"].item() == close(expected_comprehensiveness)
    assert metrics.sufficiency(sum_model, IMAGE, SALIENCY, CLASS0, fractions, ZEROS).item() == close(
        expected_sufficiency)
    assert metrics.comprehensiveness(sum_model, IMAGE, SALIENCY, CLASS0, fractions, ZEROS).item() == close(
        expected_comprehensiveness)


def test_insertion_curve_and_auc_by_hand():
    curve = metrics.insertion_curve(sum_model, IMAGE, SALIENCY, CLASS0, steps=4, substrate=ZEROS)
    expected = [sigmoid(s) for s in (0, 4, 7, 9, 10)]  # 0..4 pixels inserted, most salient first
    assert curve[0].tolist() == close(expected)
    area = metrics.insertion_auc(sum_model, IMAGE, SALIENCY, CLASS0, steps=4, substrate=ZEROS).item()
    assert area == close((sum(expected) - expected[0] / 2 - expected[-1] / 2) / 4)
    # Two steps insert 0, 2 and 4 pixels.
    curve = metrics.insertion_curve(sum_model, IMAGE, SALIENCY, CLASS0, steps=2, substrate=ZEROS)
    assert curve[0].tolist() == close([sigmoid(0), sigmoid(7), sigmoid(10)])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_the_probability_is_of_the_given_class(dtype):
    class1 = torch.tensor([1], dtype=dtype)  # p(class 1) = 1 - sigmoid(sum)
    curve = metrics.insertion_curve(sum_model, IMAGE, SALIENCY, class1, steps=4, substrate=ZEROS)
    assert curve[0].tolist() == close([1 - sigmoid(s) for s in (0, 4, 7, 9, 10)])


def _loop_reference(model, images, saliency, classes, substrate, fractions, steps):
    """Per image, in numpy: rank the upsampled map's pixels, then build each modified image one at a time."""
    n, channels, height, width = images.shape
    upsampled = torch.nn.functional.interpolate(saliency.unsqueeze(1), size=(height, width), mode="bilinear",
                                                align_corners=False)[:, 0].numpy()
    results = {"sufficiency": [], "comprehensiveness": [], "insertion_auc": []}
    ties = metrics.tie_order(height * width).numpy()  # the documented tie-break, applied independently here
    tie_rank = np.empty_like(ties)
    tie_rank[ties] = np.arange(len(ties))
    for i in range(n):
        order = np.lexsort((tie_rank, -upsampled[i].reshape(-1)))  # by saliency, then by tie order
        image, base = images[i].numpy().reshape(channels, -1), substrate[i].numpy().reshape(channels, -1)

        def prob(pixels_from_image, image=image, base=base, i=i):
            mixed = base.copy()
            mixed[:, pixels_from_image] = image[:, pixels_from_image]
            with torch.no_grad():
                logits = model(torch.from_numpy(mixed).view(1, channels, height, width))
            return torch.softmax(logits, 1)[0, classes[i]].item()

        full = prob(order)
        kept = [prob(order[:max(1, round(k * height * width))]) for k in fractions]
        removed = [prob(order[max(1, round(k * height * width)):]) for k in fractions]
        curve = [prob(order[:round(s * height * width / steps)]) for s in range(steps + 1)]
        results["sufficiency"].append(full - np.mean(kept))
        results["comprehensiveness"].append(full - np.mean(removed))
        results["insertion_auc"].append(np.trapezoid(curve, dx=1 / steps))
    return results


def test_batched_metrics_equal_a_per_image_loop_on_a_small_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(20)  # probabilities far from uniform, so drops are not all ~0
    images = torch.randn(4, 3, 12, 12)
    saliency = torch.rand(4, 3, 3)
    classes = torch.tensor([0, 3, 1, 4])
    fractions, steps = (0.05, 0.2, 0.5), 7  # 144 pixels: 7 steps do not divide them evenly
    ours = metrics.explanation_metrics(model, images, saliency, classes, fractions, steps)
    reference = _loop_reference(model, images, saliency, classes, metrics.blurred(images), fractions, steps)
    for name, values in reference.items():
        assert ours[name].tolist() == pytest.approx(values, abs=1e-5), name
    assert np.ptp(reference["comprehensiveness"]) > 1e-3  # the images really differ


def test_blur_equals_torchvisions_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur

    torch.manual_seed(0)
    images = torch.rand(2, 3, 20, 17)
    expected = gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])
    torch.testing.assert_close(metrics.blurred(images), expected, atol=1e-5, rtol=0)
    constant = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(metrics.blurred(constant), constant)


def test_an_explanation_of_the_pixels_the_model_uses_scores_better():
    # The model reads only the top-left quadrant: a map on it must beat a map on the opposite corner.
    def quadrant_model(images):
        return sum_model(images[:, :, :4, :4] * 3)

    torch.manual_seed(0)
    images = torch.rand(3, 1, 8, 8) + 0.5
    on_target = torch.zeros(3, 2, 2)
    on_target[:, 0, 0] = 1
    off_target = torch.zeros(3, 2, 2)
    off_target[:, 1, 1] = 1
    classes = torch.zeros(3, dtype=torch.long)
    good = metrics.explanation_metrics(quadrant_model, images, on_target, classes, substrate=torch.zeros_like(images))
    bad = metrics.explanation_metrics(quadrant_model, images, off_target, classes, substrate=torch.zeros_like(images))
    assert (good["comprehensiveness"] > bad["comprehensiveness"] + 0.1).all()
    assert (good["sufficiency"] < bad["sufficiency"] - 0.1).all()
    assert (good["insertion_auc"] > bad["insertion_auc"] + 0.1).all()


@pytest.mark.parametrize("change,message", [
    (dict(images=torch.zeros(2, 2, 2)), "images must be a tensor"),
    (dict(saliency=torch.zeros(2, 2, 2)), "one map per image"),
    (dict(saliency=torch.full((1, 2, 2), float("nan"))), "NaN"),
    (dict(classes=torch.tensor([0.0])), "classes must be an integer tensor"),
    (dict(classes=torch.tensor([0, 1])), "classes must be an integer tensor"),
    (dict(substrate=torch.zeros(1, 1, 3, 3)), "substrate must have the images' shape"),
    (dict(fractions=(0.0, 0.5)), "fractions must be numbers in"),
    (dict(fractions=()), "fractions must be numbers in"),
    (dict(steps=0), "steps must be a positive integer"),
])
def test_bad_inputs_get_one_clear_error(change, message):
    arguments = dict(images=IMAGE, saliency=SALIENCY, classes=CLASS0, substrate=ZEROS, fractions=(0.5,), steps=2)
    arguments.update(change)
    with pytest.raises(MetricInputError, match=message):
        metrics.explanation_metrics(sum_model, **arguments)


def test_foreground_mass_by_hand():
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]).expand(3, 2, 2)
    saliency = torch.tensor([[[3.0, 1.0], [0.0, 0.0]],  # 3 of 4 on the foreground pixel
                             [[0.0, 0.0], [0.0, 0.0]],  # blank: no mass anywhere -> 0
                             [[1.0, 1.0], [1.0, 1.0]]])  # uniform: the foreground's share of the image
    assert metrics.foreground_mass(saliency, masks).tolist() == close([0.75, 0.0, 0.25])
    # A 1x2 map upsampled to a 2x4 mask: columns 1, 0.75, 0.25, 0; the mask is the left column.
    mass = metrics.foreground_mass(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 0, 0, 0], [1.0, 0, 0, 0]]]))
    assert mass.item() == close(1 / 2)
    with pytest.raises(MetricInputError, match="one map and one mask per image"):
        metrics.foreground_mass(saliency, masks[:2])


def test_mask_iou_by_hand():
    objects = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]).expand(3, 2, 2)
    masks = torch.tensor([[[0.9, 0.2], [0.6, 0.0]],   # hard: {0, 2} vs {0, 1}: 1 / 3
                          [[1.0, 1.0], [1.0, 1.0]],   # all ones: the object's share, 2 / 4
                          [[0.5, 0.5], [0.0, 0.0]]])  # 0.5 is not > 0.5: an empty prediction, IoU 0
    assert metrics.mask_iou(masks, objects).tolist() == close([1 / 3, 0.5, 0.0])
    # soft: sum(min) / sum(max); sample 0: (0.9 + 0.2) / (1 + 1 + 0.6) ; sample 2: 1 / 2
    assert metrics.mask_iou(masks, objects, threshold=None).tolist() == close([1.1 / 2.6, 0.5, 0.5])
    nothing = torch.zeros(1, 2, 2)
    assert metrics.mask_iou(nothing, nothing).item() == 1.0  # nothing to find, nothing claimed
    with pytest.raises(MetricInputError, match="masks and objects must both be"):
        metrics.mask_iou(masks, objects[:2])
