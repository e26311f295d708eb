"""The one factory for classifiers (:func:`build_classifier`): a timm backbone plus what Grad-CAM needs (input
resize, target stage), or dtak/rrr's small perceptron (``backbone`` ``'rrr_mlp'``) for the Decoy-MNIST reproduction.

Pretrained choices are data (:data:`PRETRAINED_TAGS`): plain model names map to torchvision-equivalent
ImageNet weights, so our numbers compare like for like with DomainBed's torchvision ResNets. Weights that
cannot be loaded are an error within seconds, never a silent fall-back to random weights.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from domainbed_align.errors import HParamError, PretrainedWeightsError
from domainbed_align.methods.gradcam import grad_cam, linear_head_grad_cam, true_class_scores

PRETRAINED_TAGS = {
    "resnet18": "resnet18.tv_in1k",
    "resnet34": "resnet34.tv_in1k",
    "resnet50": "resnet50.tv_in1k",
    "resnet101": "resnet101.tv_in1k",
    "resnet152": "resnet152.tv_in1k",
}

# Inputs smaller than this are upsampled to it (input_size=0), so a ResNet's layer2 map is 7x7 on
# 28-px datasets (layer4 would be 1x1) while a CPU step stays cheap.
MIN_AUTO_INPUT_SIZE = 56
MIN_CAM_SIDE = 7  # what 'auto' asks of a stage
MIN_SPATIAL_CAM_SIDE = 2  # what any explicitly named stage must give


def create_backbone(name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False,
                    pretrained_file: str = "", drop_rate: float = 0.0) -> nn.Module:
    """A timm model with a fresh ``num_classes`` head; ImageNet weights when ``pretrained``."""
    import timm

    model_name = PRETRAINED_TAGS.get(name, name) if pretrained else name.split(".")[0]
    if not timm.is_model(model_name.split(".")[0]):
        raise HParamError(f"hparam 'backbone' is {name!r}, which timm does not know; "
                          f"see timm.list_models('resnet*') for valid names.")
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if not pretrained:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    if pretrained_file:
        if not os.path.isfile(pretrained_file):
            raise PretrainedWeightsError(
                f"hparam 'pretrained_file' is {pretrained_file!r}, which is not a file; give the path of a "
                f"{model_name} checkpoint (state_dict, .pth or .safetensors).")
        kwargs["pretrained_cfg_overlay"] = dict(file=pretrained_file)
    else:
        _fail_fast_if_hub_unreachable(model_name)
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except Exception as error:  # timm/hub raise many types; all mean "no weights"
        raise PretrainedWeightsError(_weights_help(model_name, f"{type(error).__name__}: {error}")) from None


def _weights_help(model_name: str, reason: str) -> str:
    return (f"could not load ImageNet weights for {model_name} ({reason.splitlines()[0][:200]}). Fix: run once "
            f"with network access to fill the Hugging Face cache, or download the checkpoint and pass "
            f"--hparams '{{\"pretrained_file\": \"/path/to/{model_name}.safetensors\"}}', or train from scratch "
            f"with --hparams '{{\"pretrained\": false}}' (results then differ from DomainBed's baselines).")


def _fail_fast_if_hub_unreachable(model_name: str) -> None:
    """timm retries an unreachable hub for ~47 s; answer in seconds when the weights cannot come. The probe is
    huggingface_hub's own metadata request for the weights file (its endpoint, HF_ENDPOINT mirrors, proxies and
    HF_HUB_ETAG_TIMEOUT), so it asks exactly what timm's download would."""
    import timm
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    config = timm.models.get_pretrained_cfg(model_name)
    hub_id = config.hf_hub_id if config else None
    if not hub_id:
        return  # weights from a plain URL: timm reports what goes wrong there
    files = ("model.safetensors", "pytorch_model.bin")
    if any(isinstance(try_to_load_from_cache(hub_id, name), str) for name in files):
        return  # cached: timm loads it without the network
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES  # its own reading
    if offline or constants.HF_HUB_OFFLINE:
        raise PretrainedWeightsError(_weights_help(model_name, "HF_HUB_OFFLINE is set and they are not cached"))
    try:
        get_hf_file_metadata(hf_hub_url(hub_id, files[0]), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as error:  # httpx / huggingface_hub errors: all mean the weights cannot come from here
        reason = (str(error).strip().splitlines() or [""])[0][:150]
        raise PretrainedWeightsError(_weights_help(model_name, f"the hub is unreachable: {type(error).__name__}: "
                                                                f"{reason}")) from None


class CamClassifier(nn.Module):
    """A backbone that also returns the feature map Grad-CAM is taken on.

    ``input_size`` 0 keeps inputs of at least 56 px and upsamples smaller ones to 56 px (bilinear), so the
    map stays spatial on 28-px datasets (a ResNet's layer4 is 1x1 there). ``gradcam_layer`` 'auto' takes the
    deepest stage whose map is at least 7x7.
    """

    has_gradcam = True

    def __init__(self, backbone: nn.Module, native_size: int, input_size: int = 0,
                 gradcam_layer: str = "auto", freeze_bn: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.freeze_bn = freeze_bn
        self.input_size = input_size or (native_size if native_size >= MIN_AUTO_INPUT_SIZE
                                         else MIN_AUTO_INPUT_SIZE)
        self.native_size = native_size
        stages = [info["module"] for info in backbone.feature_info]
        reductions = [info["reduction"] for info in backbone.feature_info]
        if gradcam_layer == "auto":
            sides = [math.ceil(self.input_size / r) for r in reductions]
            spatial = [i for i, side in enumerate(sides) if side >= MIN_CAM_SIDE]
            if not spatial:
                raise HParamError(
                    f"hparam 'gradcam_layer' is 'auto' but no stage of this backbone has a map of at least "
                    f"{MIN_CAM_SIDE}x{MIN_CAM_SIDE} at input_size {self.input_size} (maps {sides}); use "
                    f"input_size 0 (auto) or >= {MIN_AUTO_INPUT_SIZE}, or name a stage of {stages}.")
            self.stage_index = spatial[-1]
        elif gradcam_layer in stages:
            self.stage_index = stages.index(gradcam_layer)
        else:
            raise HParamError(f"hparam 'gradcam_layer' is {gradcam_layer!r}; this backbone's stages are "
                              f"{stages} (or 'auto').")
        self.stage_name = stages[self.stage_index]
        self.cam_side = math.ceil(self.input_size / reductions[self.stage_index])
        if self.cam_side < MIN_SPATIAL_CAM_SIDE:
            # A 1x1 map min-max normalises to a constant: every explanation loss would be silently inert.
            raise HParamError(
                f"hparam 'gradcam_layer' {self.stage_name!r} gives a {self.cam_side}x{self.cam_side} Grad-CAM at "
                f"input_size {self.input_size}; explanation losses need a spatial map. Use an earlier stage, "
                f"'auto', or a larger input_size.")
        # Closed-form Grad-CAM when it is exact (see linear_head_grad_cam); the bench switches it off to compare.
        self.closed_form_cam = (self.stage_index == len(stages) - 1 and _head_is_average_pool_then_linear(backbone))
        self.train()

    def train(self, mode: bool = True) -> "CamClassifier":
        """As nn.Module.train, but with ``freeze_bn`` BatchNorm layers keep their running statistics (DomainBed's
        freeze_bn), whoever switches the mode."""
        super().train(mode)
        if mode and self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] == self.input_size and images.shape[-2] == self.input_size:
            return images
        return F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                             align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self._resize(images))

    def forward_with_activations(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[N, K]`` and the Grad-CAM stage's feature map ``[N, C, h, w]`` (in the same graph)."""
        features, (activations,) = self.backbone.forward_intermediates(
            self._resize(images), indices=[self.stage_index])
        return self.backbone.forward_head(features), activations

    def forward_with_cams(self, images: torch.Tensor, labels: torch.Tensor | None, differentiable: bool = True,
                          relu: bool = True, weight_gradient: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[N, K]`` and each sample's Grad-CAM for class ``labels[i]``, ``[N, h, w]`` (not normalised).

        ``labels`` None explains each sample's predicted class (the argmax of its logits). ``differentiable``: the
        maps (and logits) keep their graph, so a loss on them trains the network. Without it both come back
        detached (explanations, not a training signal), and the closed form runs the whole forward pass without
        autograd. ``relu`` / ``weight_gradient``: the reading of the map a loss trains on (see
        :mod:`domainbed_align.methods.gradcam`; DRE's is ``False, False``); explanations use the defaults.
        """
        # Dropout between pooling and the linear layer makes the gradient sample-specific: autograd then.
        dropout_active = self.training and bool(getattr(self.backbone, "drop_rate", 0.0))
        if self.closed_form_cam and not dropout_active:
            with contextlib.nullcontext() if differentiable else torch.no_grad():
                logits, activations = self.forward_with_activations(images)
                targets = logits.argmax(dim=1) if labels is None else labels
                weights = self.backbone.get_classifier().weight[targets]
                if not weight_gradient:
                    weights = weights.detach()  # the gradient dy/dA as a constant, as captum computes it
                return logits, linear_head_grad_cam(activations, weights, relu=relu)
        with torch.enable_grad():  # the autograd form needs a graph even for explanations
            logits, activations = self.forward_with_activations(images)
            targets = logits.detach().argmax(dim=1) if labels is None else labels
            cams = grad_cam(activations, true_class_scores(logits, targets), create_graph=differentiable,
                            relu=relu, weight_gradient=weight_gradient)
        return (logits, cams) if differentiable else (logits.detach(), cams.detach())


# dtak/rrr's MultilayerPerceptron (rrr/multilayer_perceptron.py, the camera-ready 3c932ed): the Decoy-MNIST model.
RRR_MLP = "rrr_mlp"
RRR_MLP_LAYERS = (50, 30)  # its layers=(50, 30)
RRR_MLP_INIT_SCALE = 0.1  # its init_random_params(0.1, ...): weights and biases ~ N(0, 0.1^2)


class PerceptronClassifier(nn.Module):
    """dtak/rrr's perceptron: the flattened native-size image -> 50 -> 30 -> classes, ReLU after each hidden layer
    (its feed_forward applies none to the output), weights and biases drawn from N(0, 0.1^2) as its init.

    It has no feature map, hence no Grad-CAM: methods that train on Grad-CAM refuse it, and ``forward_with_cams``
    raises. TimmERM, RRR and SGT (input gradients) train with it.
    """

    has_gradcam = False
    closed_form_cam = False
    stage_name = None
    cam_side = None

    def __init__(self, input_shape: Sequence[int], num_classes: int, layers: tuple[int, ...] = RRR_MLP_LAYERS) -> None:
        super().__init__()
        self.image_shape = tuple(input_shape)  # (C, H, W)
        self.input_size = self.native_size = input_shape[-1]
        sizes = [math.prod(self.image_shape), *layers, num_classes]
        modules: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(fan_in, fan_out)
            with torch.no_grad():
                linear.weight.normal_(0.0, RRR_MLP_INIT_SCALE)
                linear.bias.normal_(0.0, RRR_MLP_INIT_SCALE)
            modules += [linear] if i == len(sizes) - 2 else [linear, nn.ReLU()]
        self.layers = nn.Sequential(*modules)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.image_shape:
            raise HParamError(f"backbone {RRR_MLP!r} was built for images of shape {self.image_shape}, got "
                              f"{tuple(images.shape[1:])}: it reads the flattened image at its native size.")
        return self.layers(images.flatten(1))

    def forward_with_cams(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        raise HParamError(NO_GRADCAM.format(what="Grad-CAM explanations (evaluate, explain())"))


NO_GRADCAM = (f"backbone {RRR_MLP!r} (dtak/rrr's perceptron) has no feature map, so no Grad-CAM: {{what}} need a "
              f"convolutional timm backbone such as 'resnet18' (the default). With {RRR_MLP!r} use TimmERM, RRR or SGT.")


def build_classifier(hparams: Mapping[str, Any], num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """The classifier of ``hparams`` (validated) for images ``input_shape`` ``(C, H, W)`` (no mask channel): a
    :class:`CamClassifier` on a timm backbone, or with ``backbone`` ``'rrr_mlp'`` a :class:`PerceptronClassifier`."""
    in_channels, native_size = input_shape[0], input_shape[-1]
    if hparams["backbone"] != RRR_MLP:
        backbone = create_backbone(hparams["backbone"], num_classes, in_chans=in_channels,
                                   pretrained=hparams["pretrained"], pretrained_file=hparams["pretrained_file"],
                                   drop_rate=hparams["resnet_dropout"])
        return CamClassifier(backbone, native_size=native_size, input_size=hparams["input_size"],
                             gradcam_layer=hparams["gradcam_layer"], freeze_bn=hparams["freeze_bn"])
    # The perceptron has no weights to load, no resize, no stages and no dropout: a setting that would change one of
    # these is refused rather than silently ignored.
    unusable = {"pretrained": False, "pretrained_file": "", "input_size": 0, "gradcam_layer": "auto",
                "resnet_dropout": 0.0}
    for name, default in unusable.items():
        if hparams.get(name, default) != default:
            raise HParamError(f"hparam {name!r} is {hparams[name]!r} (given, or this dataset's default), which "
                              f"backbone {RRR_MLP!r} (dtak/rrr's perceptron) cannot use; set it to {default!r} in "
                              f"--hparams, or use a timm backbone.")
    return PerceptronClassifier(input_shape, num_classes)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block, its previous mode restored after (through its own ``train``, so a
    CamClassifier keeps ``freeze_bn``)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _head_is_average_pool_then_linear(backbone: nn.Module) -> bool:
    """True for timm ResNets (forward_head: global average pool, optional dropout, linear) whose final
    features are the last stage's output: the case where Grad-CAM at that stage has a closed form."""
    from timm.layers import SelectAdaptivePool2d
    from timm.models.resnet import ResNet

    pool = getattr(backbone, "global_pool", None)
    return (isinstance(backbone, ResNet) and isinstance(pool, SelectAdaptivePool2d)
            and pool.pool_type == "avg" and not pool.is_identity()
            and isinstance(backbone.get_classifier(), nn.Linear))
