"""ALIGN and TimmERM under DomainBed's contract, without DomainBed."""

import copy
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods.align import ALIGN, MASKER_REPORT
from domainbed_align.methods.dre import DRE
from domainbed_align.methods.erm import TimmERM
from domainbed_align.methods.backbones import create_backbone
from domainbed_align.errors import HParamError, NonFiniteLossError, PretrainedWeightsError

SHAPE = (3, 28, 28)


def _batches(n_envs=2, per_env=4, shape=SHAPE, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(per_env, *shape, generator=generator),
             torch.randint(0, classes, (per_env,), generator=generator)) for _ in range(n_envs)]


def _align(**overrides) -> ALIGN:
    """An ALIGN whose alignment starts right after ``warmup_steps`` unless ``masker_warmup_steps`` is given."""
    torch.manual_seed(0)
    return ALIGN(SHAPE, 3, 2, hparams_lib.default_hparams("ALIGN", "Debug28", **{"masker_warmup_steps": 0,
                                                                                   **overrides}))


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, module: torch.nn.Module) -> list:
    return [k for k, v in module.state_dict().items() if not torch.equal(before[k], v)]


def test_update_returns_python_floats_with_stable_keys_and_predict_returns_logits():
    algorithm = _align(warmup_steps=1)
    batches = _batches()
    warm = algorithm.update(batches)
    after = algorithm.update(batches, unlabeled=[torch.randn(4, *SHAPE)])  # unlabeled is ignored
    assert set(warm) == set(after)
    assert set(MASKER_REPORT) <= set(after) and {"ce", "reg", "align_bce", "in_warmup"} <= set(after)
    assert all(type(v) is float for v in after.values())
    assert warm["in_warmup"] == 1.0 and after["in_warmup"] == 0.0
    assert 0.0 < after["mask_mean"] < 1.0 and after["align_bce"] > 0.0
    algorithm.eval()
    assert algorithm.predict(batches[0][0]).shape == (4, 3)
    with torch.no_grad():
        logits = algorithm.predict(batches[0][0])
    assert logits.shape == (4, 3) and logits.dtype == torch.float32


def test_warmup_never_touches_the_masker():
    algorithm = _align(warmup_steps=3)
    before = _state(algorithm.masker)
    for _ in range(3):
        algorithm.update(_batches())
    assert _changed(before, algorithm.masker) == []
    algorithm.update(_batches())  # first step after warm-up trains the masker
    assert _changed(before, algorithm.masker) != []


def test_masker_step_leaves_the_classifier_untouched():
    algorithm = _align(warmup_steps=0)
    images, labels = (torch.cat(t) for t in zip(*_batches()))
    before = _state(algorithm.classifier)  # includes BatchNorm running stats and num_batches_tracked
    masker_before = _state(algorithm.masker)
    algorithm.masker_step(images, labels)
    assert _changed(before, algorithm.classifier) == []
    assert all(p.grad is None for p in algorithm.classifier.parameters())
    assert _changed(masker_before, algorithm.masker) != []
    assert algorithm.classifier.training  # train mode restored


def test_classifier_step_leaves_the_masker_untouched():
    algorithm = _align(warmup_steps=0)
    images, labels = (torch.cat(t) for t in zip(*_batches()))
    before = _state(algorithm.masker)
    classifier_before = _state(algorithm.classifier)
    step = algorithm.compute_step(images, labels, None)
    loss, terms = algorithm.base_loss(step)
    alignment, bce = algorithm.alignment_loss(step.cams, algorithm.masker(step.images))  # the masks with their graph
    algorithm.classifier_step(loss + alignment, {**terms, "align_bce": bce}, images)
    assert bce.item() > 0
    assert _changed(before, algorithm.masker) == []
    assert all(p.grad is None for p in algorithm.masker.parameters())
    assert _changed(classifier_before, algorithm.classifier) != []


def test_alignment_loss_gradient_reaches_the_backbone():
    algorithm = _align(warmup_steps=0, lambda_reg=0.0)
    images, labels = (torch.cat(t) for t in zip(*_batches()))
    step = algorithm.compute_step(images, labels, None)
    alignment, _ = algorithm.alignment_loss(step.cams, algorithm.masker(step.images))
    alignment.backward()
    stem = algorithm.classifier.backbone.conv1.weight.grad
    assert stem is not None and stem.abs().sum() > 0


