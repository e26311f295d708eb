"""The fast ALIGN update agrees with the literal reference (tests/reference_align.py): loss terms and gradients.

Small but real: timm resnet18 on 28-px inputs (resized and Grad-CAM stage chosen by the classifier's defaults),
2 envs x 4, in float64 (the fast path's own float32 casts -- masker output, Grad-CAM, BCE -- set the tolerance).
BatchNorm runs on (randomised) running statistics so that the fast path's joint [x; x_mix] forward and the
reference's separate forwards see the same function; mixup partners and weights are fixed and shared; both
optimizer steps are disabled so the gradients can be read from ``.grad``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods.align import ALIGN
import reference_align as reference  # tests/ is on sys.path (rootdir conftest, no package)

SHAPE = (3, 28, 28)
CLASSES = 4
# Per env; class 3 appears once (it is its own mixup partner), the others several times across envs.
LABELS = (torch.tensor([0, 1, 2, 0]), torch.tensor([1, 0, 3, 1]))
DTYPE = torch.float64
RTOL = 1e-5  # relative, per loss term and per gradient tensor (observed ~1e-7: float32 casts in the fast path)


def _randomise_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters (timm zero-inits each block's last BN gamma,
    which would zero most gradients and make the comparison weak)."""
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            c = bn.num_features
            with torch.no_grad():
                bn.weight.copy_(0.5 + torch.rand(c, generator=generator))
                bn.bias.copy_(0.1 * torch.randn(c, generator=generator))
                bn.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                bn.running_var.copy_(0.5 + torch.rand(c, generator=generator))


def _same_class_partners(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random other sample of the same class (cyclic within a shuffled class group; itself when alone)."""
    partners = torch.empty_like(labels)
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        partners[members] = members.roll(-1)
    return partners


def _setup(freeze_bn: bool = False, **overrides: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    # sparsity_floor 0: the reference is the published masker loss (mean |M|); the floor is tested in test_losses
    hparams = hparams_lib.default_hparams("ALIGN", "Debug28", warmup_steps=0, masker_warmup_steps=0,
                                          freeze_bn=freeze_bn, lambda_align=1.0, lambda_reg=1.0,
                                          **{"sparsity_floor": 0.0, **overrides})
    algorithm = ALIGN(SHAPE, CLASSES, len(LABELS), hparams)
    _randomise_batchnorm(algorithm.classifier, generator)
    algorithm.to(DTYPE)
    batches = [(torch.randn(len(y), *SHAPE, generator=generator, dtype=DTYPE), y) for y in LABELS]
    labels = torch.cat(LABELS)
    partners = _same_class_partners(labels, generator)
    lam = 0.1 + 0.8 * torch.rand(len(labels), generator=generator, dtype=DTYPE)  # away from 0/1: a sharper test
    return {"algorithm": algorithm, "batches": batches, "labels": labels, "partners": partners, "lam": lam,
            # copies taken before the fast path runs (it must not change them anyway: steps are disabled)
            "backbone": copy.deepcopy(algorithm.classifier.backbone), "masker": copy.deepcopy(algorithm.masker)}


def _fast(setup: dict[str, Any]) -> tuple[dict[str, float], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One ALIGN.update() with fixed mixup and no optimizer steps; its terms and the gradients it left."""
    algorithm = setup["algorithm"]
    algorithm.sample_mixup = lambda labels: (setup["partners"], setup["lam"])  # shared randomness
    algorithm.optimizer.step = lambda *args, **kwargs: None
    algorithm.masker_optimizer.step = lambda *args, **kwargs: None
    terms = algorithm.update(setup["batches"])
    classifier_grads = {name: p.grad.clone() for name, p in algorithm.classifier.backbone.named_parameters()}
    masker_grads = {name: p.grad.clone() for name, p in algorithm.masker.named_parameters()}
    return terms, classifier_grads, masker_grads


def _reference(setup: dict[str, Any]) -> tuple[dict[str, float], dict[str, torch.Tensor],
                                                dict[str, torch.Tensor]]:
    algorithm, backbone, masker = setup["algorithm"], setup["backbone"], setup["masker"]
    backbone.eval()
    images = torch.cat([x for x, _ in setup["batches"]])
    labels = setup["labels"]
    where = dict(hparams=algorithm.hparams, input_size=algorithm.classifier.input_size,
                 stage_name=algorithm.classifier.stage_name)

    masker_terms = reference.masker_loss(backbone, masker, images, labels, **where)
    masker_params = list(masker.parameters())
    masker_grads = dict(zip([n for n, _ in masker.named_parameters()],
                            torch.autograd.grad(masker_terms["masker_loss"], masker_params)))

    classifier_terms = reference.classifier_loss(backbone, masker, images, labels, setup["partners"],
                                                 setup["lam"], **where)
    backbone_params = list(backbone.parameters())
    classifier_grads = dict(zip([n for n, _ in backbone.named_parameters()],
                                torch.autograd.grad(classifier_terms["loss"], backbone_params)))
    terms = {k: float(v.detach()) for k, v in {**masker_terms, **classifier_terms}.items()}
    return terms, classifier_grads, masker_grads


def _assert_grads_close(fast: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], what: str) -> None:
    assert fast.keys() == ref.keys()
    # Scale-aware: each tensor within RTOL of the whole gradient's norm, plus the whole vector within RTOL.
    scale = torch.cat([g.flatten() for g in ref.values()]).norm()
    assert scale > 0, f"{what}: reference gradient is zero; the comparison would be vacuous"
    worst = max(((fast[k] - ref[k]).norm() / scale).item() for k in ref)
    assert worst < RTOL, f"{what}: worst per-tensor gradient error {worst:.2e} (relative to ||grad||)"
    for k in ref:
        torch.testing.assert_close(fast[k], ref[k], rtol=RTOL * 10, atol=RTOL * scale.item() / 10,
                                   msg=lambda m, k=k: f"{what} gradient of {k}: {m}")
    nonzero = sum(bool(g.abs().max() > 0) for g in ref.values())
    assert nonzero >= len(ref) // 2, f"{what}: only {nonzero}/{len(ref)} gradient tensors are non-zero"


