"""mixed_precision: what ``auto`` picks on which GPU (capability queries monkeypatched), and fp16 training with its
gradient scaler (run for real on the CPU, whose autocast supports fp16)."""

from __future__ import annotations

import pytest
import torch

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods import precision
from domainbed_align.methods.align import ALIGN
from domainbed_align.methods.erm import TimmERM
from domainbed_align.errors import HParamError

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


@pytest.mark.parametrize("capability, hip, expected", [
    ((7, 0), None, "fp32"),   # V100: no native bf16
    ((7, 5), None, "fp32"),   # T4
    ((8, 0), None, "bf16"),   # A100
    ((9, 0), None, "bf16"),   # H100 / H200
    ((6, 0), "6.2", "bf16"),  # ROCm: the capability tuple means nothing there
])
def test_auto_picks_bf16_only_where_the_gpu_has_it(monkeypatch, capability, hip, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.version, "hip", hip)
    assert precision.resolve("auto", CUDA) == expected
    assert precision.native_bf16(CUDA) == (expected == "bf16")
    assert asked in ([CUDA, CUDA], [])  # the run's own device is asked (not the current device)


def test_auto_is_float32_on_the_cpu_and_forced_modes_are_kept(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert precision.resolve("auto", CPU) == "fp32"
    assert [precision.resolve(mode, CUDA) for mode in ("bf16", "fp16", "off")] == ["bf16", "fp16", "fp32"]
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        precision.resolve("fp8", CUDA)


def test_the_trainer_autocasts_to_what_resolve_picked(monkeypatch):
    algorithm = TimmERM((3, 28, 28), 3, 2, hparams_lib.default_hparams("TimmERM", "Debug28"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    images = torch.zeros(1, 3, 28, 28)
    assert algorithm.precision(CUDA) == "fp32"  # auto on a T4
    with algorithm.autocast(images):
        assert not torch.is_autocast_enabled("cpu")  # fp32 on the CPU
    for mode, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        algorithm.hparams["mixed_precision"] = mode
        with algorithm.autocast(images):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype


def test_an_unknown_mode_is_refused_by_the_hparams():
    with pytest.raises(HParamError, match=r"'mixed_precision' of TimmERM must be one of \['auto', 'bf16', 'fp16', 'off'\], got 'fp8'"):
        TimmERM((3, 28, 28), 3, 2, hparams_lib.default_hparams("TimmERM", "Debug28", mixed_precision="fp8"))


def _learnable_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two environments whose class is the sign pattern of the image's mean: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(8) % 2
    images = torch.randn(8, 3, 28, 28, generator=generator) * 0.1 + (labels.float() * 2 - 1).view(-1, 1, 1, 1)
    return [(images[:4], labels[:4]), (images[4:], labels[4:])]


def test_fp16_training_learns_once_its_scaler_has_found_a_scale():
    torch.manual_seed(0)
    algorithm = TimmERM((3, 28, 28), 2, 2, hparams_lib.default_hparams("TimmERM", "Debug28", mixed_precision="fp16",
                                                                        lr=1e-3))
    batches = _learnable_batches()
    steps = [algorithm.update(batches) for _ in range(20)]
    # the scaler starts at 2**16, so the first steps may overflow and be skipped (torch's AMP recipe); then none
    assert [step["fp16_overflow"] for step in steps[-5:]] == [0.0] * 5
    assert sum(step["fp16_overflow"] for step in steps) <= 5
    assert steps[-1]["ce"] < 0.5 * steps[0]["ce"]  # it learned, in fp16
    assert all(step["grad_norm"] > 0 for step in steps if not step["fp16_overflow"])


def test_an_fp16_overflow_skips_the_step_instead_of_stopping_the_run(monkeypatch):
    # a scale no fp16 gradient survives: the scaler must skip the optimizer step and lower the scale
    monkeypatch.setattr(precision, "grad_scaler",
                        lambda mode, device: torch.amp.GradScaler(device.type, init_scale=2.0 ** 120)
                        if mode == "fp16" else None)
    torch.manual_seed(0)
    algorithm = ALIGN((3, 28, 28), 2, 2, hparams_lib.default_hparams(
        "ALIGN", "Debug28", mixed_precision="fp16", warmup_steps=0, masker_warmup_steps=0))
    weights = {k: v.clone() for k, v in algorithm.classifier.state_dict().items() if v.is_floating_point()}
    masker = {k: v.clone() for k, v in algorithm.masker.state_dict().items()}
    terms = algorithm.update(_learnable_batches())
    assert terms["fp16_overflow"] == 1.0 and terms["grad_norm"] == 0.0
    assert terms["masker_fp16_overflow"] == 1.0 and terms["masker_grad_norm"] == 0.0
    params = dict(algorithm.classifier.named_parameters())
    assert all(torch.equal(weights[name], params[name]) for name in params)  # the step was skipped
    assert all(torch.equal(masker[k], v) for k, v in algorithm.masker.state_dict().items())
    assert algorithm._grad_scalers["classifier"].get_scale() < 2.0 ** 120
    assert algorithm._grad_scalers["masker"].get_scale() < 2.0 ** 120


def test_align_reports_the_same_keys_in_fp16_before_and_after_its_warmups():
    torch.manual_seed(0)
    algorithm = ALIGN((3, 28, 28), 2, 2, hparams_lib.default_hparams(
        "ALIGN", "Debug28", mixed_precision="fp16", warmup_steps=1, masker_warmup_steps=0))
    warm, aligned = algorithm.update(_learnable_batches()), algorithm.update(_learnable_batches())
    assert set(warm) == set(aligned) and "masker_fp16_overflow" in warm
