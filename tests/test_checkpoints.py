"""load_algorithm reads a DomainBed model.pkl (the layout upstream's train.py saves) without DomainBed."""

import numpy as np
import pytest
import torch

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods.align import ALIGN
from domainbed_align.methods.checkpoints import load_algorithm
from domainbed_align.errors import CheckpointError

SHAPE = (3, 28, 28)


def _batches(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, *SHAPE, generator=generator), torch.tensor([0, 1, 2, 1])) for _ in range(2)]


def _save(path, algorithm, hparams, name="ALIGN", numpy_scalars=False):
    # Upstream's layout: args, input shape, classes, training domains, hparams and the state dict. DomainBed alone
    # (or an earlier release of ours) saves its random hparam draws as numpy scalars: numpy_scalars puts one in.
    extra = {"resnet_dropout": np.float64(0.0), "batch_size": np.int64(4)} if numpy_scalars else {}
    torch.save({"args": {"algorithm": name, "dataset": "Debug28", "test_envs": [0]}, "model_input_shape": SHAPE,
                "model_num_classes": 3, "model_num_domains": 2,
                "model_hparams": {**hparams, **extra}, "model_dict": algorithm.state_dict()},
               path)


def test_numpy_scalars_in_the_hparams_load_on_every_supported_torch_and_numpy(trained, tmp_path):
    # DomainBed saves its random hparam draws as numpy scalars; numpy 1.x pickles them through _codecs.encode and
    # dtype classes that numpy.dtypes does not list, and torch 2.4 has no scoped safe_globals
    saved, _ = trained
    path = tmp_path / "numpy_hparams.pkl"
    _save(path, saved, dict(saved.hparams), numpy_scalars=True)
    loaded = load_algorithm(path)
    assert loaded.hparams["resnet_dropout"] == 0.0 and loaded.hparams["batch_size"] == 4


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("ALIGN", "Debug28", warmup_steps=1, lambda_align=3.5)
    algorithm = ALIGN(SHAPE, 3, 2, hparams)
    for _ in range(3):  # past warm-up: masker and classifier both trained
        algorithm.update(_batches())
    path = tmp_path / "model.pkl"
    _save(path, algorithm, hparams)
    return algorithm.eval(), path


def test_loaded_model_predicts_and_explains_as_the_saved_one(trained):
    saved, path = trained
    loaded = load_algorithm(path)
    assert type(loaded) is ALIGN and not loaded.training
    assert loaded.steps_done == 3 and loaded.hparams["lambda_align"] == 3.5  # progress and hparams come back
    images, labels = torch.cat([x for x, _ in _batches(seed=1)]), torch.tensor([0, 1, 2, 1] * 2)
    with torch.no_grad():
        assert torch.equal(loaded.predict(images), saved.predict(images))
        assert torch.equal(loaded.masker(images), saved.masker(images))
    assert torch.equal(loaded.explain(images, labels), saved.explain(images, labels))
    fresh = ALIGN(SHAPE, 3, 2, hparams_lib.default_hparams("ALIGN", "Debug28")).eval()
    with torch.no_grad():
        assert not torch.equal(fresh.predict(images), saved.predict(images))  # so equality above means something


def test_missing_damaged_and_foreign_files_are_named(trained, tmp_path):
    saved, path = trained
    with pytest.raises(CheckpointError, match=r"nowhere\.pkl is not a file.*--output_dir"):
        load_algorithm(tmp_path / "nowhere.pkl")
    damaged = tmp_path / "damaged.pkl"
    damaged.write_bytes(path.read_bytes()[:5000])  # a run killed while saving
    with pytest.raises(CheckpointError, match=r"damaged\.pkl cannot be read as a DomainBed checkpoint.*run it again"):
        load_algorithm(damaged)
    foreign = tmp_path / "erm.pkl"
    _save(foreign, saved, dict(saved.hparams), name="ERM")
    with pytest.raises(CheckpointError, match=r"holds a 'ERM' model.*get_algorithm_class\('ERM'\)"):
        load_algorithm(foreign)
    weights_only = tmp_path / "state_dict.pkl"
    torch.save(saved.state_dict(), weights_only)
    with pytest.raises(CheckpointError, match=r"not a DomainBed model\.pkl: it lacks \['args'"):
        load_algorithm(weights_only)


def test_code_in_the_file_never_runs(tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran code from the checkpoint')",))

    evil = tmp_path / "evil.pkl"
    torch.save({"args": Payload()}, evil)
    with pytest.raises(CheckpointError, match="cannot be read as a DomainBed checkpoint"):
        load_algorithm(evil)


def test_a_run_that_started_from_imagenet_weights_loads_offline(trained, tmp_path, monkeypatch):
    saved, _ = trained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fetching ImageNet weights would now raise PretrainedWeightsError
    path = tmp_path / "pretrained_run.pkl"
    _save(path, saved, {**saved.hparams, "pretrained": True})
    loaded = load_algorithm(path)
    assert loaded.hparams["pretrained"] is True  # reported as trained, though the file's weights were used
    images = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded.predict(images), saved.predict(images))
