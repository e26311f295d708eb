"""Explanations of a trained model: algorithm.explain against pytorch-grad-cam, and the CUDA-graph replay against
the eager maps (on a GPU)."""

import pytest
import torch

from conftest import trained_looking_batchnorm
from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods.align import ALIGN
from domainbed_align.methods.explain import CudaGraphExplainer


def _align(size: int, seed: int = 0, **overrides) -> ALIGN:
    torch.manual_seed(seed)
    hparams = hparams_lib.default_hparams("ALIGN", None, pretrained=False, **overrides)
    algorithm = ALIGN((3, size, size), 4, 2, hparams)
    trained_looking_batchnorm(algorithm.classifier)
    return algorithm.eval()


@pytest.mark.parametrize("size,layer", [(128, "layer4"), (28, "layer2")])  # closed form; autograd at 56 px
@pytest.mark.parametrize("given_labels", [True, False])
def test_explain_matches_pytorch_grad_cam(size, layer, given_labels):
    pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pip install grad-cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    algorithm = _align(size, gradcam_layer=layer)
    classifier = algorithm.classifier
    assert classifier.closed_form_cam == (layer == "layer4")
    torch.manual_seed(1)
    images = torch.randn(6, 3, size, size)
    labels = torch.tensor([0, 1, 2, 3, 1, 2]) if given_labels else None
    with torch.no_grad():  # centre each class's logit over these images, so their argmaxes differ
        classifier.backbone.get_classifier().bias -= algorithm.predict(images).mean(0)
    maps = algorithm.explain(images, labels)
    side = classifier.cam_side
    assert maps.shape == (6, side, side) and maps.dtype == torch.float32 and not maps.requires_grad

    class ReferenceAtMapResolution(pytorch_grad_cam.GradCAM):
        # Compare at the map's own resolution: cv2's and torch's upsampling treat borders differently.
        def get_target_width_height(self, input_tensor):
            return side, side

    reference = ReferenceAtMapResolution(model=classifier, target_layers=[getattr(classifier.backbone, layer)])
    # targets=None: pytorch-grad-cam explains each image's argmax class, as explain(images) should
    targets = None if labels is None else [ClassifierOutputTarget(int(c)) for c in labels]
    theirs = reference(input_tensor=images, targets=targets)
    reference.activations_and_grads.release()
    assert maps.numpy() == pytest.approx(theirs, abs=2e-4)
    assert (theirs > 0.05).mean() > 0.1  # maps with structure, not a degenerate all-zero comparison
    if labels is None:  # and the classes explained really differ between images (else labels=None is untested)
        assert algorithm.predict(images).argmax(1).unique().numel() > 1


def test_explain_works_under_no_grad_and_leaves_no_gradients():
    algorithm = _align(28)
    images = torch.randn(3, 3, 28, 28)
    with torch.no_grad():  # the autograd form (layer2 here) needs a graph; explain makes its own
        maps = algorithm.explain(images)
    torch.testing.assert_close(maps, algorithm.explain(images))
    assert all(p.grad is None for p in algorithm.classifier.parameters())
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(3))  # min-max normalised per image


@pytest.mark.parametrize("size", [128, 28])  # closed form (layer4 at 128 px); autograd form (layer2)
def test_explain_during_training_uses_eval_mode_and_changes_nothing(size):
    algorithm = _align(size, gradcam_layer="layer4" if size == 128 else "auto", resnet_dropout=0.5)
    images, labels = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    eval_maps = algorithm.explain(images, labels)
    algorithm.train()
    state = {k: v.clone() for k, v in algorithm.state_dict().items() if isinstance(v, torch.Tensor)}
    train_maps = algorithm.explain(images, labels)
    assert algorithm.training and algorithm.classifier.training  # mode restored
    assert all(torch.equal(state[k], v) for k, v in algorithm.state_dict().items() if k in state)  # BN stats too
    torch.testing.assert_close(train_maps, eval_maps, rtol=0, atol=0)
    with torch.no_grad():  # and train mode really differs here (batch statistics, dropout)
        algorithm.classifier.train()
        train_logits = algorithm.classifier(images)
        algorithm.classifier.eval()
        assert not torch.allclose(train_logits, algorithm.classifier(images))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int16])