def test_masker_steps_ratio_and_same_classifier_steps_as_erm():
    algorithm = _align(warmup_steps=0, masker_steps=3)
    calls = []
    original = algorithm.masker_step
    algorithm.masker_step = lambda *a: calls.append(1) or original(*a)
    algorithm.update(_batches())
    assert len(calls) == 3 and algorithm.steps_done == 1


def test_the_step_is_computed_once_and_immutable():
    import dataclasses

    algorithm = _align(warmup_steps=0)
    images, labels = (torch.cat(t) for t in zip(*_batches()))
    step = algorithm.compute_step(images, labels, None)
    assert step.logits.shape == (8, 3) and step.cams.shape == step.raw_cams.shape == step.mixup.cams.shape
    assert step.input_gradient is None and step.annotations is None and step.annotated.sum() == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.logits = step.logits.detach()


def test_moving_to_the_cpu_keeps_the_memory_format():
    algorithm = _align()
    assert algorithm.to("cpu") is algorithm and algorithm.to(torch.float32) is algorithm
    assert all(p.is_contiguous() for p in algorithm.parameters())
    images = torch.randn(2, 3, 28, 28)
    assert algorithm.prepare_images(images) is images


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("move", [lambda a: a.to("cuda"), lambda a: a.cuda()])
def test_moving_to_cuda_converts_the_weights_to_channels_last(move):
    algorithm = move(_align())
    for module in (algorithm.classifier.backbone.conv1, algorithm.masker.layers[0]):
        assert module.weight.is_contiguous(memory_format=torch.channels_last)
    images = algorithm.prepare_images(torch.randn(2, 3, 28, 28, device="cuda"))
    assert images.is_contiguous(memory_format=torch.channels_last)
    off = _align(channels_last=False).to("cuda")
    assert off.classifier.backbone.conv1.weight.is_contiguous()


def test_a_run_too_short_to_align_is_refused_the_others_pass():
    """ALIGN's loss starts after both warm-ups: a run that ends before would be ALIGN in name only (issue 30's first
    Decoy-MNIST runs: 500 steps under the default 1000-step warm-up)."""
    hparams = hparams_lib.default_hparams("ALIGN", "Debug28")
    with pytest.raises(HParamError, match=r"ALIGN aligns from update 1100 .* 500 steps: it would never align\. "
                                          r"Shorten the warm-ups, e\.g\. --hparams '\{\"warmup_steps\": 250, "
                                          r"\"masker_warmup_steps\": 100\}'"):
        ALIGN.check_run_length(hparams, 500)
    with pytest.raises(HParamError, match="the run has 1100 steps"):
        ALIGN.check_run_length(hparams, 1100)  # update 1100 is the 1101st: the run must be longer
    ALIGN.check_run_length(hparams, 1101)
    ALIGN.check_run_length({**hparams, "warmup_steps": 250, "masker_warmup_steps": 100}, 500)
    TimmERM.check_run_length(hparams_lib.default_hparams("TimmERM", "Debug28"), 1)
    DRE.check_run_length(hparams_lib.default_hparams("DRE", "Debug28"), 1)


def test_timm_erm_is_cross_entropy_only():
    torch.manual_seed(0)
    erm = TimmERM(SHAPE, 3, 2, hparams_lib.default_hparams("TimmERM", "Debug28"))
    out = erm.update(_batches())
    assert set(out) == {"loss", "ce", "grad_norm", "diverged"} and out["loss"] == out["ce"] and out["grad_norm"] > 0
    assert out["diverged"] == 0.0
    assert not hasattr(erm, "masker")


