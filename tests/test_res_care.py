"""RES (RES-G, RES-L) and CARE: their pure losses against literal transcriptions of the reference code and
hand-computed values; their classes on the shared trainer."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods import losses
from domainbed_align.methods.baselines import CARE, RES_G, RES_L, imputation_layer
from domainbed_align.annotations import ShapeWithMaskChannel


def bf_solver(values: list[float], labels: list[float]) -> float:
    """RES.py's BF_solver, transcribed loop for loop (O(n^2)): the oracle of the batched search."""
    negatives = [v for v, y in zip(values, labels) if y < 0]
    positives = [v for v, y in zip(values, labels) if y > 0]
    a, a_ct = 0.0, 0.0
    for candidate in [v + 1e-4 for v in negatives] + positives:
        score = 0.0
        if negatives:
            score += sum(candidate > x for x in negatives) / len(negatives)
        if positives:
            score += sum(candidate <= x for x in positives) / len(positives)
        if score > a_ct:
            a, a_ct = candidate, score
    return a


@pytest.mark.parametrize("seed", range(6))
def test_res_threshold_equals_the_reference_brute_force_search(seed):
    generator = torch.Generator().manual_seed(seed)
    cams = torch.rand(4, 3, 3, generator=generator)
    cams[0, 0, :2] = cams[1, 1, 1]  # ties between cells
    labels = torch.where(torch.rand(4, 3, 3, generator=generator) < 0.4, 1.0, -1.0)
    annotated = torch.tensor([1.0, 1.0, 0.0, 1.0])  # sample 2's cells take no part
    keep = annotated.bool()
    expected = bf_solver(cams[keep].flatten().tolist(), labels[keep].flatten().tolist())
    assert losses.res_threshold(cams, labels, annotated).item() == pytest.approx(expected, abs=1e-7)


def test_res_threshold_edge_cases():
    cams = torch.tensor([[[0.2, 0.7], [0.4, 0.9]]])
    assert losses.res_threshold(cams, torch.ones(1, 2, 2), torch.ones(1)).item() == pytest.approx(0.2)  # min positive
    assert losses.res_threshold(cams, torch.ones(1, 2, 2), torch.zeros(1)).item() == 0.0  # nothing labelled
    # separable: negatives 0.2, 0.4; positives 0.7, 0.9 -> the first perfect candidate is 0.4 + 1e-4
    labels = torch.tensor([[[-1.0, 1.0], [-1.0, 1.0]]])
    assert losses.res_threshold(cams, labels, torch.ones(1)).item() == pytest.approx(0.4001, abs=1e-6)


def test_res_alignment_by_hand():
    cams = torch.tensor([[[0.0, 1.0]], [[0.5, 0.5]]])  # [2, 1, 2]
    labels = torch.tensor([[[-1.0, 1.0]], [[1.0, -1.0]]])
    a = torch.tensor(0.5)
    t0, t1 = np.tanh(5 * -0.5), np.tanh(5 * 0.5)
    cells = [abs(t0 + 1), abs(t1 - 1), abs(0 - 1), abs(0 + 1)]
    assert losses.res_alignment(cams, labels, a, torch.ones(2), 0.0).item() == pytest.approx(np.mean(cells), rel=1e-6)
    assert losses.res_alignment(cams, labels, a, torch.tensor([1.0, 0.0]), 0.0).item() == pytest.approx(
        np.mean(cells[:2]), rel=1e-6)  # only the annotated sample's cells
    assert losses.res_alignment(cams, labels, a, torch.ones(2), 0.1).item() == pytest.approx(np.mean(cells) - 0.1,
                                                                                              rel=1e-6)
    assert losses.res_alignment(cams, labels, a, torch.ones(2), 5.0).item() == 0.0  # the margin: relu
    assert losses.res_alignment(cams, labels, a, torch.zeros(2), 0.0).item() == 0.0  # no labelled cell: no NaN


def test_res_labels_complement_is_negative():
    masks = torch.tensor([[[0.0, 0.49], [0.5, 1.0]]])
    assert losses.res_labels(masks).tolist() == [[[-1.0, -1.0], [1.0, 1.0]]]


def test_res_gaussian_target_is_opencvs_blur_over_max_plus_epsilon():
    positive = torch.zeros(1, 5, 5)
    positive[0, 0, 1:4] = 1.0
    padded = np.pad(positive[0].numpy(), 1, mode="reflect")  # numpy's 'reflect' is OpenCV's reflect-101
    kernel = np.array([0.25, 0.5, 0.25])
    rows = sum(kernel[i] * padded[i:i + 5, :] for i in range(3))
    blurred = sum(kernel[j] * rows[:, j:j + 5] for j in range(3))
    expected = blurred / (blurred.max() + 1e-6)
    assert np.allclose(losses.res_gaussian_target(positive)[0].numpy(), expected, atol=1e-6)


