"""sweeps/decoy_accuracy.py (issue 30's reproduction table): its patch-free accuracy and input-gradient share on the
patch, on perceptrons whose answers are known in closed form."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import REPO
from domainbed_align.data import DecoyMNIST
from domainbed_align.methods.erm import TimmERM
from domainbed_align.methods.hparams import default_hparams


def _script():
    spec = importlib.util.spec_from_file_location("decoy_accuracy", REPO / "sweeps" / "decoy_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(path, first_layer_weight: torch.Tensor, data_dir) -> None:
    """A TimmERM on rrr_mlp whose first layer is ``first_layer_weight`` (50 x 784) with biases 1 (every ReLU open),
    the other layers as drawn, saved as upstream's train.py saves a model."""
    torch.manual_seed(0)
    hparams = default_hparams("TimmERM", "DecoyMNIST", backbone="rrr_mlp")
    hparams.pop("gt_masks", None)
    erm = TimmERM((1, 28, 28), 10, 2, hparams)
    linears = [m for m in erm.classifier.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        linears[0].weight.copy_(first_layer_weight)
        linears[0].bias.fill_(1.0)
        linears[1].weight.abs_()  # non-negative, so the second layer's ReLUs stay open on non-negative inputs
        linears[1].bias.fill_(1.0)
    args = {"algorithm": "TimmERM", "dataset": "DecoyMNIST", "test_envs": [2], "data_dir": str(data_dir),
            "hparams_seed": 0, "trial_seed": 0, "holdout_fraction": 0.2}
    torch.save({"args": args, "model_input_shape": (1, 28, 28), "model_num_classes": 10, "model_num_domains": 2,
                "model_hparams": hparams, "model_dict": erm.state_dict()}, path)


def test_a_pixel_blind_model_spreads_its_gradient_uniformly_and_a_corner_reader_puts_it_on_the_patch(tmp_path,
                                                                                                     data_dir):
    script = _script()
    randomized = DecoyMNIST(str(data_dir), [2], {}).datasets[2]
    generator = torch.Generator().manual_seed(0)
    # Every first-layer unit weighs all pixels alike: the gradient is the same on every pixel, 16/784 on the patch.
    # (small weights: a saturated softmax would leave a gradient of rounding noise)
    uniform = 1e-3 * torch.rand(50, 1, generator=generator).expand(50, 784).contiguous()
    _save(tmp_path / "uniform.pkl", uniform, data_dir)
    measured = script.model_measures(tmp_path / "uniform.pkl", randomized)
    assert measured["gradient share on patch"] == pytest.approx(16 / 784, rel=1e-4)
    # Only the top-left 4x4 pixels reach the network: share 1 on images whose patch is there, 0 on the others.
    corner = torch.zeros(50, 28, 28)
    corner[:, :4, :4] = 1e-2 * torch.rand(50, 4, 4, generator=generator)
    _save(tmp_path / "corner.pkl", corner.flatten(1), data_dir)
    measured = script.model_measures(tmp_path / "corner.pkl", randomized)
    top_left = randomized.patches[:script.GRADIENT_IMAGES, 0, 0].float().mean().item()
    assert 0.15 < top_left < 0.35 and measured["gradient share on patch"] == pytest.approx(top_left, abs=1e-6)
    # Patch-free accuracy is the model's accuracy on the digits without their patch: this one sees only the corner,
    # which is black without the patch, so it gives every digit one class.
    labels = torch.from_numpy(randomized.labels)
    constant = torch.bincount(labels, minlength=10).float() / len(labels)
    assert measured["patch-free acc"] in [pytest.approx(share.item(), abs=1e-6) for share in constant]


def _finished_run(folder, trial: int, with_weights: bool) -> None:
    """A finished run folder as upstream's train.py leaves it: two records, `done`, and the weights if asked."""
    import json
    folder.mkdir(parents=True)
    args = {"algorithm": "TimmERM", "dataset": "DecoyMNIST", "test_envs": [2], "trial_seed": trial}
    lines = [{"args": args, "hparams": {"backbone": "rrr_mlp"}, "step": step, "env0_in_acc": 0.9 + step / 1000,
              "env1_in_acc": 0.8, "env2_in_acc": 0.5 + trial / 10, "env0_out_acc": 0.9 - step / 1000,
              "env1_out_acc": 0.8, "env2_out_acc": 0.5} for step in (0, 10)]
    (folder / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "done").write_text("done")
    if with_weights:
        for name in ("model.pkl", "model_selected.pkl"):
            (folder / name).write_bytes(b"")


def test_a_run_without_its_weights_is_named_not_left_out_of_the_mean(tmp_path):
    script = _script()
    _finished_run(tmp_path / "kept", 0, with_weights=True)
    _finished_run(tmp_path / "lost", 1, with_weights=False)
    with pytest.raises(SystemExit, match=r"lost/model_selected\.pkl is missing \(2 weight files.*--without_weights"):
        script.rows(tmp_path, "unused")
    # --without_weights: the records' accuracies of both runs, the selected step by validation, and nothing measured
    rows = script.rows(tmp_path, "unused", without_weights=True)
    assert [(r["trial"], r["selection"], r["step"]) for r in rows] == [
        (0, "training-domain validation", 0), (0, "last checkpoint", 10),
        (1, "training-domain validation", 0), (1, "last checkpoint", 10)]
    assert rows[2]["randomized acc"] == pytest.approx(0.6) and rows[1]["train acc"] == pytest.approx(0.855)
    assert not any("patch-free acc" in r for r in rows)