def test_state_dict_round_trip_keeps_warmup_progress():
    algorithm = _align(warmup_steps=5)
    for _ in range(2):
        algorithm.update(_batches())
    clone = _align(warmup_steps=5)
    clone.load_state_dict(copy.deepcopy(algorithm.state_dict()))
    assert clone.steps_done == 2
    for a, b in zip(algorithm.state_dict().values(), clone.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_freeze_bn_keeps_running_statistics():
    algorithm = _align(warmup_steps=10, freeze_bn=True)
    algorithm.train()
    before = algorithm.classifier.backbone.bn1.running_mean.clone()
    algorithm.update(_batches())
    assert torch.equal(before, algorithm.classifier.backbone.bn1.running_mean)
    unfrozen = _align(warmup_steps=10)
    unfrozen.update(_batches())
    assert not torch.equal(before, unfrozen.classifier.backbone.bn1.running_mean)


@pytest.mark.parametrize("name,value,fragment", [
    ("lambda_align", "1", "must be a float"),
    ("warmup_steps", 1.5, "must be a int"),
    ("pretrained", 1, "must be a bool"),
    ("lambda_sparsity", -1.0, ">= 0.0"),
    ("align_resolution", "pixels", "one of"),
    ("lambda_reg", float("nan"), "finite"),
    ("mixup_alpha", 0.0, ">= 1e-06"),  # the only check: sampling skips Beta's own (a host sync per step)
    # DomainBed's own hparams that we read: a bad value is named here, not by torch at the first step
    ("resnet_dropout", 1.5, "<= 0.99"),
    ("lr", -1e-3, ">= 1e-12"),
    ("weight_decay", -0.1, ">= 0.0"),
    ("freeze_bn", "yes", "must be a bool"),
])
def test_ill_typed_hparams_name_the_culprit(name, value, fragment):
    with pytest.raises(HParamError, match=fragment) as error:
        _align(**{name: value})
    assert f"'{name}'" in str(error.value)


def test_unknown_and_missing_hparams():
    hparams = hparams_lib.default_hparams("ALIGN", "Debug28", lambda_algin=2.0)
    with pytest.raises(HParamError, match="did you mean 'lambda_align'"):
        hparams_lib.validate("ALIGN", hparams, other_known={"lr", "weight_decay", "batch_size"})
    del hparams["masker_lr"]
    with pytest.raises(HParamError, match="missing hparams \\['masker_lr'\\]"):
        hparams_lib.validate("ALIGN", hparams)


def test_unknown_gradcam_layer_and_backbone():
    with pytest.raises(HParamError, match="stages are"):
        _align(gradcam_layer="layer9")
    with pytest.raises(HParamError, match="timm does not know"):
        _align(backbone="resnet_nope")


def test_grad_cam_stage_without_a_spatial_map_is_refused():
    # Debug28 inputs are upsampled to 56 px, where layer4 is 2x2 (allowed) ...
    assert _align(gradcam_layer="layer4").classifier.cam_side == 2
    # ... but at 28 px it would be 1x1: every normalised map constant, the explanation losses inert
    with pytest.raises(HParamError, match="'layer4' gives a 1x1 Grad-CAM at input_size 28"):
        _align(gradcam_layer="layer4", input_size=28)
    with pytest.raises(HParamError, match="no stage of this backbone has a map of at least 7x7 at input_size 8"):
        _align(input_size=8)


@pytest.mark.parametrize("value", [True, "false", 1])
def test_algorithms_without_annotations_refuse_gt_masks(value):
    hparams = hparams_lib.default_hparams("TimmERM", "Debug28", gt_masks=value)
    with pytest.raises(HParamError, match="uses no annotations, so drop gt_masks"):
        TimmERM((4, 28, 28), 3, 2, hparams)  # the mask would be a 4th input channel


def test_pretrained_file_without_pretrained_is_refused(tmp_path):
    with pytest.raises(HParamError, match="'pretrained' is false, so it would be ignored"):
        _align(pretrained_file=str(tmp_path / "resnet18.pth"))


def test_non_finite_loss_stops_with_the_term_named():
    algorithm = _align(warmup_steps=10)
    images, labels = _batches()[0]
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite .*ce=nan.* at step 0"):
        algorithm.update([(images, labels)])


def test_random_hparams_are_plain_python_and_valid():
    import hashlib

    def seed_hash(*args):
        return int(hashlib.md5(str(args).encode()).hexdigest(), 16) % (2 ** 31)

    for seed in range(5):
        entries = hparams_lib.registry_entries("ALIGN", "VLCS", seed, seed_hash)
        randoms = {name: pair[1] for name, pair in entries.items()}
        assert all(type(v) in (bool, int, float, str) for v in randoms.values())
        assert entries == hparams_lib.registry_entries("ALIGN", "VLCS", seed, seed_hash)
        for spec in hparams_lib.specs_for("ALIGN"):
            spec.check(randoms[spec.name], "ALIGN")
    assert hparams_lib.default_hparams("ALIGN", "VLCS")["pretrained"] is True
    assert hparams_lib.default_hparams("ALIGN", "Debug28")["pretrained"] is False


def test_missing_pretrained_weights_fail_fast_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError, match="pretrained_file") as error:
        create_backbone("resnet18", 5, pretrained=True)
    assert time.monotonic() - start < 10
    assert "resnet18.tv_in1k" in str(error.value)
    with pytest.raises(PretrainedWeightsError, match="not a file"):
        create_backbone("resnet18", 5, pretrained=True, pretrained_file=str(tmp_path / "missing.pth"))