TERMS = ("loss", "ce", "reg", "reg_consistency", "reg_sparsity", "reg_mixed_ce", "align_bce",
         "masker_loss", "masker_fidelity", "masker_sparsity", "masker_smooth", "masker_distance", "mask_mean")


def _compare(setup: dict[str, Any]) -> None:
    fast_terms, fast_clf, fast_masker = _fast(setup)
    ref_terms, ref_clf, ref_masker = _reference(setup)
    for key in TERMS:
        assert fast_terms[key] == pytest.approx(ref_terms[key], rel=RTOL, abs=1e-7), key
    assert fast_terms["align_bce"] > 0 and fast_terms["reg_consistency"] > 0  # the terms are really active
    _assert_grads_close(fast_clf, ref_clf, "classifier")
    _assert_grads_close(fast_masker, ref_masker, "masker")


def test_fast_align_update_matches_the_reference_in_eval_mode():
    setup = _setup()
    setup["algorithm"].eval()  # BatchNorm on running statistics: batch composition cannot matter
    _compare(setup)


def test_fast_align_update_matches_the_reference_with_closed_form_grad_cam():
    # Grad-CAM at the last stage (4x4 at 112 px): the fast path takes the closed form, the reference autograd.
    setup = _setup(input_size=112, gradcam_layer="layer4")
    assert setup["algorithm"].classifier.closed_form_cam and setup["algorithm"].classifier.cam_side == 4
    setup["algorithm"].eval()
    _compare(setup)


@pytest.mark.parametrize("layer, size", [("auto", 0), ("layer4", 112)], ids=["autograd-cam", "closed-form-cam"])
def test_fast_align_update_matches_the_reference_with_the_standard_map_differentiated_fully(layer, size):
    # The non-default reading: ReLU, and gradients through the channel weights (a double backward at layer2).
    setup = _setup(train_cam_relu=True, train_cam_weight_gradient=True, gradcam_layer=layer, input_size=size)
    setup["algorithm"].eval()
    _compare(setup)


def test_fast_align_update_matches_the_reference_with_freeze_bn():
    setup = _setup(freeze_bn=True)
    setup["algorithm"].train()  # DomainBed's train mode; freeze_bn keeps BatchNorm on running statistics
    _compare(setup)


def test_freeze_bn_survives_a_masker_step():
    setup = _setup(freeze_bn=True)
    algorithm = setup["algorithm"]
    algorithm.train()
    algorithm.masker_optimizer.step = lambda *args, **kwargs: None
    algorithm.masker_step(torch.cat([x for x, _ in setup["batches"]]), setup["labels"])
    assert not any(m.training for m in algorithm.classifier.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm))
