"""Backbone 'rrr_mlp': dtak/rrr's perceptron (rrr/multilayer_perceptron.py at 3c932ed), the Decoy-MNIST model of the
plain-vs-RRR reproduction (issue 30). Checked against a numpy transcription of its feed_forward, and by learning."""

import json

import numpy as np
import pytest
import torch

from conftest import save_align_run
from domainbed_align.annotations import ShapeWithMaskChannel
from domainbed_align.data import DecoyMNIST
from domainbed_align.errors import HParamError
from domainbed_align.methods.backbones import PerceptronClassifier
from domainbed_align.methods.hparams import default_hparams
from domainbed_align.methods.registry import _ENTRIES
from domainbed_align.report import evaluate


def _build(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    hparams = default_hparams(name, "DecoyMNIST", backbone="rrr_mlp", **overrides)
    annotated = _ENTRIES[name].annotations
    if not annotated:
        hparams.pop("gt_masks", None)
    shape = ShapeWithMaskChannel((2, 28, 28)) if annotated else (1, 28, 28)
    return _ENTRIES[name].cls(shape, 10, 2, hparams)


def _reference_log_probabilities(params: list, x: np.ndarray) -> np.ndarray:
    """dtak/rrr's feed_forward, transcribed: relu after every layer's affine map, the last layer's output (before
    its relu) minus its logsumexp."""
    inputs = x
    for weight, bias in params:
        outputs = inputs @ weight + bias
        inputs = np.maximum(outputs, 0.0)
    top = outputs.max(axis=1, keepdims=True)
    return outputs - (top + np.log(np.exp(outputs - top).sum(axis=1, keepdims=True)))


def _params(classifier: PerceptronClassifier) -> list:
    linears = [m for m in classifier.modules() if isinstance(m, torch.nn.Linear)]
    return [(m.weight.detach().double().numpy().T.copy(), m.bias.detach().double().numpy().copy()) for m in linears]


def test_the_perceptron_is_the_references_feed_forward_and_init():
    erm = _build("TimmERM")
    classifier = erm.classifier
    params = _params(classifier)
    assert [w.shape for w, _ in params] == [(784, 50), (50, 30), (30, 10)]
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    ours = torch.log_softmax(classifier.double()(x), dim=1).detach().numpy()
    assert np.allclose(ours, _reference_log_probabilities(params, x.flatten(1).numpy()), atol=1e-12)
    # init_random_params(0.1): weights and biases N(0, 0.1^2); torch's default (uniform, std 0.02 here) fails this
    first_weight, first_bias = params[0]
    assert abs(first_weight.std() - 0.1) < 0.003 and abs(first_weight.mean()) < 0.003
    assert abs(np.concatenate([b for _, b in params]).std() - 0.1) < 0.03


def test_rrr_penalty_is_the_references_on_the_perceptron():
    """RRR's reported penalty is the sum of squared input gradients of sum_k log p_k on the patch (A), averaged over
    the batch: checked against central finite differences of the transcribed feed_forward (float64)."""
    rrr = _build("RRR")
    rrr.classifier.double()
    params = _params(rrr.classifier)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 28, 28, generator=generator, dtype=torch.float64)
    annotation = torch.ones(4, 1, 28, 28, dtype=torch.float64)
    annotation[:, :, :4, -4:] = 0.0  # the patch, top right: RRR's A = 1 - annotation
    x = torch.cat([images, annotation], 1)
    labels = torch.tensor([1, 2, 3, 4])
    reported = rrr.update([(x[:2], labels[:2]), (x[2:], labels[2:])])["rrr_penalty"]

    flat, eps, expected = images.flatten(1).numpy(), 1e-6, 0.0
    patch = [r * 28 + c for r in range(4) for c in range(24, 28)]
    for i in range(4):
        squares = 0.0
        for pixel in patch:
            up, down = flat[i:i + 1].copy(), flat[i:i + 1].copy()
            up[0, pixel] += eps
            down[0, pixel] -= eps
            derivative = (_reference_log_probabilities(params, up).sum()
                          - _reference_log_probabilities(params, down).sum()) / (2 * eps)
            squares += derivative ** 2
        expected += squares / 4
    assert expected > 1e-4 and reported == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", sorted(_ENTRIES))