def test_hub_probe_is_huggingface_hubs_own_request_with_its_timeout(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    from domainbed_align.methods import backbones

    asked = []

    def unreachable(url, timeout=None, **kwargs):
        asked.append((url, timeout))
        raise OSError("Connection refused")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read when huggingface_hub was imported (offline here)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    with pytest.raises(PretrainedWeightsError, match="the hub is unreachable: OSError: Connection refused"):
        backbones._fail_fast_if_hub_unreachable("resnet18.tv_in1k")
    url, timeout = asked[0]
    assert url == huggingface_hub.hf_hub_url("timm/resnet18.tv_in1k", "model.safetensors")  # its endpoint
    assert timeout == constants.HF_HUB_ETAG_TIMEOUT
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, timeout=None, **kwargs: None)
    backbones._fail_fast_if_hub_unreachable("resnet18.tv_in1k")  # reachable: returns, timm downloads
    monkeypatch.setenv("HF_HUB_OFFLINE", "ON")  # huggingface_hub reads ON as true too
    with pytest.raises(PretrainedWeightsError, match="HF_HUB_OFFLINE is set"):
        backbones._fail_fast_if_hub_unreachable("resnet18.tv_in1k")
    assert len(asked) == 1  # offline: no request at all


def test_pretrained_file_is_loaded(tmp_path):
    torch.manual_seed(3)
    source = create_backbone("resnet18", 1000, pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    loaded = create_backbone("resnet18", 7, pretrained=True, pretrained_file=str(path))
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    assert torch.equal(loaded.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert loaded.fc.out_features == 7  # a fresh head for the task


# aten ops that make the host wait for the device on CUDA (a value read back, or an output size that depends on
# the data). Adam's per-parameter step counters live on the host even on CUDA, so reading them does not count.
HOST_SYNCS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "unique", "_unique2",
              "unique_consecutive", "unique_dim", "repeat_interleave"}


class _HostSyncRecorder(TorchDispatchMode):
    def __init__(self, host_tensors: set[int]) -> None:
        super().__init__()
        self.host_tensors, self.seen = host_tensors, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        on_host = bool(args) and isinstance(args[0], torch.Tensor) and id(args[0]) in self.host_tensors
        if func.overloadpacket.__name__ in HOST_SYNCS and not on_host:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("overrides, shape", [
    ({"warmup_steps": 0}, (3, 56, 56)),                            # Grad-CAM at layer2: the autograd form
    ({"warmup_steps": 0, "gradcam_layer": "layer4"}, (3, 112, 112)),  # layer4: the closed form
    ({"warmup_steps": 5}, (3, 56, 56)),                            # warm-up: classifier and mixup only
    ({"warmup_steps": 0, "masker_warmup_steps": 5}, (3, 56, 56)),  # masker warm-up: no alignment term yet
    ({"warmup_steps": 0, "masker_steps": 2}, (3, 56, 56)),
    ({"warmup_steps": 0, "train_cam_relu": True, "train_cam_weight_gradient": True}, (3, 56, 56)),
], ids=["autograd-cam", "closed-form-cam", "warmup", "masker-warmup", "two-masker-steps", "full-gradient-cam"])
def test_update_reads_nothing_back_from_the_device_before_its_report(overrides, shape):
    """The only host reads of an update are the checks right before each optimizer step (checked_floats' one
    tolist each: the classifier's, then each masker step's; a copy invisible on CPU): nothing else waits for
    the device."""
    torch.manual_seed(0)
    overrides = {"masker_warmup_steps": 0, **overrides}
    algorithm = ALIGN(shape, 3, 2, hparams_lib.default_hparams("ALIGN", "Debug28", **overrides))
    assert algorithm.classifier.closed_form_cam == (overrides.get("gradcam_layer") == "layer4")
    batches = _batches(shape=shape)
    algorithm.update(batches)  # creates the optimizers' state
    step_counters = {id(state["step"]) for optimizer in (algorithm.optimizer, algorithm.masker_optimizer)
                     for state in optimizer.state.values()}
    with _HostSyncRecorder(step_counters) as recorder:
        algorithm.update(batches)
    assert recorder.seen == []


def _classifier_state_after(algorithm, updates: int, seed: int = 5) -> dict:
    torch.manual_seed(seed)  # the mixup draws
    for step in range(updates):
        algorithm.update(_batches(seed=step))
    return _state(algorithm.classifier)


def _dre(**overrides) -> DRE:
    torch.manual_seed(0)
    return DRE(SHAPE, 3, 2, hparams_lib.default_hparams("DRE", "Debug28", **overrides))


def test_align_without_alignment_makes_exactly_dres_classifier_update():
    dre = _classifier_state_after(_dre(), 3)
    silent = _classifier_state_after(_align(warmup_steps=0, lambda_align=0.0), 3)
    assert all(torch.equal(dre[k], silent[k]) for k in dre)
    aligned = _classifier_state_after(_align(warmup_steps=0, lambda_align=1.0), 3)
    assert any(not torch.equal(dre[k], aligned[k]) for k in dre)  # the comparison can fail


def test_masker_warmup_trains_the_masker_and_leaves_the_classifier_on_dres_path():
    algorithm = _align(warmup_steps=1, masker_warmup_steps=2)
    masker_before = _state(algorithm.masker)
    torch.manual_seed(5)
    phases = []
    for step in range(4):
        out = algorithm.update(_batches(seed=step))
        phases.append((out["in_warmup"], out["in_masker_warmup"], out["align_bce"] > 0, out["mask_mean"] > 0))
        if step == 0:
            assert _changed(masker_before, algorithm.masker) == []
    assert phases == [(1.0, 0.0, False, False), (0.0, 1.0, False, True), (0.0, 1.0, False, True),
                      (0.0, 0.0, True, True)]
    assert _changed(masker_before, algorithm.masker) != []
    # up to the last masker warm-up step the classifier took exactly DRE's steps
    dre = _classifier_state_after(_dre(), 3)
    replay = _classifier_state_after(_align(warmup_steps=1, masker_warmup_steps=2), 3)
    assert all(torch.equal(dre[k], replay[k]) for k in dre)


def test_dre_reports_its_terms_and_has_no_masker():
    out = _dre().update(_batches())
    assert {"loss", "ce", "reg", "reg_consistency", "reg_sparsity", "reg_mixed_ce", "zero_cams", "grad_norm",
            "diverged"} == set(out)
    assert 0.0 <= out["zero_cams"] <= 1.0 and out["reg_consistency"] > 0
    assert not hasattr(_dre(), "masker")


def _weights(module: torch.nn.Module) -> dict:
    """Parameters as bytes (BatchNorm's running statistics are buffers: a train-mode forward updates them)."""
    return {name: p.detach().numpy().tobytes() for name, p in module.named_parameters()}


def test_non_finite_loss_stops_before_the_optimizer_step():
    algorithm = _align(warmup_steps=0)
    images, labels = _batches()[0]
    images[0, 0, 0, 0] = float("nan")
    before = _weights(algorithm.classifier)
    with pytest.raises(NonFiniteLossError, match=r"at step 0 \(classifier step\); the run stopped before"):
        algorithm.update([(images, labels)])
    assert _weights(algorithm.classifier) == before  # no weight took the step


def test_non_finite_gradient_of_a_finite_loss_stops_before_the_optimizer_step():
    algorithm = _align(warmup_steps=0)
    algorithm.classifier.backbone.conv1.weight.register_hook(lambda gradient: gradient * float("inf"))
    before = _weights(algorithm.classifier)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient \(grad_norm=.*\) of finite loss terms "
                                                 r"\(loss=.*ce=.*\) at step 0 \(classifier step\)"):
        algorithm.update(_batches())
    assert _weights(algorithm.classifier) == before


def test_non_finite_masker_gradient_stops_before_the_masker_step():
    algorithm = _align(warmup_steps=0)
    algorithm.masker.layers[0].weight.register_hook(lambda gradient: gradient * float("nan"))
    before = _state(algorithm.masker)
    with pytest.raises(NonFiniteLossError, match=r"masker_grad_norm=nan.* at step 0 \(masker step\)"):
        algorithm.update(_batches())
    assert _changed(before, algorithm.masker) == []


def test_an_empty_mask_is_reported_once_by_the_trainer():
    import io

    from domainbed_align.methods.monitor import CollapseMonitor

    algorithm = _align(warmup_steps=1)
    stream = io.StringIO()
    algorithm.monitor = CollapseMonitor("ALIGN", window=2, stream=stream)
    with torch.no_grad():
        algorithm.masker.layers[-1].bias.fill_(-30.0)  # sigmoid(-30): a mask that keeps nothing
    for step in range(5):
        algorithm.update(_batches(seed=step))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "ALIGN at step 2" in lines[0] and "'lambda_sparsity'" in lines[0], lines
