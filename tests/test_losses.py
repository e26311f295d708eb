"""Each loss against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from domainbed_align.losses import (alignment_bce, dre_mixup_loss, masker_loss, same_class_partners,
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


def test_alignment_bce_runs_in_float32_under_autocast():
    cam = torch.rand(2, 3, 3, dtype=torch.bfloat16)
    mask = torch.rand(2, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = alignment_bce(cam, mask)
    assert value.dtype == torch.float32


def test_dre_mixup_loss_by_hand():
    cam = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    cam_partner = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])
    cam_mixed = torch.tensor([[[0.5, 0.5]], [[0.0, 0.0]]])
    lam = torch.tensor([0.5, 0.25])
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 0])
    terms = dre_mixup_loss(cam, cam_partner, cam_mixed, lam, logits, labels)
    # targets: s0 0.5*[1,0]+0.5*[0,1] = [.5,.5] -> |diff| 0,0 ; s1 .25*[0,1]+.75*[1,0] = [.75,.25] -> .75,.25
    consistency = (0 + 0 + 0.75 + 0.25) / 4
    sparsity = (1 + 1 + 1 + 0) / 8  # originals sum 2 over 4 pixels, mixes sum 1 over 4
    mixed_ce = (math.log(2.0) + -math.log(0.75)) / 2
    assert terms["consistency"].item() == pytest.approx(consistency)
    assert terms["sparsity"].item() == pytest.approx(sparsity)
    assert terms["mixed_ce"].item() == pytest.approx(mixed_ce, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(consistency + 0.5 * sparsity + 0.1 * mixed_ce, rel=1e-6)


def test_same_class_partners():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 1, 1])
    seen_other = set()
    for seed in range(20):
        partners = same_class_partners(labels, 3, torch.Generator().manual_seed(seed))
        assert torch.equal(labels[partners], labels)
        alone = partners[3].item()
        assert alone == 3  # the only sample of class 2 pairs with itself
        others = [i for i in range(8) if i != 3]
        assert all(partners[i].item() != i for i in others)
        seen_other.add(tuple(partners.tolist()))
    assert len(seen_other) > 1  # the pairing is random
