"""Speed and memory of one update() of every registered method against TimmERM, and of our Grad-CAM against
pytorch-grad-cam.

``python -m domainbed_align.bench [--device cpu|cuda] [--quick] [--batch-per-env N] [--size S] [--repeats R]
[--methods NAME ...]``
prints ONE JSON line on stdout (progress goes to stderr). Every timing is the median of ``repeats`` timed
calls after ``warmup`` untimed ones, on one fixed random batch, with the compared functions taking turns
(every method; our Grad-CAM variants/pytorch-grad-cam) so that a changing load on a shared CPU hits both sides of
a ratio alike. Weights are random (``pretrained=False``: no download), which does not change the cost of a step. cuDNN is set as DomainBed's ``train.py`` sets it
(deterministic, no benchmark) unless ``--cudnn-benchmark``, so the numbers are those of a real run.
"""

from __future__ import annotations

import argparse
import copy
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods import registry
from domainbed_align.methods.align import ALIGN
from domainbed_align.methods.explain import CudaGraphExplainer
from domainbed_align.annotations import ShapeWithMaskChannel
from domainbed_align.methods.gradcam import normalize_per_sample
from domainbed_align import floors
from domainbed_align.errors import DomainbedAlignError, print_error

COMMAND = "domainbed-align bench"  # how its errors are prefixed (errors.print_error)

# Targets the project set itself; reported next to the measurements, never asserted by tests.
TARGETS = {"align_over_erm_max_cuda": 3.5, "align_over_erm_max_cpu": 4.0, "gradcam_speedup_min": 20.0,
           "align_over_erm_memory_max": 2.5}

FULL = {"size": 224, "envs": 3, "batch_per_env": 32, "classes": 5, "repeats": 20, "warmup": 5}
# The CPU demo's shape (TextureMNIST: 56 px, 3 training envs x 16, 10 classes): what CPU users actually run.
QUICK = {"size": 56, "envs": 3, "batch_per_env": 16, "classes": 10, "repeats": 5, "warmup": 2}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo (with the thread count torch uses)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return f"{model} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int,
                     repeats: int) -> dict[str, float]:
    """Median wall time in ms of each ``fn()`` over ``repeats`` rounds after ``warmup`` untimed ones.

    The functions take turns within each round, so a change in machine load (a shared 2-core CPU) hits all
    of them alike and their ratios stay meaningful. Synchronises only around each timed call.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak allocated CUDA memory (MiB) during one ``fn()``, weights and optimizer state included; None on CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def peak_memory_alone(make: Callable[[], Any], batches: list, device: torch.device) -> float | None:
    """Peak memory of one update of a freshly built algorithm, after one update that creates Adam's state."""
    algorithm = make()
    algorithm.update(batches)
    peak = peak_memory_mb(lambda: algorithm.update(batches), device)
    del algorithm
    release()
    return peak


