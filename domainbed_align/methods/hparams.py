"""Hyperparameters of our algorithms: defaults, random-search distributions and validation, as data.

The hook registers these into DomainBed's ``hparams_registry`` (each random value drawn from
``np.random.RandomState(seed_hash(random_seed, name))``, as upstream does), so ``--hparams_seed`` sweeps
work as for built-in algorithms. Everything here is plain Python: random values are cast to ``bool`` /
``int`` / ``float`` / ``str`` because ``train.py`` JSON-dumps the hparams.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from domainbed_align.errors import HParamError, did_you_mean
from domainbed_align.methods import registry

# DomainBed's real photo datasets: every DomainBed baseline starts from ImageNet weights there.
PHOTO_DATASETS = frozenset(
    {"VLCS", "PACS", "OfficeHome", "TerraIncognita", "DomainNet", "SVIRO", "WILDSCamelyon", "WILDSFMoW",
     "SpawriousO2O_easy", "SpawriousO2O_medium", "SpawriousO2O_hard",
     "SpawriousM2M_easy", "SpawriousM2M_medium", "SpawriousM2M_hard"}
)


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its type, default (possibly per dataset), random distribution and meaning."""

    name: str
    kind: type  # bool, int, float or str
    default: Any  # a value, or a callable dataset_name -> value
    sample: Callable[[np.random.RandomState], Any] | None  # None: the random value is the default
    doc: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    # float hparams whose unit depends on the dataset's input scale (RRR's lambda): dataset -> factor applied to the
    # random draw, so the search range moves with the default
    scale_for: Callable[[str | None], float] | None = None

    def default_for(self, dataset: str | None) -> Any:
        return self.default(dataset) if callable(self.default) else self.default

    def random_for(self, dataset: str | None, random_state: np.random.RandomState) -> Any:
        if self.sample is None:
            return self.default_for(dataset)
        value = self.sample(random_state)
        return self.kind(value * self.scale_for(dataset) if self.scale_for else value)

    def check(self, value: Any, algorithm: str) -> Any:
        """Return ``value`` if it is a valid setting of this hparam, else raise :class:`HParamError`."""
        where = f"hparam '{self.name}' of {algorithm}"
        ok_type = (
            isinstance(value, bool) if self.kind is bool
            else isinstance(value, int) and not isinstance(value, bool) if self.kind is int
            else isinstance(value, (int, float)) and not isinstance(value, bool) if self.kind is float
            else isinstance(value, str)
        )
        if not ok_type:
            raise HParamError(
                f"{where} must be a {self.kind.__name__}, got {value!r} ({type(value).__name__}); "
                f"e.g. --hparams '{{\"{self.name}\": {json.dumps(self.default_for(None))}}}'. {self.doc}")
        if self.kind is float and not math.isfinite(value):
            raise HParamError(f"{where} must be finite, got {value!r}.")
        if self.choices and value not in self.choices:
            raise HParamError(f"{where} must be one of {list(self.choices)}, got {value!r}. {self.doc}")
        if self.minimum is not None and value < self.minimum:
            raise HParamError(f"{where} must be >= {self.minimum}, got {value!r}. {self.doc}")
        if self.maximum is not None and value > self.maximum:
            raise HParamError(f"{where} must be <= {self.maximum}, got {value!r}. {self.doc}")
        return value


def log_uniform(low: float, high: float) -> Callable[[np.random.RandomState], float]:
    return lambda r: float(10 ** r.uniform(low, high))


def choice(*values: Any) -> Callable[[np.random.RandomState], Any]:
    return lambda r: values[int(r.randint(len(values)))]


