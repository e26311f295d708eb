"""The baselines' pure losses against hand-computed values, finite differences and captum; their classes on the
shared trainer (each learns what its loss asks)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods import losses
from domainbed_align.methods import registry
from domainbed_align.methods.baselines import GRADIA, RRR, SGT
from domainbed_align.methods.explain import input_gradient_saliency
from domainbed_align.annotations import MISSING_ANNOTATION, ShapeWithMaskChannel


# --- SGT ----------------------------------------------------------------------------------------------------
def test_sgt_masking_replaces_the_lowest_signed_saliency_in_every_channel_within_its_range():
    images = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]], [[10.0, 20.0], [30.0, 40.0]]]])  # [1, 2, 2, 2]
    saliency = torch.tensor([[[0.5, -2.0], [-0.1, 3.0]]])  # lowest two (signed): (0, 1) and (1, 0)
    generator = torch.Generator().manual_seed(0)
    masked = losses.saliency_guided_masking(images, saliency, 0.5, generator)
    uniform = torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    expected = images.clone()
    for c, (low, high) in enumerate([(0.0, 3.0), (10.0, 40.0)]):
        for i, j in [(0, 1), (1, 0)]:
            expected[0, c, i, j] = low + (high - low) * uniform[0, c, i, j]
    assert torch.allclose(masked, expected)
    assert torch.equal(masked[0, :, 0, 0], images[0, :, 0, 0]) and torch.equal(masked[0, :, 1, 1], images[0, :, 1, 1])


def test_sgt_masking_drops_at_least_one_pixel_and_is_per_sample():
    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    saliency = torch.stack([torch.arange(9.0).view(3, 3), -torch.arange(9.0).view(3, 3)])
    masked = losses.saliency_guided_masking(images, saliency, 0.01)  # int(9 * 0.01) = 0 -> at least 1
    changed = (masked != images).flatten(1)
    assert changed[0].tolist() == [True] + [False] * 8  # sample 0: lowest saliency at the first pixel
    assert changed[1].tolist() == [False] * 8 + [True]  # sample 1: at the last


def test_sgt_kl_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    masked = torch.tensor([[0.0, 0.0]])  # q = (1/2, 1/2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert losses.sgt_kl(logits, masked).item() == pytest.approx(expected, rel=1e-6)
    # KLDivLoss(batchmean) of log_softmax(masked), softmax(original), as SGT's code writes it
    reference = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(masked, 1), F.softmax(logits, 1))
    assert losses.sgt_kl(logits, masked).item() == pytest.approx(reference.item(), rel=1e-6)


def test_sgt_saliency_equals_captum_saliency_signed_mean_over_channels():
    from captum.attr import Saliency

    torch.manual_seed(0)
    algorithm = SGT((3, 56, 56), 4, 2, hparams_lib.default_hparams("SGT", "TextureMNIST"))
    images, labels = torch.randn(3, 3, 56, 56), torch.tensor([0, 3, 1])
    ours = input_gradient_saliency(algorithm.classifier, images, labels)
    algorithm.classifier.eval()
    oracle = Saliency(algorithm.classifier).attribute(images, target=labels, abs=False).mean(1)
    algorithm.classifier.train()
    again = input_gradient_saliency(algorithm.classifier, images, labels)  # called in train mode: eval inside
    assert algorithm.classifier.training and torch.equal(again, ours)
    assert torch.allclose(ours, oracle, atol=1e-6) and (ours < 0).any()  # signed


def test_sgt_loss_is_kl_to_the_masked_forward_and_trains_the_original_logits_too():
    torch.manual_seed(0)
    algorithm = SGT((3, 56, 56), 3, 2, hparams_lib.default_hparams("SGT", "TextureMNIST", lambda_sgt=2.0))
    images, labels = torch.randn(6, 3, 56, 56), torch.arange(6) % 3
    clone = copy.deepcopy(algorithm)  # BatchNorm running statistics move with each train-mode forward
    step = algorithm.compute_step(images, labels, None)  # the step's forward comes first, as in update()
    torch.manual_seed(5)
    loss, terms = algorithm.explanation_loss(step)
    (through_logits,) = torch.autograd.grad(loss, step.logits, retain_graph=True)
    assert through_logits.abs().sum() > 0  # the original's logits are not detached
    logits = clone.classifier(images)  # the same passes in the same order, by hand on the clone
    torch.manual_seed(5)  # the same noise
    saliency = input_gradient_saliency(clone.classifier, images, labels)
    masked = losses.saliency_guided_masking(images, saliency, 0.5)
    expected = F.kl_div(F.log_softmax(clone.classifier(masked), 1), F.softmax(logits, 1), reduction="batchmean")
    assert loss.item() == pytest.approx(2.0 * expected.item(), rel=1e-4)
    assert terms["sgt_kl"].item() == pytest.approx(expected.item(), rel=1e-4)
    off = SGT((3, 56, 56), 3, 2, hparams_lib.default_hparams("SGT", "TextureMNIST", sgt_fraction=0.0))
    assert off.explanation_loss(off.compute_step(images, labels, None)) == (0.0, {"sgt_kl": 0.0})


# --- GRADIA, HAICS --------------------------------------------------------------------------------------------
def test_gradia_target_is_opencv_blur_divided_by_max():
    centre = torch.zeros(1, 5, 5)
    centre[0, 2, 2] = 1.0
    assert torch.allclose(losses.gradia_target(centre)[0, 1:4, 1:4],  # kernel [1/4, 1/2, 1/4]^2, over its max
                          torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]), atol=1e-6)
    assert losses.gradia_target(centre)[0, 0].abs().max() == 0
    near_edge = torch.zeros(1, 4, 5)
    near_edge[0, 1, 1] = 1.0  # one pixel off the border: reflect-101 mirrors it into the padding, zero padding not
    padded = np.pad(near_edge[0].numpy(), 1, mode="reflect")  # numpy's "reflect" is OpenCV's BORDER_REFLECT_101
    kernel = np.outer([0.25, 0.5, 0.25], [0.25, 0.5, 0.25])
    blurred = np.array([[(padded[i:i + 3, j:j + 3] * kernel).sum() for j in range(5)] for i in range(4)])
    assert blurred[0, 0] == 0.25  # zero padding would leave 1/16 there
    assert torch.allclose(losses.gradia_target(near_edge)[0], torch.tensor(blurred / blurred.max(),
                                                                           dtype=torch.float32), atol=1e-6)
    assert torch.equal(losses.gradia_target(torch.zeros(1, 3, 3)), torch.zeros(1, 3, 3))  # empty stays empty


def test_gradia_l1_and_haics_bce_average_over_annotated_samples_only():
    cams = torch.tensor([[[0.5, 0.25]], [[1.0, 0.0]], [[0.9, 0.9]]])  # [3, 1, 2]
    targets = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 0.0]]])
    annotated = torch.tensor([1.0, 1.0, 0.0])  # the third sample has no mask: no loss, whatever its map
    l1 = ((0.5 + 0.25) / 2 + 0.0) / 2
    assert losses.gradia_l1(cams, targets, annotated).item() == pytest.approx(l1)
    bce_first = (-math.log(0.5) - math.log(0.75)) / 2
    assert losses.haics_bce(cams, targets, annotated).item() == pytest.approx(bce_first / 2, rel=1e-6)
    assert losses.gradia_l1(cams, targets, torch.zeros(3)).item() == 0.0  # nobody annotated: plain ERM


# --- RRR ---------------------------------------------------------------------------------------------------
def test_rrr_penalty_by_hand():
    gradient = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.0], [0.5, 2.0]]]])  # [1, 2, 2, 2]
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # relevant: the diagonal; penalised: (0, 1), (1, 0)
    expected = 2.0 ** 2 + 3.0 ** 2 + 0.0 ** 2 + 0.5 ** 2  # plain sum of squares, no 1/2, every channel
    assert losses.rrr_penalty(gradient, mask, torch.ones(1)).item() == pytest.approx(expected)
    # a sample without a mask contributes 0 to a mean over the batch, as dtak's A = 0 rows (a sum over the batch)
    two = torch.cat([gradient, 10 * gradient])
    assert losses.rrr_penalty(two, torch.cat([mask, mask]), torch.tensor([1.0, 0.0])).item() == \
        pytest.approx(expected / 2)


def _rrr_double(seed=0):
    torch.manual_seed(seed)
    hparams = hparams_lib.default_hparams("RRR", "TextureMNIST", lambda_rrr=1.0)
    algorithm = RRR(ShapeWithMaskChannel((4, 56, 56)), 3, 2, hparams).double()
    images = torch.randn(4, 3, 56, 56, dtype=torch.float64)
    masks = torch.zeros(4, 1, 56, 56, dtype=torch.float64)
    masks[..., 16:40, 16:40] = 1.0
    return algorithm, images, torch.tensor([0, 1, 2, 0]), masks


def test_rrr_penalty_gradient_matches_finite_differences():
    algorithm, images, labels, masks = _rrr_double()
    algorithm.classifier.eval()  # the penalty as a function of the weights alone (no batch statistics)

    def penalty() -> torch.Tensor:
        return algorithm.explanation_loss(algorithm.compute_step(images, labels, masks))[0]

    parameters = [algorithm.classifier.backbone.conv1.weight, algorithm.classifier.backbone.layer1[0].conv1.weight,
                  algorithm.classifier.backbone.get_classifier().weight]
    gradients = torch.autograd.grad(penalty(), parameters)
    step = 1e-6
    for parameter, gradient in zip(parameters, gradients):
        index = tuple(int(i) for i in torch.nonzero(gradient.abs() == gradient.abs().max())[0])
        original = parameter[index].item()
        values = []
        for shifted in (original + step, original - step, original):
            with torch.no_grad():
                parameter[index] = shifted
            values.append(penalty().item())  # outside no_grad: the penalty is itself a gradient
        up, down, _ = values
        assert gradient[index].item() == pytest.approx((up - down) / (2 * step), rel=1e-4)


def test_rrr_input_gradient_is_of_the_summed_log_probabilities():
    algorithm, images, labels, masks = _rrr_double()
    algorithm.classifier.eval()
    step = algorithm.compute_step(images, labels, masks)
    x = images.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.log_softmax(algorithm.classifier(x), 1).sum(), x)
    assert torch.allclose(step.input_gradient, expected, atol=1e-10)


# --- the classes on the trainer ------------------------------------------------------------------------------
def test_gt_masks_defaults_per_method_and_dataset():
    for name in registry.algorithm_names():
        annotated = registry.entry(name).annotations
        for dataset, has_masks in [("TextureMNIST", True), ("SpuriousTextureMNIST", True), ("VLCSMini", False),
                                   ("Debug28", False), ("PACS", False)]:
            defaults = hparams_lib.default_hparams(name, dataset)
            assert defaults.get("gt_masks", False) is (annotated and has_masks), (name, dataset)
    assert {e.name for e in registry.entries() if e.annotations} == {"GRADIA", "HAICS", "RRR", "RES_G", "RES_L", "CARE"}


# Each method trained from the same start on one fixed batch moves its own explanation term below what the same
# number of TimmERM steps leaves: the loss pulls the model the right way.
LEARNING = {"SGT": "sgt_kl", "GRADIA": "gradia_l1", "HAICS": "haics_bce", "RRR": "rrr_penalty",
            "RES_G": "res_imputation", "RES_L": "res_imputation", "CARE": "care_attention"}
WEIGHT_PREFIXES = ("lambda_", "care_alpha")  # the hparams that weigh a method's term (0: the trainer is ERM)


def _fixed_batch(annotated: bool):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(12, 3, 56, 56, generator=generator)
    labels = torch.arange(12) % 3
    masks = torch.zeros(12, 1, 56, 56)
    for i in range(12):  # a class-coded square: the region that tells the classes apart
        images[i, :, 8:24, 8 + 12 * int(labels[i]):24 + 12 * int(labels[i])] += 2.0
        masks[i, :, 8:24, 8 + 12 * int(labels[i]):24 + 12 * int(labels[i])] = 1.0
    return (torch.cat([images, masks], 1) if annotated else images), labels


@pytest.mark.parametrize("name", sorted(LEARNING))
def test_each_baseline_lowers_its_own_explanation_term_more_than_erm(name):
    cls = registry.algorithm_class(name)
    annotated = registry.entry(name).annotations
    inputs, labels = _fixed_batch(annotated)
    hparams = hparams_lib.default_hparams(name, "TextureMNIST", lr=1e-3)

    def trained(lambda_scale: float):
        torch.manual_seed(0)
        weights = {k: v * lambda_scale for k, v in hparams.items() if k.startswith(WEIGHT_PREFIXES)}
        shape = ShapeWithMaskChannel(inputs.shape[1:]) if annotated else tuple(inputs.shape[1:])
        algorithm = cls(shape, 3, 2, {**hparams, **weights})
        for _ in range(12):
            algorithm.update([(inputs, labels)])
        algorithm.classifier.train()
        images, masks = algorithm.split_annotations(inputs)
        step = algorithm.compute_step(images, labels, masks)
        return algorithm.classifier_loss(step)[1][LEARNING[name]].item()

    with_term, erm_like = trained(1.0), trained(0.0)  # lambda 0: the same trainer, CE only
    assert with_term < erm_like, (name, with_term, erm_like)


# RES's robust term is no progress measure (its threshold moves with the maps, and min-max maps cannot go below
# it on negative cells), so every Grad-CAM annotation method is also held to what all of them are for: more of
# the training Grad-CAM on the annotated region than the same trainer without the term.
@pytest.mark.parametrize("name", ["GRADIA", "HAICS", "RES_G", "RES_L", "CARE"])
def test_each_gradcam_annotation_method_moves_its_map_onto_the_mask(name):
    from domainbed_align.report.metrics import foreground_mass

    cls = registry.algorithm_class(name)
    inputs, labels = _fixed_batch(True)
    hparams = hparams_lib.default_hparams(name, "TextureMNIST", lr=1e-3)

    def mass_on_mask(scale: float) -> float:
        torch.manual_seed(0)
        algorithm = cls(ShapeWithMaskChannel(inputs.shape[1:]), 3, 2,
                        {**hparams, **{k: v * scale for k, v in hparams.items() if k.startswith(WEIGHT_PREFIXES)}})
        for _ in range(12):
            algorithm.update([(inputs, labels)])
        images, masks = algorithm.split_annotations(inputs)
        return foreground_mass(algorithm.compute_step(images, labels, masks).cams.detach(), masks[:, 0]).mean().item()

    guided, erm_like = mass_on_mask(1.0), mass_on_mask(0.0)
    assert guided > erm_like + 0.005, (name, guided, erm_like)


def test_missing_annotations_get_no_loss_and_are_reported():
    torch.manual_seed(0)
    algorithm = GRADIA(ShapeWithMaskChannel((4, 56, 56)), 3, 2, hparams_lib.default_hparams("GRADIA", "TextureMNIST"))
    inputs, labels = _fixed_batch(True)
    inputs[6:, -1] = MISSING_ANNOTATION
    images, masks = algorithm.split_annotations(inputs)
    step = algorithm.compute_step(images, labels, masks)
    terms = algorithm.classifier_loss(step)[1]
    per_sample = (step.cams - losses.gradia_target(step.annotations_at(step.cams.shape[-2:]))).abs().flatten(1).mean(1)
    assert step.annotated.tolist() == [1.0] * 6 + [0.0] * 6 and terms["annotated"].item() == 0.5
    assert terms["gradia_l1"].item() == pytest.approx(per_sample[:6].mean().item(), rel=1e-5)


def test_each_methods_explanation_term_is_a_key_its_update_reports():
    """figures' training curves plot ``explanation_term`` from results.jsonl: it must be what update() returns."""
    for name in registry.algorithm_names():
        cls = registry.algorithm_class(name)
        if not cls.explanation_term:
            assert name == "TimmERM"
            continue
        annotated = registry.entry(name).annotations
        inputs, labels = _fixed_batch(annotated)
        hparams = hparams_lib.default_hparams(name, "TextureMNIST", warmup_steps=0, masker_warmup_steps=0) \
            if name == "ALIGN" else hparams_lib.default_hparams(name, "TextureMNIST")
        shape = ShapeWithMaskChannel(inputs.shape[1:]) if annotated else tuple(inputs.shape[1:])
        torch.manual_seed(0)
        reported = cls(shape, 3, 2, hparams).update([(inputs[:4], labels[:4])])
        assert cls.explanation_term in reported and reported[cls.explanation_term] > 0, (name, reported)