def test_grad_cam_methods_refuse_the_perceptron_the_others_train_on_it(name):
    if _ENTRIES[name].cls.uses_gradcam:
        with pytest.raises(HParamError, match=r"'rrr_mlp' .* has no feature map, so no Grad-CAM: " + name):
            _build(name)
    else:
        assert isinstance(_build(name).classifier, PerceptronClassifier)


@pytest.mark.parametrize("name, value", [("pretrained", True), ("input_size", 112), ("gradcam_layer", "layer2"),
                                         ("resnet_dropout", 0.5)])
def test_settings_the_perceptron_cannot_use_are_refused(name, value):
    with pytest.raises(HParamError, match=f"hparam '{name}' is .*which backbone 'rrr_mlp'"):
        _build("TimmERM", **{name: value})


def test_evaluate_names_a_perceptron_run_and_evaluates_the_others(tmp_path, data_dir, capsys):
    sweep = tmp_path / "sweep"
    save_align_run(sweep / "align", data_dir)
    erm = _build("TimmERM")
    (sweep / "mlp").mkdir()
    args = {"algorithm": "TimmERM", "dataset": "DecoyMNIST", "test_envs": [2], "data_dir": str(data_dir),
            "hparams_seed": 0, "trial_seed": 0, "holdout_fraction": 0.2}
    torch.save({"args": args, "model_input_shape": (1, 28, 28), "model_num_classes": 10, "model_num_domains": 2,
                "model_hparams": erm.hparams, "model_dict": erm.state_dict()}, sweep / "mlp" / "model.pkl")
    argv = ["--input_dir", str(sweep), "--max_images", "4", "--steps", "3", "--fractions", "0.1,0.5",
            "--batch_size", "4", "--include_unfinished"]
    assert evaluate.main(argv) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line)["algorithm"] for line in out.splitlines()] == ["ALIGN"]
    errors = [line for line in err.splitlines() if line.startswith("domainbed-align evaluate: error:")]
    assert "mlp/model.pkl: backbone 'rrr_mlp'" in errors[0] and "sweeps/decoy_accuracy.py" in errors[0]
    assert "Traceback" not in err


def _train(name: str, environments: list, steps: int, seed: int = 0):
    algorithm = _build(name, seed=seed, batch_size=128)
    generator = torch.Generator().manual_seed(seed)
    # each environment's items stacked once (what its __getitem__ gives, mask channel included for RRR)
    tensors = [(torch.stack([env[i][0] for i in range(len(env))]), torch.from_numpy(env.labels)) for env in environments]
    for _ in range(steps):
        batches = []
        for x, y in tensors:
            index = torch.randint(len(y), (128,), generator=generator)
            batches.append((x[index], y[index]))
        algorithm.update(batches)
    return algorithm.eval()


def test_rrr_on_the_perceptron_learns_the_digit_where_plain_training_reads_the_decoy(data_dir):
    """The published gap at test size (4,000 training digits, 250 steps of 256): the plain perceptron's input gradient
    sits on the patch and it fails on patch-free digits; RRR's (the reference's lambda, translated) does not."""
    plain_data = DecoyMNIST(str(data_dir), [2], {})
    annotated_data = DecoyMNIST(str(data_dir), [2], {"gt_masks": True, "annotation_method": True})
    randomized = plain_data.datasets[2]
    images = randomized.images.float().unsqueeze(1) / 255.0
    clean = randomized.clean.float().unsqueeze(1) / 255.0
    labels = torch.from_numpy(randomized.labels)
    figures = {}
    for name, data in (("TimmERM", plain_data), ("RRR", annotated_data)):
        algorithm = _train(name, data.datasets[:2], steps=250)
        x = images[:500].clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(algorithm.predict(x).softmax(1).max(1).values.sum(), x)
        magnitude = gradient.abs().flatten(1)
        share = ((magnitude * randomized.patches[:500].flatten(1)).sum(1) / magnitude.sum(1)).mean()
        with torch.no_grad():
            figures[name] = {"patch-free": (algorithm.predict(clean).argmax(1) == labels).float().mean().item(),
                             "randomized": (algorithm.predict(images).argmax(1) == labels).float().mean().item(),
                             "share": share.item()}
    plain, rrr = figures["TimmERM"], figures["RRR"]
    assert rrr["patch-free"] > 0.85 and plain["patch-free"] < rrr["patch-free"] - 0.2, figures
    assert rrr["randomized"] > plain["randomized"] + 0.05, figures
    assert plain["share"] > 3 * rrr["share"], figures