def test_res_min_max_by_hand():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])
    assert torch.allclose(losses.res_min_max(maps), torch.tensor([[[0.0, 2.0], [1.0, 4.0]]]) / (4 + 1e-6))


# --- CARE ------------------------------------------------------------------------------------------------------
def test_care_attention_by_hand_per_sample_min_and_batch_sum():
    cams = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[0.2, 0.2], [0.8, 0.0]]], requires_grad=True)
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
    # sample 0: inner 1/4 = 0.25 > T 0.1 -> 0.1 (constant); outer 0.5/4. sample 1: inner 0.4/4 = 0.1 -> not clipped
    # (0.1 is not above T), outer 0.8/4
    loss, inner, outer = losses.care_attention(cams, masks, torch.ones(2), threshold=0.1)
    expected = (-0.1 + 0.125) + (-0.1 + 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert inner.item() == pytest.approx((0.25 + 0.1) / 2) and outer.item() == pytest.approx((0.125 + 0.2) / 2)
    (gradient,) = torch.autograd.grad(loss, cams)
    assert torch.allclose(gradient[0], torch.tensor([[0.0, 0.25], [0.25, 0.25]]))  # clipped: no inner gradient
    assert torch.allclose(gradient[1], torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))
    only_first, _, _ = losses.care_attention(cams, masks, torch.tensor([1.0, 0.0]), threshold=0.1)
    assert only_first.item() == pytest.approx(-0.1 + 0.125, rel=1e-6)  # a sample without a mask adds nothing


def _batch(n: int = 6, side: int = 56):
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(n, 3, side, side, generator=generator)
    labels = torch.arange(n) % 3
    masks = torch.zeros(n, 1, side, side)
    masks[:, :, side // 4: side // 2, side // 4: side // 2] = 1.0
    return images, labels, masks


def care_transcription(algorithm, images, labels, masks, alpha, threshold):
    """CARE's loss written as its code computes it, per image (src/loss.py grad() and GradLoss, src/trainer.py),
    sharing none of our Grad-CAM or loss code: the channel weights are the spatial mean of d(sum of true-class
    logits)/dA without graph, cam = sum_k w_k A_k (no ReLU), min-max, bilinear to the image; -min(sum inner, T) +
    sum outer per image, summed; our pixel mean is its sum / (H W) and our T a share of H W."""
    logits, activations = algorithm.classifier.forward_with_activations(images)
    (gradients,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), activations, retain_graph=True)
    cam_losses = 0.0
    side = images.shape[-1]
    for feature, gradient, inner in zip(activations, gradients, masks[:, 0]):
        weights = gradient.view(gradient.shape[0], -1).mean(dim=1).view(-1, 1, 1)
        cam = (weights * feature).sum(dim=0)
        cam = cam - cam.min()
        cam = cam / cam.max()
        cam = F.interpolate(cam.view(1, 1, *cam.shape), size=(side, side), mode="bilinear").view(side, side)
        inner_loss = (cam * inner).sum()
        if inner_loss > threshold * side * side:
            inner_loss = torch.tensor(threshold * side * side)
        cam_losses = cam_losses + (-inner_loss + (cam * (1 - inner)).sum()) / (side * side)
    return (1 - alpha) * F.cross_entropy(logits, labels) + alpha * cam_losses


def test_care_classifier_loss_and_its_gradient_equal_a_transcription_of_its_code():
    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("CARE", "TextureMNIST", care_alpha=0.3, care_threshold=0.02)
    algorithm = CARE(ShapeWithMaskChannel((4, 56, 56)), 3, 2, hparams)
    conftest_bn = __import__("conftest").trained_looking_batchnorm
    conftest_bn(algorithm.classifier)
    algorithm.classifier.eval()  # BatchNorm statistics fixed: both computations see the same network
    images, labels, masks = _batch()
    step = algorithm.compute_step(images, labels, masks)
    loss, terms = algorithm.classifier_loss(step)
    assert all(p.grad is None for p in algorithm.classifier.parameters())  # the maps' gradients left no .grad
    parameters = [p for p in algorithm.classifier.parameters() if p.requires_grad]
    ours = torch.autograd.grad(loss, parameters, allow_unused=True)
    expected = care_transcription(algorithm, images, labels, masks, 0.3, 0.02)
    theirs = torch.autograd.grad(expected, parameters, allow_unused=True)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert terms["care_inner"].item() > 0.02  # some samples were clipped at T
    for a, b in zip(ours, theirs):
        if a is not None or b is not None:
            assert (a - b).norm() <= 1e-3 * b.norm()  # ours adds 1e-7 to the min-max range
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(step.logits, labels).item(), rel=1e-6)


# --- RES classes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side, grid, kernel, stride, padding", [(224, 7, 64, 32, 16), (56, 7, 16, 8, 4),
                                                                 (28, 7, 16, 8, 4)])  # 28 px: run at 56