# --- shared by every algorithm of the family (the backbone and the trainer) ---------------------------
BACKBONE_HPARAMS = (
    HParam("backbone", str, "resnet18", None,
           "timm model name; plain names use torchvision-equivalent weights (resnet18 -> resnet18.tv_in1k), "
           "a full tag such as 'resnet18.a1_in1k' picks those weights. 'rrr_mlp': dtak/rrr's 50-30 perceptron "
           "(Decoy-MNIST's model; no Grad-CAM, so TimmERM, RRR and SGT only)."),
    HParam("pretrained", bool, lambda dataset: dataset in PHOTO_DATASETS, None,
           "start from ImageNet weights (default: true on DomainBed's real photo datasets, false elsewhere)."),
    HParam("pretrained_file", str, "", None,
           "local checkpoint to load instead of downloading (timm pretrained_cfg_overlay file=...)."),
    HParam("input_size", int, 0, None,
           "side the classifier resizes its input to; 0 = native size if >= 56 px, else 56 px, so that "
           "Grad-CAM keeps a 7x7 map on DomainBed's 28-px datasets.", minimum=0),
    HParam("gradcam_layer", str, "auto", None,
           "backbone stage whose Grad-CAM is used (timm feature_info module name, e.g. 'layer4'); 'auto' = "
           "the deepest stage whose map is at least 7x7 (ResNet: layer4 at 224 px, layer3 at 112, layer2 at 56)."),
    HParam("mixed_precision", str, "auto", None,
           "'auto' = bf16 autocast on GPUs with native bf16 (compute capability >= 8.0, ROCm), float32 elsewhere; "
           "'bf16', 'fp16' (with a gradient scaler) or 'off' (float32) to force.",
           choices=("auto", "bf16", "fp16", "off")),
    HParam("channels_last", bool, True, None,
           "use channels_last memory format on CUDA (no effect on CPU)."),
)


# --- the Grad-CAM a training loss reads (DRE, ALIGN, GRADIA, HAICS, ...) --------------------------------
def train_cam_hparams(relu: bool = False, weight_gradient: bool = False,
                      whose: str = "DRE") -> tuple[HParam, HParam]:
    """How the map a training loss reads is computed; defaults are the method's own code's (``whose``).

    DRE's code trains on captum's LayerGradCam with its defaults (no ReLU, channel weights without gradient);
    the standard ReLU map, differentiated fully, left 42-58% of ALIGN's maps all-zero in the demo (issue 11).
    """
    weights = "yes" if weight_gradient else "no, the weights are constants; the loss acts through the activations"
    return (
        HParam("train_cam_relu", bool, relu, None,
               f"apply Grad-CAM's ReLU to the map the losses train on ({whose}: {'yes' if relu else 'no'}; "
               f"explanations always use it)."),
        HParam("train_cam_weight_gradient", bool, weight_gradient, None,
               f"let the training losses differentiate through Grad-CAM's channel weights, a double backward "
               f"where the closed form does not apply ({whose}: {weights})."),
    )


TRAIN_CAM_HPARAMS = train_cam_hparams()

# --- DRE's mixup explanation-consistency term (ALIGN's L_reg) -----------------------------------------
MIXUP_HPARAMS = TRAIN_CAM_HPARAMS + (
    HParam("lambda_reg", float, 1.0, log_uniform(-1.0, 0.5),
           "weight of DRE's same-class mixup explanation-consistency term (inside it DRE's own weights "
           "1.0 consistency + 0.5 sparsity + 0.1 mixed CE).", minimum=0.0),
    HParam("mixup_alpha", float, 0.2, None, "Beta(alpha, alpha) of the mixup coefficient (DRE: 0.2).",
           minimum=1e-6),
)

# --- annotation methods: the mask channel ---------------------------------------------------------------
# Our datasets with ground-truth foreground masks (the mask channel, see domainbed_align.data.datasets).
MASK_DATASETS = frozenset({"TextureMNIST", "SpuriousTextureMNIST", "DecoyMNIST", "DecoyMNISTFull"})
GT_MASKS_HPARAM = HParam(
    "gt_masks", bool, lambda dataset: dataset in MASK_DATASETS, None,
    "train on ground-truth masks: the dataset appends them as a last input channel, which the trainer splits off "
    "before any network sees the input (default: on where the dataset has masks, i.e. TextureMNIST and "
    "SpuriousTextureMNIST; off elsewhere, where the method is then plain ERM unless mask_dir gives masks).")
MASK_DIR_HPARAM = HParam(
    "mask_dir", str, "", None,
    "folder of mask PNGs mirroring the dataset's images (domainbed_align.annotations.folder: e.g. SAM pseudo-masks, or "
    "`python -m domainbed_align.masks export` of an ALIGN run); given, the method trains on them instead of the "
    "dataset's own masks. Relative paths are from the working directory; only annotation methods read it.")