def test_any_integer_label_dtype_explains_as_int64(dtype):
    algorithm = _align(64, gradcam_layer="layer4")  # closed form: the classes index the linear layer's rows
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([3, 2, 1, 0])
    torch.testing.assert_close(algorithm.explain(images, labels.to(dtype)), algorithm.explain(images, labels))
    autograd_form = _align(28)
    images = torch.randn(4, 3, 28, 28)
    torch.testing.assert_close(autograd_form.explain(images, labels.to(dtype)), autograd_form.explain(images, labels))


def test_graph_explainer_on_cpu_gives_explain():
    algorithm = _align(64)
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([3, 2, 1, 0])
    explainer = CudaGraphExplainer(algorithm)
    torch.testing.assert_close(explainer(images, labels), algorithm.explain(images, labels), rtol=0, atol=0)
    assert explainer._graphs == {}  # nothing captured off the GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("size,layer", [(64, "layer4"), (28, "auto")])  # closed form; autograd form (a backward
def test_cuda_graph_replay_gives_the_eager_maps(size, layer):  # pass inside the graph)
    algorithm = _align(size, gradcam_layer=layer).cuda()
    assert algorithm.classifier.closed_form_cam == (layer == "layer4")
    explainer = CudaGraphExplainer(algorithm)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, size, size, generator=generator).cuda() for _ in range(3)]
    labels = (torch.arange(8) % 4).cuda()

    def check(images, given):
        graphed, eager = explainer(images, given), algorithm.explain(images, given)
        torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-3)  # bf16 on CUDA; a stale replay is off by ~1
        return graphed

    first = [check(images, given) for images in batches for given in (labels, None)]
    assert (first[0] - first[2]).abs().max() > 0.1  # new data really gives new maps through the replay
    assert len(explainer._graphs) == 2  # one capture with labels, one without, then replays

    before = check(batches[0], labels)
    algorithm.train()
    algorithm.update([(batches[0], labels), (batches[1], labels)])  # weights change in place
    algorithm.eval()
    after = check(batches[0], labels)
    assert (after - before).abs().max() > 0  # the replay read the new weights

    algorithm.cpu().cuda()  # new parameter storage: the old graphs would read freed memory
    check(batches[2], labels)
    assert len(explainer._graphs) == 1


@pytest.mark.parametrize("images,labels,message", [
    (torch.randn(2, 1, 28, 28), None, r"images must be a tensor \[N, 3, H, W\].*got \(2, 1, 28, 28\)"),
    (torch.randn(3, 28, 28), None, r"images must be a tensor \[N, 3, H, W\].*got \(3, 28, 28\)"),
    ([[0.0]], None, r"images must be a tensor.*got list"),
    (torch.randn(2, 3, 28, 28), torch.tensor([0, 1, 2]), r"labels must be an integer tensor \[2\].*got \(3,\)"),
    (torch.randn(2, 3, 28, 28), torch.tensor([0.0, 1.0]), r"labels must be an integer tensor.*torch.float32"),
    (torch.randn(2, 3, 28, 28), [0, 1], r"labels must be an integer tensor.*got list"),
    (torch.randn(2, 3, 28, 28), torch.tensor([0, 4]), r"class indices in \[0, 4\); got values from 0 to 4"),
    (torch.randn(2, 3, 28, 28), torch.tensor([-1, 2]), r"class indices in \[0, 4\); got values from -1 to 2"),
    (torch.randn(2, 3, 28, 28, device="meta"), None, r"images are on meta but the model is on cpu; move one"),
])
def test_bad_images_or_labels_get_one_message(images, labels, message):
    from domainbed_align.errors import ExplanationInputError

    algorithm = _align(28)
    for explain in (algorithm.explain, CudaGraphExplainer(algorithm)):
        with pytest.raises(ExplanationInputError, match=message):
            explain(images, labels)
