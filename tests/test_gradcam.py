"""Our batched differentiable Grad-CAM against pytorch-grad-cam, and its gradients against finite differences."""

import pytest
import torch

from conftest import trained_looking_batchnorm
from domainbed_align import floors
from domainbed_align.methods.backbones import CamClassifier, create_backbone
from domainbed_align.methods.gradcam import grad_cam, linear_head_grad_cam, normalize_per_sample, true_class_scores
from domainbed_align.methods.losses import alignment_bce


def _classifier(size: int, layer: str, seed: int = 0, drop_rate: float = 0.0) -> CamClassifier:
    torch.manual_seed(seed)
    backbone = create_backbone("resnet18", num_classes=4, in_chans=3, pretrained=False, drop_rate=drop_rate)
    trained_looking_batchnorm(backbone)
    return CamClassifier(backbone, native_size=size, input_size=size, gradcam_layer=layer).eval()


def _normalize_gradient_by_hand(maps: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """d/dx of sum_i w_i (x_i - lo) / (hi - lo + eps) per row, where a min or max shared by k elements passes 1/k of
    its gradient to each of them (amin/amax's rule)."""
    expected = torch.empty_like(maps)
    for row, (x, w) in enumerate(zip(maps, weights)):
        low, high = x.min(), x.max()
        spread = high - low + eps
        at_low, at_high = (x == low).double(), (x == high).double()
        through_low = (w * (-1 / spread + (x - low) / spread ** 2)).sum()
        through_high = (w * (-(x - low) / spread ** 2)).sum()
        expected[row] = w / spread + at_low / at_low.sum() * through_low + at_high / at_high.sum() * through_high
    return expected


@pytest.mark.parametrize("ties", [False, True])
def test_normalize_per_sample_gradient_matches_the_formula_ties_included(ties):
    # the form every Grad-CAM loss goes through: it must have a derivative on every torch we support (aminmax has
    # none before torch 2.12), with the same values and gradients
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 12, generator=generator, dtype=torch.float64)
    if ties:
        maps[:, :3] = maps.min(dim=1, keepdim=True).values - 0.5  # three tied minima
        maps[:, -2:] = maps.max(dim=1, keepdim=True).values + 0.5  # two tied maxima
    maps.requires_grad_(True)
    weights = torch.randn(3, 12, generator=generator, dtype=torch.float64)
    (gradient,) = torch.autograd.grad((normalize_per_sample(maps, eps=1e-7) * weights).sum(), maps)
    torch.testing.assert_close(gradient, _normalize_gradient_by_hand(maps.detach(), weights, 1e-7))
    if not ties:  # finite differences are defined away from ties
        assert torch.autograd.gradcheck(lambda m: normalize_per_sample(m, eps=1e-7), (maps,))
    low, high = maps.aminmax(dim=1, keepdim=True)
    if floors.release(torch.__version__) >= (2, 12):  # where aminmax has a derivative, it agrees
        (reference,) = torch.autograd.grad((((maps - low) / (high - low + 1e-7)) * weights).sum(), maps)
        torch.testing.assert_close(gradient, reference)
    else:  # why gradcam.py does not use it
        with pytest.raises(RuntimeError, match="derivative for aten::aminmax is not implemented"):
            torch.autograd.grad((((maps - low) / (high - low + 1e-7)) * weights).sum(), maps)


def test_normalize_per_sample_by_hand():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    out = normalize_per_sample(maps, eps=0.0 + 1e-12)
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # a constant map carries no ranking


def test_grad_cam_by_hand():
    activations = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[0.0, 1.0], [3.0, 0.0]]]], requires_grad=True)
    # score = 2*sum(A_c0) - 1*sum(A_c1): gradients are constant 2 and -1 -> weights 2 and -1
    score = (2 * activations[:, 0].sum((1, 2)) - activations[:, 1].sum((1, 2)))
    cam = grad_cam(activations, score)
    expected = torch.relu(torch.tensor([[2.0 - 0.0, 4.0 - 1.0], [0.0 - 3.0, 2.0 - 0.0]]))
    assert torch.allclose(cam[0], expected)


