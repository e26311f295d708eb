"""Each loss against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from domainbed_align.methods.losses import (alignment_bce, class_group_weights, dre_mixup_loss, dre_sparsity,
                                            floored_sparsity, haics_bce, masker_loss, same_class_partners,
                                            total_variation)


def test_total_variation_by_hand():
    mask = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    # vertical diffs: |0.5-0|, |0.5-1| -> mean 0.5 ; horizontal: |1-0|, |0.5-0.5| -> mean 0.5
    assert total_variation(mask).item() == pytest.approx(1.0)
    assert total_variation(torch.full((2, 1, 3, 3), 0.3)).item() == 0.0


def test_masker_loss_by_hand():
    prob_kept = torch.tensor([0.9, 0.6])
    prob_removed = torch.tensor([0.1, 0.4])
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.0]]]])
    terms = masker_loss(prob_kept, prob_removed, masks, lambda_sparsity=0.5, lambda_smooth=2.0)
    fidelity = ((0.8 - 1) ** 2 + (0.2 - 1) ** 2) / 2  # 0.34
    sparsity = 3 / 8
    # vertical diffs: s0 |0-1|,|0-0| ; s1 |0-1|,|0-1| -> 3/4 ; horizontal: s0 |0-1|,|0-0| ; s1 0,0 -> 1/4
    smooth = 0.75 + 0.25
    assert terms["fidelity"].item() == pytest.approx(fidelity)
    assert terms["sparsity"].item() == pytest.approx(sparsity)
    assert terms["smooth"].item() == pytest.approx(smooth)
    assert terms["distance"].item() == pytest.approx(0.5)
    assert terms["loss"].item() == pytest.approx(fidelity + 0.5 * sparsity + 2.0 * smooth)


def test_floored_sparsity_by_hand_and_its_gradient_turns_at_the_floor():
    # image 0 keeps 1/4 of its pixels, image 1 keeps 1/2; floor 0.3: image 0 is 0.05 under it, image 1 0.2 over it
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.0]]]], requires_grad=True)
    value = floored_sparsity(masks, 0.3)
    assert value.item() == pytest.approx((0.05 + 0.2) / 2)
    (gradient,) = torch.autograd.grad(value, masks)
    published = torch.autograd.grad(masks.abs().mean(), masks)[0]  # 1 / (N * H * W) on every pixel
    assert torch.allclose(gradient[1], published[1])  # over the floor: the published push down
    assert torch.allclose(gradient[0], -published[0])  # under it: the same push, up
    # floor 0 is the published term (the loss takes the published expression itself then: bit for bit)
    assert floored_sparsity(masks, 0.0).item() == pytest.approx(masks.mean().item())
    terms = masker_loss(torch.tensor([0.9, 0.6]), torch.tensor([0.1, 0.4]), masks, 0.5, 2.0, sparsity_floor=0.0)
    assert terms["sparsity"].item() == masks.mean().item()
    floored = masker_loss(torch.tensor([0.9, 0.6]), torch.tensor([0.1, 0.4]), masks, 0.5, 2.0, sparsity_floor=0.3)
    assert floored["sparsity"].item() == pytest.approx(0.125)
    assert floored["loss"].item() == pytest.approx(terms["loss"].item() - 0.5 * (3 / 8 - 0.125))


def test_alignment_bce_by_hand_and_clamped():
    cam = torch.tensor([[[0.25, 0.5]]])
    mask = torch.tensor([[[1.0, 0.0]]])
    expected = -(math.log(0.25) + math.log(0.5)) / 2
    assert alignment_bce(cam, mask).item() == pytest.approx(expected, rel=1e-6)
    # exact 0 and 1 in a min-max map: finite value and finite gradient thanks to the clamp
    extreme = torch.tensor([[[0.0, 1.0]]], requires_grad=True)
    value = alignment_bce(extreme, torch.tensor([[[1.0, 0.0]]]), eps=1e-4)
    assert value.item() == pytest.approx(-math.log(1e-4), rel=1e-4)
    value.backward()
    assert torch.isfinite(extreme.grad).all()


@pytest.mark.parametrize("bce_loss", [alignment_bce, lambda cam, mask: haics_bce(cam, mask, torch.ones(2))])
def test_bce_losses_switch_autocast_off_around_the_bce(bce_loss, monkeypatch):
    """autocast refuses BCE on CUDA (CPU bf16 autocast leaves it alone, so a dtype check here would pass without
    the guard): the guarded call must see autocast off."""
    functional = alignment_bce.__globals__["F"]  # torch.nn.functional, as losses.py calls it
    original, seen = functional.binary_cross_entropy, []

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(*args, **kwargs)

    monkeypatch.setattr(functional, "binary_cross_entropy", spy)
    cam = torch.rand(2, 3, 3, dtype=torch.bfloat16)
    mask = torch.rand(2, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        value = bce_loss(cam, mask)
    assert seen == [False] and value.dtype == torch.float32


def test_dre_mixup_loss_by_hand():
    # Two samples of class 0, one of class 1, none of class 2: DRE divides by the dataset's 3 classes.
    cam = torch.tensor([[[1.0, 0.0], [0.5, 0.0]], [[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.5]]])
    partners = torch.tensor([1, 0, 2])  # sample 2 is its own partner
    lam = torch.tensor([0.5, 0.25, 1.0])
    cam_mixed = torch.tensor([[[0.5, 0.5], [0.25, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]])
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0], [0.0, math.log(3.0), 0.0]])
    labels = torch.tensor([0, 0, 1])
    terms = dre_mixup_loss(cam, cam[partners], cam_mixed, lam, logits, labels, num_classes=3)
    # L1 per class group (DRE's L1Loss): group 0 targets [[.5,.5],[.25,0]] (|diff| 0) and [[.75,.25],[.375,0]]
    # (|diff| sum 1.375) -> 1.375 / 8; group 1 target = cam 2, |diff| 0.5 on one pixel -> 0.5 / 4.
    consistency = (1.375 / 8 + 0.5 / 4) / 3
    # Matrix 1-norm over (channel, height): each column's largest value, then the mean. Originals: group 0
    # columns [1, 0], [0, 1] -> 0.5, group 1 [1, 0.5] -> 0.75; mixes: group 0 [.5, .5], [0, 0] -> 0.25, group 1 -> 1.
    sparsity = ((0.5 + 0.25) / 2 + (0.75 + 1.0) / 2) / 3
    mixed_ce = ((math.log(3.0) + math.log(2.0)) / 2 - math.log(0.6)) / 3
    assert terms["consistency"].item() == pytest.approx(consistency)
    assert terms["sparsity"].item() == pytest.approx(sparsity)
    assert terms["mixed_ce"].item() == pytest.approx(mixed_ce, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(consistency + 0.5 * sparsity + 0.1 * mixed_ce, rel=1e-6)


def test_dre_sparsity_is_the_matrix_norm_of_dre_code():
    maps = torch.rand(5, 7, 7)
    dre_code = torch.linalg.norm(maps.unsqueeze(1), dim=(1, 2), ord=1)  # DRE's call on [N, 1, 7, 7]: [N, 7]
    assert torch.allclose(dre_sparsity(maps), dre_code.mean(dim=1))
    assert torch.allclose(dre_sparsity(maps), maps.amax(dim=1).mean(dim=1))  # the largest value of each column


def test_class_group_weights_by_hand():
    weights = class_group_weights(torch.tensor([0, 0, 1, 0]), num_classes=4)
    assert weights.tolist() == pytest.approx([1 / 12, 1 / 12, 1 / 4, 1 / 12])


def test_same_class_partners_are_a_uniform_permutation_within_each_class():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 1, 1])
    class_zero = [0, 2, 5]
    seen = {}
    for seed in range(600):
        partners = same_class_partners(labels, 3, torch.Generator().manual_seed(seed))
        assert torch.equal(labels[partners], labels)
        assert sorted(partners.tolist()) == list(range(8))  # a permutation
        assert partners[3].item() == 3  # the only sample of class 2 pairs with itself
        key = tuple(partners[class_zero].tolist())
        seen[key] = seen.get(key, 0) + 1
    # DRE's torch.randperm per class: all 6 orders of a 3-sample class, itself-pairs included, about equally often
    assert len(seen) == 6 and min(seen.values()) > 60 and max(seen.values()) < 140, seen
