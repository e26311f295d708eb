"""The CUDA paths of training: every registered method's update() on a GPU in the trainer's precision (bf16 autocast,
channels_last), and CUDA against the CPU in float32. They run on a GPU only (the GPU check's cuda_tests stage:
bash sweeps/gpu_check.sh); on a CPU they are skipped."""

import math

import pytest
import torch

from domainbed_align import bench
from domainbed_align.methods import registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU check runs it)")

CONFIG = {"backbone": "resnet18", "size": 56, "classes": 10, "envs": 3}  # TextureMNIST's shape


def _batches(device: torch.device, annotated: bool, per_env: int = 8) -> list:
    batches = bench.make_batches(CONFIG["envs"], per_env, CONFIG["size"], CONFIG["classes"], device)
    return bench.with_masks(batches) if annotated else batches


@pytest.mark.parametrize("name", registry.algorithm_names())
def test_every_method_trains_on_cuda_in_the_trainers_precision(name):
    device = torch.device("cuda")
    algorithm = bench.build(registry.algorithm_class(name), CONFIG, device, **bench.PHASE.get(name, {}))
    batches = _batches(device, registry.entry(name).annotations)
    context = algorithm.autocast(batches[0][0])
    if torch.cuda.get_device_capability(device)[0] >= 8:  # Ampere and newer: bf16 autocast, as in a real run
        assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    before = [p.detach().clone() for p in algorithm.classifier.parameters()]
    for _ in range(2):  # the second step runs on Adam state and, for ALIGN, after a masker step
        values = algorithm.update(batches)
        assert values and all(isinstance(v, float) and math.isfinite(v) for v in values.values()), values
    changed = sum(not torch.equal(a, b) for a, b in zip(before, algorithm.classifier.parameters()))
    assert changed > len(before) // 2, f"{name}: only {changed} of {len(before)} parameter tensors moved"
    images = torch.cat([x for x, _ in batches])
    with torch.no_grad():
        logits = algorithm.predict(images)
    assert logits.shape == (len(images), CONFIG["classes"]) and torch.isfinite(logits).all()
    maps = algorithm.explain(images[:, :3])
    assert maps.is_cuda and maps.min() >= 0 and maps.max() <= 1 and torch.isfinite(maps).all()


@pytest.mark.parametrize("name", ["TimmERM", "GRADIA"])  # no random draws in their updates: CPU and CUDA comparable
def test_cuda_update_equals_the_cpu_update_in_float32(name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convolutions would differ by ~1e-3
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    results = {}
    for device in (torch.device("cpu"), torch.device("cuda")):
        algorithm = bench.build(registry.algorithm_class(name), CONFIG, device, mixed_precision="off",
                                channels_last=False)
        batches = _batches(device, registry.entry(name).annotations)
        with torch.no_grad():
            logits = algorithm.predict(torch.cat([x for x, _ in batches])).cpu()
        # the losses come from the train-mode forward (and GRADIA's Grad-CAM), grad_norm from the backward; the
        # weights after the step are not compared: Adam's first step is about lr * sign(gradient), so a gradient
        # near 0 may move either way on either device
        results[device.type] = algorithm.update(batches), logits
    (cpu_values, cpu_logits), (cuda_values, cuda_logits) = results["cpu"], results["cuda"]
    assert cpu_values.keys() == cuda_values.keys() and "grad_norm" in cpu_values
    for key in cpu_values:
        assert cuda_values[key] == pytest.approx(cpu_values[key], rel=1e-3, abs=1e-4), key
    torch.testing.assert_close(cuda_logits, cpu_logits, rtol=1e-3, atol=1e-4)  # the eval-mode forward


def test_explanations_on_cuda_equal_the_cpus(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    algorithm = bench.build(registry.algorithm_class("ALIGN"), CONFIG, torch.device("cpu"), mixed_precision="off")
    algorithm.eval()
    images = torch.cat([x for x, _ in _batches(torch.device("cpu"), False)])
    labels = torch.arange(len(images)) % CONFIG["classes"]
    on_cpu = algorithm.explain(images, labels)
    on_cuda = algorithm.cuda().explain(images.cuda(), labels.cuda())
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=1e-3)
    assert (on_cpu > 0.05).float().mean() > 0.1  # maps with structure, not two blank ones