@pytest.mark.parametrize("layer,size", [("layer4", 64), ("layer3", 56)])
def test_matches_pytorch_grad_cam(layer, size):
    pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pip install grad-cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _classifier(size, layer)
    torch.manual_seed(1)
    images = torch.randn(5, 3, size, size)
    labels = torch.tensor([0, 1, 2, 3, 1])
    assert model.closed_form_cam == (layer == "layer4")  # both of our forms meet the reference
    _, maps = model.forward_with_cams(images, labels)
    ours = normalize_per_sample(maps)

    side = maps.shape[-1]

    class ReferenceAtMapResolution(pytorch_grad_cam.GradCAM):
        # Compare at the map's own resolution: cv2's and torch's upsampling treat borders differently.
        def get_target_width_height(self, input_tensor):
            return side, side

    reference = ReferenceAtMapResolution(model=model, target_layers=[getattr(model.backbone, layer)])
    theirs = reference(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in labels])
    assert theirs.shape == (5, side, side)
    assert ours.detach().numpy() == pytest.approx(theirs, abs=2e-4)
    assert (theirs > 0.05).mean() > 0.2  # maps with structure, not a degenerate all-zero comparison


def test_linear_head_grad_cam_by_hand():
    activations = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[0.0, 1.0], [3.0, 0.0]]]])
    # head: score = W . mean_ij(A) with W = (2, -1); the gradient is W / 4 at every position
    cam = linear_head_grad_cam(activations, torch.tensor([[2.0, -1.0]]))
    expected = torch.relu(torch.tensor([[2.0 - 0.0, 4.0 - 1.0], [0.0 - 3.0, 2.0 - 0.0]])) / 4
    assert torch.allclose(cam[0], expected)
    # and it is what autograd's Grad-CAM gives for that head
    leaf = activations.clone().requires_grad_(True)
    score = (torch.tensor([2.0, -1.0]) * leaf.mean(dim=(2, 3))).sum(1) + 0.3
    assert torch.allclose(grad_cam(leaf, score), expected)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_closed_form_equals_autograd_in_maps_and_parameter_gradients(mode):
    """The closed form is the same function of the weights: same maps, same gradients of a loss on them."""
    model = _classifier(96, "layer4").double().train(mode == "train")
    assert model.closed_form_cam and model.cam_side == 3
    torch.manual_seed(3)
    images = torch.randn(4, 3, 96, 96, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 3])
    target = torch.rand(4, 3, 3, dtype=torch.float64)
    results = {}
    for closed_form in (True, False):
        model.closed_form_cam = closed_form
        model.zero_grad()
        logits, maps = model.forward_with_cams(images, labels)
        cams = normalize_per_sample(maps)
        loss = alignment_bce(cams, target) + torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        results[closed_form] = (cams.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (cams_closed, grads_closed), (cams_autograd, grads_autograd) = results[True], results[False]
    assert (cams_autograd > 0.05).float().mean() > 0.2  # structured maps, not a vacuous comparison
    torch.testing.assert_close(cams_closed, cams_autograd, rtol=1e-9, atol=1e-10)
    for name, gradient in grads_autograd.items():
        torch.testing.assert_close(grads_closed[name], gradient, rtol=1e-7, atol=1e-10, msg=name)
    assert grads_autograd["backbone.fc.weight"].abs().sum() > 0
    assert grads_autograd["backbone.layer1.0.conv1.weight"].abs().sum() > 0


def test_closed_form_is_used_only_where_it_is_exact(monkeypatch):
    from domainbed_align.methods import backbones

    assert not _classifier(56, "layer3").closed_form_cam  # layer4 follows: the gradient needs a backward pass
    calls = []
    monkeypatch.setattr(backbones, "linear_head_grad_cam", lambda *a, **k: calls.append(1) or linear_head_grad_cam(*a, **k))
    model = _classifier(64, "layer4", drop_rate=0.5)
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    model.train().forward_with_cams(images, labels)  # dropout before fc: per-sample gradient, autograd
    assert calls == []
    model.eval().forward_with_cams(images, labels)  # dropout off in eval: closed form again
    assert calls == [1]


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_explanations_are_the_training_maps_detached(layer):
    model = _classifier(64, layer)
    images, labels = torch.randn(3, 3, 64, 64), torch.tensor([2, 0, 2])
    logits, maps = model.forward_with_cams(images, labels)
    with torch.no_grad():  # explanation mode works inside no_grad too (the autograd form re-enables it)
        plain_logits, plain_maps = model.forward_with_cams(images, labels, differentiable=False)
    assert maps.requires_grad and not plain_maps.requires_grad and not plain_logits.requires_grad
    torch.testing.assert_close(plain_maps, maps.detach())
    torch.testing.assert_close(plain_logits, logits.detach())
    assert maps.max() > 0


def test_alignment_gradient_matches_finite_differences():
    model = _classifier(32, "layer2").double()
    torch.manual_seed(2)
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 2, 3])
    target = torch.rand(3, 4, 4, dtype=torch.float64)

    def loss() -> torch.Tensor:
        logits, activations = model.forward_with_activations(images)
        cams = normalize_per_sample(grad_cam(activations, true_class_scores(logits, labels)))
        return torch.nn.functional.binary_cross_entropy(cams.clamp(1e-4, 1 - 1e-4), target)

    weight = model.backbone.layer1[0].conv1.weight
    (analytic,) = torch.autograd.grad(loss(), weight)
    flat = weight.data.view(-1)
    step = 1e-6
    for index in [0, 17, 301, 1000]:
        original = flat[index].item()
        flat[index] = original + step
        up = loss().item()
        flat[index] = original - step
        down = loss().item()
        flat[index] = original
        numeric = (up - down) / (2 * step)
        assert analytic.view(-1)[index].item() == pytest.approx(numeric, rel=1e-3, abs=1e-7)
    assert analytic.abs().max() > 0