def test_res_l_layer_is_res_own_at_224_and_fits_every_grid(side, grid, kernel, stride, padding):
    torch.manual_seed(0)
    algorithm = RES_L(ShapeWithMaskChannel((4, side, side)), 3, 2, hparams_lib.default_hparams("RES_L", "PACS",
                                                                                              pretrained=False,
                                                                                              gt_masks=True))
    layer = algorithm.imputation
    assert (layer.kernel_size, layer.stride, layer.padding) == ((kernel, kernel), (stride, stride), (padding, padding))
    assert algorithm.classifier.cam_side == grid
    images, labels, masks = _batch(3, side)
    step = algorithm.compute_step(images, labels, masks)
    imputed, _ = algorithm.imputed(step, torch.zeros(3, grid, grid))
    assert imputed.shape == (3, grid, grid) and imputed.min() >= 0 and imputed.max() <= 1


@pytest.mark.parametrize("grid", range(2, 11))
def test_res_l_layer_output_is_the_grid_for_every_stride(grid):
    for input_side in range(grid, 12 * grid):
        layer, side = imputation_layer(grid, input_side)
        assert layer.stride[0] >= 2 and side == grid * layer.stride[0]
        assert layer(torch.zeros(1, 1, side, side)).shape[-2:] == (grid, grid), (grid, input_side)


def test_res_l_with_a_fine_grid_still_trains():  # e.g. act1 at 56 px: grid 28, stride 2
    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("RES_L", "TextureMNIST", gradcam_layer="act1")
    algorithm = RES_L(ShapeWithMaskChannel((4, 56, 56)), 3, 2, hparams)
    assert algorithm.classifier.cam_side == 28 and algorithm.imputation.stride == (2, 2)
    images, labels, masks = _batch()
    assert algorithm.update([(torch.cat([images, masks], 1), labels)])["res_imputation"] > 0


def test_res_l_layer_survives_a_checkpoint(tmp_path):
    from domainbed_align.methods.checkpoints import algorithm_from_checkpoint

    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("RES_L", "TextureMNIST")
    algorithm = RES_L(ShapeWithMaskChannel((4, 56, 56)), 3, 2, hparams)
    images, labels, masks = _batch()
    algorithm.update([(torch.cat([images, masks], 1), labels)])
    checkpoint = {"args": {"algorithm": "RES_L"}, "model_input_shape": (4, 56, 56), "model_num_classes": 3,
                  "model_num_domains": 2, "model_hparams": hparams, "model_dict": algorithm.state_dict()}
    loaded = algorithm_from_checkpoint(checkpoint)
    assert torch.equal(loaded.imputation.weight, algorithm.imputation.weight)


def test_res_l_trains_its_layer_with_the_classifier_and_predict_never_reads_it():
    torch.manual_seed(0)
    algorithm = RES_L(ShapeWithMaskChannel((4, 56, 56)), 3, 2, hparams_lib.default_hparams("RES_L", "TextureMNIST"))
    images, labels, masks = _batch()
    before = copy.deepcopy(algorithm.imputation.state_dict())
    terms = algorithm.update([(torch.cat([images, masks], 1), labels)])
    assert set(terms) >= {"res_robust", "res_imputation", "res_threshold", "annotated"}
    assert not torch.equal(before["weight"], algorithm.imputation.weight)  # the optimizer stepped it
    algorithm.eval()
    logits = algorithm.predict(images)
    with torch.no_grad():
        algorithm.imputation.weight.mul_(-3.0)
    assert torch.equal(algorithm.predict(images), logits)


def test_res_g_loss_is_the_sum_of_its_terms():
    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("RES_G", "TextureMNIST", lambda_res=2.0, res_eta=0.0)
    algorithm = RES_G(ShapeWithMaskChannel((4, 56, 56)), 3, 2, hparams)
    images, labels, masks = _batch(7)
    masks[6] = -1.0  # sample 6 has no mask: no part in the threshold nor in either term
    step = algorithm.compute_step(images, labels, masks)
    loss, terms = algorithm.explanation_loss(step)
    cams = losses.res_min_max(step.raw_cams)[:6]
    cell_labels = losses.res_labels(F.adaptive_avg_pool2d(masks[:6], cams.shape[-2:]).squeeze(1))
    a = bf_solver(cams.flatten().tolist(), cell_labels.flatten().tolist())
    robust = (torch.tanh(5 * (cams - a)) - cell_labels).abs().mean()
    imputation = (cams - losses.res_gaussian_target((cell_labels > 0).float())).abs().mean()
    assert terms["res_threshold"].item() == pytest.approx(a, abs=1e-6)
    assert loss.item() == pytest.approx(2.0 * (robust + imputation).item(), rel=1e-5)