ANNOTATION_METHOD_HPARAM = HParam(
    "annotation_method", bool, True, None,
    "set by the registry for the annotation methods, not a setting: only their runs' datasets append a mask channel "
    "(a sweep's --hparams, gt_masks and mask_dir included, reach every algorithm, DomainBed's own too).",
    choices=(True,))
ANNOTATION_HPARAMS = (GT_MASKS_HPARAM, MASK_DIR_HPARAM, ANNOTATION_METHOD_HPARAM)

# --- ALIGN's masker and alignment -------------------------------------------------------------------
ALIGN_HPARAMS = (
    # Keeping every pixel costs lambda_sparsity while the fidelity term is at most 4, and keeping everything
    # already minimises p_y(x*(1-M)): at 0.05 the masker kept ~97% of TextureMNIST (digit IoU 0.06), at 2.0 it
    # kept 15% (IoU 0.52). See results/masker_sparsity/.
    HParam("lambda_sparsity", float, 2.0, log_uniform(-0.5, 0.5),
           "masker: weight of mean |M(x)| (sparsity).", minimum=0.0),
    # The default since issue 29 (results/align_single_source_collapse/): trained on one domain, 2 of 3 ALIGN runs
    # with the published term (0) emptied their mask; with 0.05 none of 12 did, accuracy unchanged (paired).
    HParam("sparsity_floor", float, 0.05, choice(0.0, 0.05, 0.1),
           "masker: sparsity pulls each image's mask mean toward this share, down from above (the published push) "
           "and up from below, so it never empties a mask (0 = the published mean |M|; issue 29, "
           "results/align_single_source_collapse/).",
           minimum=0.0, maximum=1.0),
    HParam("lambda_smooth", float, 0.05, log_uniform(-2.5, -0.5),
           "masker: weight of the total variation of M(x) (smoothness).", minimum=0.0),
    HParam("lambda_align", float, 1.0, log_uniform(-1.0, 1.0),
           "classifier: weight of BCE(Grad-CAM_y(x), M(x)).", minimum=0.0),
    HParam("warmup_steps", int, 1000, choice(500, 1000, 2000),
           "update() calls with the classifier alone (CE + lambda_reg * L_mixup) before the masker starts; "
           "counted in absolute steps because DomainBed never tells an algorithm the run length.", minimum=0),
    HParam("masker_warmup_steps", int, 100, choice(50, 100, 200),
           "update() calls after warmup_steps in which the masker trains against the classifier but the "
           "alignment term is still off, so the first alignment target is a trained mask (each call still makes "
           "one classifier step, CE + lambda_reg * L_mixup).", minimum=0),
    HParam("masker_steps", int, 1, choice(1, 2),
           "masker steps per update() after warm-up (each update() is always one classifier step).",
           minimum=1),
    HParam("masker_lr", float, 1e-3, log_uniform(-4.0, -2.5), "Adam learning rate of the masker.",
           minimum=0.0),
    HParam("masker_width", int, 16, choice(16, 32),
           "channels of the masker's two hidden 3x3 conv layers.", minimum=1),
    HParam("masker_downsample", int, 2, None,
           "the masker runs on a d-times area-downsampled image and its output is upsampled back to the "
           "input's size (1 = full resolution).", minimum=1),
    HParam("align_resolution", str, "cam", None,
           "where mask and Grad-CAM meet: 'cam' = area-downsample the mask to the Grad-CAM grid, "
           "'input' = bilinearly upsample Grad-CAM to the mask.", choices=("cam", "input")),
)

# Our offline datasets train from scratch (no weights offline): DomainBed's small-image learning rate suits
# them, not the 5e-5 it gives photo datasets for fine-tuning. Applies to every algorithm on these datasets.
OFFLINE_DATASETS = ("TextureMNIST", "SpuriousTextureMNIST", "VLCSMini", "DecoyMNIST", "DecoyMNISTFull")
DATASET_HPARAMS = (
    HParam("lr", float, 1e-3, log_uniform(-4.5, -2.5), "learning rate (DomainBed's small-image range)."),
    HParam("weight_decay", float, 0.0, None, "weight decay (none, as for DomainBed's small images)."),
)


