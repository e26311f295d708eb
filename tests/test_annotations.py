"""Annotations cannot leak: the mask channel reaches only the losses of methods that ask for it, never a network."""

import pytest
import torch

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods import registry
from domainbed_align.errors import HParamError
from domainbed_align.annotations import ShapeWithMaskChannel

ANNOTATION_METHODS = [e.name for e in registry.entries() if e.annotations]
OTHERS = [e.name for e in registry.entries() if not e.annotations]


def _build(name, **overrides):
    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams(name, "TextureMNIST", **overrides)
    shape = ShapeWithMaskChannel((4, 56, 56)) if hparams.get("gt_masks") else (3, 56, 56)
    return registry.algorithm_class(name)(shape, 3, 2, hparams)


def _inputs(mask_value=None, n=6):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 56, 56, generator=generator)
    masks = (torch.rand(n, 1, 56, 56, generator=generator) > 0.5).float() if mask_value is None \
        else torch.full((n, 1, 56, 56), float(mask_value))
    return torch.cat([images, masks], 1), torch.arange(n) % 3


@pytest.mark.parametrize("name", ANNOTATION_METHODS)
def test_no_network_sees_the_mask_channel(name):
    """What the network's first layer receives in update, predict and explain is the same whatever the masks are."""
    received = {}
    for value in (None, 1.0):
        algorithm = _build(name)
        assert algorithm.mask_channel and algorithm.in_channels == 3
        stem = algorithm.classifier.backbone.conv1  # every forward path (incl. forward_intermediates) enters here
        assert stem.in_channels == 3
        seen = received[value] = []
        stem.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0].detach().clone()))
        inputs, labels = _inputs(value)
        algorithm.update([(inputs[:3], labels[:3]), (inputs[3:], labels[3:])])
        algorithm.predict(inputs)
        algorithm.explain(inputs)
    calls = len(received[None])
    assert calls >= 3 and len(received[1.0]) == calls
    assert all(torch.equal(a, b) for a, b in zip(received[None], received[1.0]))


def test_gt_masks_on_a_dataset_without_a_mask_channel_is_refused():
    hparams = hparams_lib.default_hparams("GRADIA", "Debug28", gt_masks=True)
    with pytest.raises(HParamError, match="has no mask channel"):
        registry.algorithm_class("GRADIA")((3, 28, 28), 3, 2, hparams)  # Debug28's shape: no mask channel


@pytest.mark.parametrize("name", ANNOTATION_METHODS)
def test_predict_and_explain_do_not_depend_on_the_mask_channel(name):
    algorithm = _build(name)
    algorithm.update([_inputs()])
    algorithm.eval()
    with torch.no_grad():
        logits = [algorithm.predict(_inputs(value)[0]) for value in (None, 0.0, 1.0, -1.0)]
    maps = [algorithm.explain(_inputs(value)[0]) for value in (None, 0.0, 1.0)]
    assert all(torch.equal(logits[0], other) for other in logits[1:])
    assert all(torch.equal(maps[0], other) for other in maps[1:])
    assert torch.equal(algorithm.explain(_inputs()[0][:, :3]), maps[0])  # plain images work too


@pytest.mark.parametrize("name", OTHERS)
def test_an_annotation_free_method_refuses_gt_masks(name):
    with pytest.raises(HParamError, match="gt_masks"):
        _build(name, gt_masks=True)


@pytest.mark.parametrize("name", ANNOTATION_METHODS)
def test_without_masks_the_method_says_it_is_plain_erm_once(name, capsys):
    algorithm = _build(name, gt_masks=False)
    assert not algorithm.mask_channel and algorithm.classifier.backbone.conv1.in_channels == 3
    images, labels = _inputs()
    floats = [algorithm.update([(images[:, :3], labels)]) for _ in range(2)]
    term = {"GRADIA": "gradia_l1", "HAICS": "haics_bce", "RRR": "rrr_penalty", "RES_G": "res_imputation",
            "RES_L": "res_imputation", "CARE": "care_attention"}[name]
    ce_weight = algorithm.cross_entropy_weight()  # CARE: (1 - alpha) CE, with or without masks, as its code
    assert all(f["annotated"] == 0.0 and f[term] == 0.0 and f["loss"] == pytest.approx(ce_weight * f["ce"])
               for f in floats)
    err = capsys.readouterr().err
    assert err.count("plain ERM") == 1 and name in err


def test_an_annotation_method_comes_back_from_its_model_pkl(tmp_path):
    from domainbed_align.methods.checkpoints import load_algorithm

    algorithm = _build("HAICS")
    algorithm.update([_inputs()])
    args = {"algorithm": "HAICS", "dataset": "TextureMNIST", "test_envs": [3], "data_dir": "data",
            "hparams_seed": 0, "trial_seed": 0, "holdout_fraction": 0.2}
    # train.py saves the dataset's own input_shape: the marked tuple
    torch.save({"args": args, "model_input_shape": ShapeWithMaskChannel((4, 56, 56)), "model_num_classes": 3,
                "model_num_domains": 2,
                "model_hparams": algorithm.hparams, "model_dict": algorithm.state_dict()}, tmp_path / "model.pkl")
    loaded = load_algorithm(tmp_path / "model.pkl")
    algorithm.eval()
    images = _inputs()[0]
    assert loaded.mask_channel and loaded.steps_done == 1
    assert torch.equal(loaded.explain(images[:, :3]), algorithm.explain(images))


def test_a_nan_image_stops_haics_before_its_step_naming_it():
    from domainbed_align.errors import NonFiniteLossError

    algorithm = _build("HAICS")
    inputs, labels = _inputs()
    inputs[0, :3] = float("nan")
    before = {k: v.detach().clone() for k, v in algorithm.classifier.named_parameters()}
    with pytest.raises(NonFiniteLossError, match="non-finite"):  # not torch's BCE error on a NaN map
        algorithm.update([(inputs, labels)])
    assert all(torch.equal(before[k], v) for k, v in algorithm.classifier.named_parameters())  # no weight took it


def test_a_model_pkl_saved_before_mask_folders_existed_still_loads():
    from domainbed_align.methods.checkpoints import algorithm_from_checkpoint

    algorithm = _build("GRADIA")
    older = {k: v for k, v in algorithm.hparams.items() if k not in ("mask_dir", "annotation_method")}
    checkpoint = {"args": {"algorithm": "GRADIA"}, "model_input_shape": (4, 56, 56), "model_num_classes": 3,
                  "model_num_domains": 2, "model_hparams": older, "model_dict": algorithm.state_dict()}
    loaded = algorithm_from_checkpoint(checkpoint)
    assert loaded.hparams["mask_dir"] == "" and loaded.mask_channel  # its gt_masks, as it trained