def make_batches(envs: int, per_env: int, size: int, classes: int, device: torch.device,
                 seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One fixed DomainBed-style minibatch list; every class appears so the mixup pairing is realistic."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(envs):
        images = torch.randn(per_env, 3, size, size, generator=generator)
        labels = torch.arange(per_env) % classes
        labels = labels[torch.randperm(per_env, generator=generator)]
        batches.append((images.to(device), labels.to(device)))
    return batches


# Each method's pass-count floor: the README's table of methods counts the passes over the N images one update()
# makes, in TimmERM updates (a backward counts as two forwards; "a little" and upper ends of a range left out).
# ``over_floor`` = update() time over TimmERM's / this: near 1, the method costs what its passes do; well above,
# something beyond them (host overhead, a slow kernel) is worth a look. tests/test_bench.py reads them back from the
# README's table.
PASS_FLOORS = {"TimmERM": 1.0, "DRE": 2.0, "ALIGN": 3.3, "SGT": 2.7, "GRADIA": 1.0, "HAICS": 1.0, "RRR": 2.0,
               "RES_G": 1.0, "RES_L": 1.0, "CARE": 1.0}
ALWAYS_TIMED = ("TimmERM", "ALIGN")  # the reference of every ratio, and the model the Grad-CAM timings explain

ALIGNING = dict(warmup_steps=0, masker_warmup_steps=0)  # ALIGN's dearest phase, from the first update on
PHASE = {"ALIGN": ALIGNING}  # per method: the settings that time its dearest phase


def with_masks(batches: list[tuple[torch.Tensor, torch.Tensor]], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches with a mask channel (a random square per image), as our datasets give annotation methods."""
    generator = torch.Generator().manual_seed(seed)
    masked = []
    for images, labels in batches:
        n, _, height, width = images.shape
        masks = torch.zeros(n, 1, height, width)
        for i in range(n):
            top, left = (int(v) for v in torch.randint(0, height // 2, (2,), generator=generator))
            masks[i, :, top:top + height // 2, left:left + width // 2] = 1.0
        masked.append((torch.cat([images, masks.to(images.device)], 1), labels))
    return masked


def build(algorithm_class: type, config: dict[str, Any], device: torch.device, **overrides: Any):
    name = algorithm_class.name
    annotated = registry.entry(name).annotations
    hparams = hparams_lib.default_hparams(name, None, backbone=config["backbone"], pretrained=False,
                                          **({"gt_masks": True} if annotated else {}), **overrides)
    torch.manual_seed(0)
    side = config["size"]
    shape = ShapeWithMaskChannel((4, side, side)) if annotated else (3, side, side)
    return algorithm_class(shape, config["classes"], config["envs"], hparams).to(device)


def release() -> None:
    """Free a finished phase (the caller dropped its references) so the next one's peak memory is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def profile_call(what: str, fn: Callable[[], Any], device: torch.device) -> None:
    """One ``fn()`` (after one untimed call) under torch.profiler; the top 25 ops by self time go to stderr,
    then the call's wall time: far above the CUDA table's "Self CUDA time total" means the host (Python,
    dispatch, launches) bounds the call, not the device."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    synchronize(device)
    with profile(activities=activities, record_shapes=False) as profiler:
        start = time.perf_counter()
        fn()
        synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1000.0
    averages = profiler.key_averages()
    log(f"profile of {what} (top 25 ops by self CPU time):")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr, flush=True)
    if device.type == "cuda":
        log(f"profile of {what} (top 25 ops by self CUDA time):")
        print(averages.table(sort_by="self_cuda_time_total", row_limit=25), file=sys.stderr, flush=True)
    log(f"{what}: wall {wall_ms:.3f} ms under the profiler (the tables' footers give the ops' totals)")


def gradcam_timings(algorithm: ALIGN, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                    warmup: int, repeats: int, profile: bool = False) -> dict[str, float]:
    """Our batched Grad-CAM vs pytorch-grad-cam's GradCAM: as training computes it (``gradcam_ms``), as
    ``algorithm.explain`` gives explanations without autograd (``gradcam_nograph_ms``) and, on CUDA, replayed as a
    CUDA graph by :class:`CudaGraphExplainer` (``gradcam_cudagraph_ms``, checked against eager first)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classifier = algorithm.classifier
    classifier.eval()  # both timings in eval mode

    def ours(closed_form: bool = classifier.closed_form_cam,
             precision: str | None = None) -> Callable[[], torch.Tensor]:
        """Our Grad-CAM as training computes it; ``precision`` 'off' forces fp32 (else the trainer's own)."""
        def run() -> torch.Tensor:
            mode, allowed = algorithm.hparams["mixed_precision"], classifier.closed_form_cam
            algorithm.hparams["mixed_precision"] = precision or mode
            classifier.closed_form_cam = closed_form
            try:
                with algorithm.autocast(images):  # the trainer's precision (bf16 on CUDA) unless forced
                    _, maps = classifier.forward_with_cams(images, labels)
                    return normalize_per_sample(maps.float())
            finally:
                algorithm.hparams["mixed_precision"], classifier.closed_form_cam = mode, allowed
        return run

    def forward_only() -> torch.Tensor:
        """The eval forward pass alone, in the trainer's precision: the floor of any Grad-CAM (it needs the
        activations), so ``gradcam_ms / forward_ms`` says what the map itself costs on top."""
        with torch.no_grad(), algorithm.autocast(images):
            return classifier(images)

    if profile:
        profile_call("our Grad-CAM (gradcam_ms)", ours(), device)

    # pytorch-grad-cam hooks the model it is given (its forward hook copies activations to the host): give it
    # its own copy with the same weights, so its hooks never run inside our timed calls.
    reference_model = copy.deepcopy(classifier)
    target_layer = reference_model.backbone.get_submodule(classifier.stage_name)
    targets = [ClassifierOutputTarget(int(label)) for label in labels.tolist()]
    reference = GradCAM(model=reference_model, target_layers=[target_layer])  # built outside the timed region
    variants: dict[str, Callable[[], Any]] = {}
    graph_check: dict[str, Any] = {}
    if device.type == "cuda":
        explainer = CudaGraphExplainer(algorithm)
        try:
            # Checked before timing (the first call captures): a graph that computed something else is no speed-up.
            graph_check["cudagraph_max_abs_diff"] = (
                explainer(images, labels) - algorithm.explain(images, labels)).abs().max().item()
            variants["gradcam_cudagraph_ms"] = lambda: explainer(images, labels)
        except Exception as error:  # reported in the JSON; the other measurements still come back
            graph_check["cudagraph_error"] = f"{type(error).__name__}: {error}"[:500]
            log(f"CudaGraphExplainer failed, not timed: {graph_check['cudagraph_error']}")
    try:
        result = time_interleaved({
            # As training computes it, and as algorithm.explain gives explanations (no graph, detached).
            "gradcam_ms": ours(), "gradcam_nograph_ms": lambda: algorithm.explain(images, labels), **variants,
            # fp32 too: pytorch-grad-cam cannot run under bf16 autocast (it converts to numpy), so this is the
            # like-for-like precision comparison on CUDA.
            "gradcam_fp32_ms": ours(precision="off"),
            # The generic autograd Grad-CAM, for the effect of the closed form (same as gradcam_ms without it).
            "gradcam_autograd_ms": ours(closed_form=False),
            "forward_ms": forward_only,
            "gradcam_reference_ms": lambda: reference(input_tensor=images, targets=targets)},
            device, warmup, repeats)
    finally:
        reference.activations_and_grads.release()  # remove its hooks
    return {**result, **graph_check}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return round(numerator / denominator, 4)


def selected_methods(chosen: list[str] | None) -> tuple[str, ...]:
    """The methods to time, in registry order: ``chosen`` (default: every registered one) plus TimmERM and ALIGN.
    An unknown name is a ValueError naming the registered ones."""
    names = registry.algorithm_names()
    unknown = [name for name in chosen or () if name not in names]
    if unknown:
        raise ValueError(f"--methods: {', '.join(unknown)} not registered; choose from {' '.join(names)}")
    wanted = set(chosen or names) | set(ALWAYS_TIMED)
    return tuple(name for name in names if name in wanted)


def run(config: dict[str, Any], device: torch.device, profile: bool = False) -> dict[str, Any]:
    floors.require_extra("bench", "the benchmark (its reference Grad-CAM is pytorch-grad-cam's)")
    import pytorch_grad_cam
    import timm

    batches = make_batches(config["envs"], config["batch_per_env"], config["size"], config["classes"], device)
    warmup, repeats = config["warmup"], config["repeats"]

    names = selected_methods(config.get("methods"))
    masked_batches = with_masks(batches)

    def inputs_of(name: str) -> list:
        return masked_batches if registry.entry(name).annotations else batches

    peaks: dict[str, float | None] = {name: None for name in names}
    if device.type == "cuda":  # each algorithm alone on the device, so no peak holds another's weights
        for name in names:
            log(f"peak memory of one update: {name}")
            peaks[name] = peak_memory_alone(
                lambda: build(registry.algorithm_class(name), config, device, **PHASE.get(name, {})),
                inputs_of(name), device)

    log(f"one update() of each of {', '.join(names)} (ALIGN in its alignment phase: one classifier step with the "
        f"alignment term + masker step(s)): {config['envs']}x{config['batch_per_env']} at {config['size']} px on "
        f"{device}, interleaved")
    built = {name: build(registry.algorithm_class(name), config, device, **PHASE.get(name, {})) for name in names}
    precision = built["TimmERM"].precision(batches[0][0].device)  # "bf16", "fp16" or "fp32", as the trainer runs
    steps = time_interleaved({name: (lambda a=algorithm, b=inputs_of(name): a.update(b))
                              for name, algorithm in built.items()}, device, warmup, repeats)
    erm_ms, align_ms = steps["TimmERM"], steps["ALIGN"]
    erm_peak, align_peak = peaks["TimmERM"], peaks["ALIGN"]
    methods = {name: {"ms": round(steps[name], 3), "over_erm": ratio(steps[name], erm_ms),
                      "pass_floor": PASS_FLOORS.get(name),
                      "over_floor": ratio(steps[name], erm_ms * PASS_FLOORS[name]) if name in PASS_FLOORS else None,
                      "peak_mb": None if peaks[name] is None else round(peaks[name], 1),
                      "memory_over_erm": ratio(peaks[name], erm_peak)} for name in names}
    input_size = built["TimmERM"].classifier.input_size
    align = built.pop("ALIGN")
    del built
    release()
    if profile:
        profile_call("one ALIGN update", lambda: align.update(batches), device)

    log("Grad-CAM: ours vs pytorch-grad-cam, interleaved")
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    images = align.prepare_images(images)
    cams = gradcam_timings(align, images, labels, device, warmup, repeats, profile)
    stage_name, cam_side, hparams = align.classifier.stage_name, align.classifier.cam_side, align.hparams
    closed_form = align.classifier.closed_form_cam
    del align
    release()

    is_cuda = device.type == "cuda"
    align_over_erm = ratio(align_ms, erm_ms)
    memory_ratio = ratio(align_peak, erm_peak)
    speedup = ratio(cams["gradcam_reference_ms"], cams["gradcam_ms"])
    targets = {"align_over_erm_max": TARGETS["align_over_erm_max_cuda" if is_cuda else "align_over_erm_max_cpu"],
               "gradcam_speedup_min": TARGETS["gradcam_speedup_min"],
               "align_over_erm_memory_max": TARGETS["align_over_erm_memory_max"]}
    rounded = {key: round(value, 3) if key.endswith("_ms") else value for key, value in cams.items()}
    return {
        "erm_ms": round(erm_ms, 3), "align_ms": round(align_ms, 3), "align_over_erm": align_over_erm,
        "methods": methods,
        **rounded, "gradcam_speedup": speedup,
        "gradcam_speedup_fp32": ratio(cams["gradcam_reference_ms"], cams["gradcam_fp32_ms"]),
        "gradcam_speedup_autograd": ratio(cams["gradcam_reference_ms"], cams["gradcam_autograd_ms"]),
        "gradcam_speedup_explain": ratio(cams["gradcam_reference_ms"], cams["gradcam_nograph_ms"]),
        "gradcam_speedup_cudagraph": ratio(cams["gradcam_reference_ms"], cams.get("gradcam_cudagraph_ms")),
        "gradcam_over_forward": ratio(cams["gradcam_ms"], cams["forward_ms"]),
        "erm_peak_mb": None if erm_peak is None else round(erm_peak, 1),
        "align_peak_mb": None if align_peak is None else round(align_peak, 1),
        "align_over_erm_memory": memory_ratio,
        "targets": targets,
        "meets_align_over_erm": align_over_erm <= targets["align_over_erm_max"],
        "meets_gradcam_speedup": speedup >= targets["gradcam_speedup_min"],
        "meets_align_over_erm_memory": None if memory_ratio is None
        else memory_ratio <= targets["align_over_erm_memory_max"],
        "device": device_name(device), "torch": torch.__version__, "timm": timm.__version__,
        "grad_cam": _grad_cam_version(pytorch_grad_cam),
        "backbone": config["backbone"], "pretrained": False, "resolution": config["size"],
        "classifier_input": input_size, "gradcam_layer": stage_name, "gradcam_closed_form": closed_form,
        "cam_side": cam_side, "batch": f"{config['envs']}x{config['batch_per_env']}",
        "classes": config["classes"], "precision": precision,
        "gradcam_reference_precision": "fp32", "channels_last": bool(is_cuda and hparams["channels_last"]),
        "masker_steps": hparams["masker_steps"], "cudnn_benchmark": config["cudnn_benchmark"],
        "repeats": repeats, "warmup": warmup, "quick": config["quick"], "timing": "interleaved medians",
        "load_avg_1m": [config["load_before"], _load_average()],
    }


def _load_average() -> float | None:
    """1-minute load average: on a shared CPU it says how much the timings were contended."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _grad_cam_version(module: Any) -> str:
    version = getattr(module, "__version__", None)
    if version:
        return version
    from importlib.metadata import PackageNotFoundError, version as package_version

    for name in ("grad-cam", "grad_cam"):
        with contextlib.suppress(PackageNotFoundError):
            return package_version(name)
    return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m domainbed_align.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true", help=f"CPU-sized config {QUICK}")
    parser.add_argument("--batch-per-env", type=int, default=None)
    parser.add_argument("--envs", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="input side in px (native dataset size)")
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations before timing")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="time only these registered methods (TimmERM and ALIGN always; default: every one)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN pick algorithms (DomainBed's train.py disables this)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler tables of one ALIGN update and of our Grad-CAM to stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download: pretrained=False anyway
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print_error("--device cuda but CUDA is not available", COMMAND)
        return 2
    config = dict(QUICK if args.quick else FULL)
    for key in ("size", "envs", "batch_per_env", "classes", "repeats", "warmup"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if min(config["size"], config["envs"], config["batch_per_env"], config["classes"], config["repeats"]) < 1 \
            or config["warmup"] < 0:
        print_error(f"invalid config {config}", COMMAND)
        return 2
    try:
        methods = selected_methods(args.methods)
    except ValueError as error:
        print_error(f"{error}", COMMAND)
        return 2
    config.update(backbone=args.backbone, quick=args.quick, cudnn_benchmark=args.cudnn_benchmark,
                  load_before=_load_average(), methods=list(methods))
    torch.backends.cudnn.deterministic = not args.cudnn_benchmark  # as DomainBed's train.py
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    # Libraries may print; only the JSON line belongs on stdout.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = run(config, device, profile=args.profile)
    except DomainbedAlignError as error:  # e.g. pytorch-grad-cam missing: the [bench] extra named
        print_error(error, COMMAND)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
