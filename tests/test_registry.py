"""One registry: the hook, checkpoints, hparams and docs read it; adding a method is one class (and one loss)."""

import pytest
import torch

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods import registry
from domainbed_align.methods.hparams import BACKBONE_HPARAMS, HParam
from domainbed_align.methods.trainer import ExplanationGuidedAlgorithm


def test_every_entry_is_a_family_algorithm_under_its_own_name():
    import domainbed_align

    assert domainbed_align.ALGORITHM_NAMES == registry.algorithm_names()
    for entry in registry.entries():
        assert issubclass(entry.cls, ExplanationGuidedAlgorithm) and entry.cls.name == entry.name
        assert hparams_lib.specs_for(entry.name) == entry.hparams
        assert entry.annotations == entry.cls.uses_gt_masks
        assert entry.explanation and (entry.name == "TimmERM" or entry.paper and entry.reference)


def test_a_new_method_is_one_decorated_class(monkeypatch):
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))  # restored after the test

    @registry.register_algorithm(hparams=BACKBONE_HPARAMS + (HParam("lambda_logit_norm", float, 0.5, None, "."),))
    class LogitNorm(ExplanationGuidedAlgorithm):
        def explanation_loss(self, step):
            norm = step.logits.pow(2).mean()
            return self.hparams["lambda_logit_norm"] * norm, {"logit_norm": norm}

    assert registry.algorithm_names()[-1] == "LogitNorm"
    algorithm = LogitNorm((3, 28, 28), 3, 2, hparams_lib.default_hparams("LogitNorm", "Debug28"))
    floats = algorithm.update([(torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 0]))])
    assert floats["loss"] == pytest.approx(floats["ce"] + 0.5 * floats["logit_norm"], rel=1e-5)


def test_duplicate_hparams_are_refused():
    with pytest.raises(ValueError, match="declared twice"):
        registry.register_algorithm(hparams=BACKBONE_HPARAMS + BACKBONE_HPARAMS[:1])


def test_unknown_name_says_what_is_registered():
    with pytest.raises(KeyError, match="registered"):
        registry.entry("ALIGNN")