def dataset_entries(dataset: str, random_seed: int, seed_hash: Callable[..., int]) -> dict[str, tuple[Any, Any]]:
    """Overrides of DomainBed's common hparams on our offline datasets, in registry format."""
    if dataset not in OFFLINE_DATASETS:
        return {}
    return {spec.name: (spec.default_for(dataset),
                        spec.random_for(dataset, np.random.RandomState(seed_hash(random_seed, spec.name))))
            for spec in DATASET_HPARAMS}


def specs_for(algorithm: str) -> tuple[HParam, ...]:
    """Our hparams of a registered algorithm (its registry entry's)."""
    return registry.entry(algorithm).hparams


def registry_entries(algorithm: str, dataset: str, random_seed: int,
                     seed_hash: Callable[..., int]) -> dict[str, tuple[Any, Any]]:
    """Our hparams in DomainBed's registry format {name: (default, random)}, seeded like upstream's."""
    entries = {}
    for spec in specs_for(algorithm):
        random_state = np.random.RandomState(seed_hash(random_seed, spec.name))
        entries[spec.name] = (spec.default_for(dataset), spec.random_for(dataset, random_state))
    return entries


def default_hparams(algorithm: str, dataset: str | None = None, **common: Any) -> dict[str, Any]:
    """Defaults without DomainBed (tests, notebooks); ``common`` supplies DomainBed's lr/batch_size/... ."""
    base = {"batch_size": 32, **{name: spec.default for name, spec in COMMON_USED.items()}}
    base.update({spec.name: spec.default_for(dataset) for spec in specs_for(algorithm)})
    base.update(common)
    return base


# DomainBed's own hparams that our algorithms read, checked like ours (type and range) so that a bad value
# stops the run at construction, naming the hparam, rather than inside torch at the first step.
COMMON_USED = {
    "lr": HParam("lr", float, 1e-3, None, "the classifier's Adam learning rate.", minimum=1e-12),
    "weight_decay": HParam("weight_decay", float, 0.0, None, "the classifier's Adam weight decay.", minimum=0.0),
    "resnet_dropout": HParam("resnet_dropout", float, 0.0, None, "dropout before the classifier head.",
                             minimum=0.0, maximum=0.99),
    "freeze_bn": HParam("freeze_bn", bool, False, None, "BatchNorm layers keep their running statistics."),
}


def validate(algorithm: str, hparams: Mapping[str, Any],
             other_known: Iterable[str] | None = None) -> dict[str, Any]:
    """Check every hparam of ``algorithm``; return a plain dict copy.

    ``other_known`` lists the names any algorithm registered in DomainBed defines (given by the hook); when
    given, any other key is an error with a did-you-mean hint, because ``train.py --hparams`` silently accepts
    typos. Other algorithms' hparams pass, since a sweep's --hparams goes to every algorithm it runs.
    """
    specs = {spec.name: spec for spec in specs_for(algorithm)}
    missing = [name for name in list(specs) + list(COMMON_USED) if name not in hparams]
    if missing:
        raise HParamError(
            f"{algorithm} is missing hparams {missing}; build them with "
            f"domainbed.hparams_registry.default_hparams('{algorithm}', dataset) (or "
            f"domainbed_align.methods.hparams.default_hparams without DomainBed).")
    for name, spec in specs.items():
        spec.check(hparams[name], algorithm)
    for name, spec in COMMON_USED.items():
        spec.check(hparams[name], algorithm)
    if hparams["pretrained_file"] and not hparams["pretrained"]:
        raise HParamError(f"hparam 'pretrained_file' of {algorithm} is {hparams['pretrained_file']!r} but "
                          f"'pretrained' is false, so it would be ignored; add \"pretrained\": true to --hparams "
                          f"to load it, or drop pretrained_file to train from scratch.")
    if other_known is not None:
        known = set(specs) | set(other_known)
        unknown = sorted(set(hparams) - known)
        if unknown:
            hints = [f"'{name}'{did_you_mean(name, known)}" for name in unknown]
            raise HParamError(f"unknown hparam {', '.join(hints)}: no algorithm defines it; {algorithm}'s "
                              f"hparams are {sorted(specs)} plus DomainBed's common ones.")
    return dict(hparams)