def test_alignment_loss_reaches_every_part_of_the_classifier():
    model = _classifier(64, "layer3").train()
    images = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 2, 3])
    logits, activations = model.forward_with_activations(images)
    cams = normalize_per_sample(grad_cam(activations, true_class_scores(logits, labels)))
    alignment_bce(cams, torch.rand_like(cams)).backward()
    for name in ["conv1.weight", "layer3.1.conv2.weight", "layer4.1.conv2.weight", "fc.weight"]:
        gradient = dict(model.backbone.named_parameters())[name].grad
        assert gradient is not None and gradient.abs().sum() > 0, name


def test_grad_cam_without_relu_and_with_constant_weights_by_hand():
    activations = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[0.0, 1.0], [3.0, 0.0]]]], requires_grad=True)
    score = (torch.tensor([2.0, -1.0]) * activations.mean(dim=(2, 3))).sum(1)
    # the signed map: W/4 . A at each position, negative values kept
    expected = torch.tensor([[2.0 - 0.0, 4.0 - 1.0], [0.0 - 3.0, 2.0 - 0.0]]) / 4
    cam = grad_cam(activations, score, relu=False, weight_gradient=False)
    assert torch.allclose(cam[0], expected)
    (gradient,) = torch.autograd.grad(cam.sum(), activations)  # the forward graph was kept for the loss
    assert torch.allclose(gradient[0], torch.tensor([2.0, -1.0]).view(2, 1, 1).expand(2, 2, 2) / 4)
    assert torch.allclose(linear_head_grad_cam(activations, torch.tensor([[2.0, -1.0]]), relu=False), cam)


@pytest.mark.parametrize("size, layer", [(56, "layer2"), (64, "layer4")], ids=["autograd-form", "closed-form"])
def test_training_map_is_captums_layer_grad_cam_in_value_and_parameter_gradients(size, layer):
    """DRE trains on captum's LayerGradCam with its defaults; ours (relu=False, weight_gradient=False) is that map,
    and a loss on it sends the same gradient to every parameter (none to what follows the stage but through the
    activations: captum's channel weights are constants)."""
    captum = pytest.importorskip("captum.attr", reason="captum is the oracle: pip install captum")
    model = _classifier(size, layer)
    assert model.closed_form_cam == (layer == "layer4")
    torch.manual_seed(1)
    images, labels = torch.randn(3, 3, size, size), torch.tensor([0, 2, 3])
    _, ours = model.forward_with_cams(images, labels, relu=False, weight_gradient=False)
    oracle = captum.LayerGradCam(model, getattr(model.backbone, layer)).attribute(images, target=labels).squeeze(1)
    assert (ours < 0).any() and (ours > 0).any()  # signed: no ReLU
    torch.testing.assert_close(ours, oracle, rtol=1e-5, atol=1e-6)
    weights = torch.rand_like(ours)
    parameters = list(model.parameters())

    def gradients(maps):
        return torch.autograd.grad((normalize_per_sample(maps) * weights).sum(), parameters, allow_unused=True)

    for name, a, b in zip([n for n, _ in model.named_parameters()], gradients(ours), gradients(oracle)):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()), msg=name)
    # the other reading is really different: differentiating through the weights reaches the head
    _, full = model.forward_with_cams(images, labels, relu=False, weight_gradient=True)
    fc_gradient = torch.autograd.grad((normalize_per_sample(full) * weights).sum(),
                                      model.backbone.get_classifier().weight)[0]
    assert fc_gradient.abs().sum() > 0


def test_zero_map_share_reads_the_relu_map_before_normalisation():
    from domainbed_align.methods.gradcam import zero_map_share

    raw = torch.tensor([[[-1.0, -0.5]], [[-1.0, 0.0]], [[-1.0, 0.1]], [[0.0, 0.0]]])  # signed maps (DRE's)
    assert zero_map_share(raw).item() == 0.75  # max <= 0: the ReLU map is zero everywhere
    assert zero_map_share(torch.relu(raw)).item() == 0.75  # the same reading after a ReLU
