"""model_selected.pkl: the checkpoint training-domain validation selects, kept while a run trains.

train.py is simulated (no DomainBed): update, append a results line, call state_dict(), as b93c22a does, on the class
DomainBed sees (the boundary puts KeepsSelectedCheckpoint first in its bases), in a process that says it is train.py
with train.py's own --output_dir on its command line.
"""

import json
import re
import sys

import numpy as np
import pytest
import torch

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.report import selection
from domainbed_align.runs import validation
from domainbed_align.methods.erm import TimmERM
from domainbed_align.methods.checkpoints import load_algorithm, read_checkpoint
from domainbed_align.upstream import checkpoint_keeper, train_script

SHAPE = (3, 28, 28)
# what domainbed.algorithms.TimmERM is (patches._patch_algorithms), less upstream's Algorithm base
KeptTimmERM = type("TimmERM", (checkpoint_keeper.KeepsSelectedCheckpoint, TimmERM), {})


def _as_train_py(monkeypatch, folder):
    """This process is train.py (with ``--output_dir folder``), or, with folder None, it is not."""
    monkeypatch.setattr(train_script, "is_train_process", lambda: folder is not None)
    monkeypatch.setattr(sys, "argv", ["train.py", "--dataset", "Debug28", "--output_dir", str(folder)])


def _batches(step):
    generator = torch.Generator().manual_seed(step)
    return [(torch.randn(4, *SHAPE, generator=generator), torch.tensor([0, 1, 2, 1])) for _ in range(2)]


def _record(step, out_accs, test_envs=(2,)):
    record = {"step": step, "args": {"algorithm": "TimmERM", "dataset": "Debug28", "test_envs": list(test_envs),
                                      "hparams_seed": 0, "trial_seed": 0, "skip_model_save": False},
              "hparams": {}}
    for i, accuracy in enumerate(out_accs):
        record[f"env{i}_out_acc"] = accuracy
        record[f"env{i}_in_acc"] = accuracy
    return record


@pytest.fixture
def in_train_py(tmp_path, monkeypatch):
    _as_train_py(monkeypatch, tmp_path)
    monkeypatch.delenv(validation.SWITCH, raising=False)
    return tmp_path


def _simulate(folder, out_accs_per_checkpoint, test_envs=(2,), stale_lines=0):
    """train.py's loop with a checkpoint after every update; returns the algorithm and each checkpoint's weights."""
    for k in range(stale_lines):  # an earlier attempt's lines: they describe other weights
        with open(folder / "results.jsonl", "a") as handle:
            handle.write(json.dumps(_record(k, [0.99, 0.99, 0.99], test_envs)) + "\n")
    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("TimmERM", "Debug28")
    algorithm = KeptTimmERM(SHAPE, 3, 2, hparams)
    weights = []
    for step, out_accs in enumerate(out_accs_per_checkpoint):
        algorithm.update(_batches(step))
        with open(folder / "results.jsonl", "a") as handle:
            handle.write(json.dumps(_record(step, out_accs, test_envs), sort_keys=True) + "\n")
        algorithm.state_dict()  # train.py: algorithm_dict = algorithm.state_dict()
        weights.append({k: v.clone() for k, v in algorithm.classifier.state_dict().items()})
    algorithm.state_dict()  # train.py's final save_checkpoint('model.pkl'): no new line, nothing changes
    return algorithm, weights


def test_the_first_best_checkpoint_is_kept_with_its_step_and_weights(in_train_py):
    # validation = mean over training envs 0 and 1 (env 2 is the test env, its 0.99 must not count)
    accs = [[0.2, 0.4, 0.99], [0.6, 0.6, 0.0], [0.5, 0.7, 0.0], [0.1, 0.1, 0.99]]
    _, weights = _simulate(in_train_py, accs)
    checkpoint = read_checkpoint(in_train_py / validation.SELECTED_FILE)
    # step 1 and step 2 both have validation 0.6: the earlier is kept, as upstream's argmax keeps it
    assert checkpoint["selection"] == {"method": validation.METHOD, "step": 1, "val_acc": pytest.approx(0.6)}
    loaded = load_algorithm(in_train_py / validation.SELECTED_FILE)
    for key, value in loaded.classifier.state_dict().items():
        assert torch.equal(value, weights[1][key]), key
    assert not torch.equal(weights[1]["backbone.fc.weight"], weights[3]["backbone.fc.weight"])
    assert loaded.steps_done == 2  # warm-up progress of step 1's weights
    assert checkpoint["model_input_shape"] == SHAPE and checkpoint["model_num_domains"] == 2
    assert sorted(p.name for p in in_train_py.iterdir()) == ["model_selected.pkl", "results.jsonl"]  # no temporary


def test_an_earlier_attempts_lines_do_not_count(in_train_py):
    _simulate(in_train_py, [[0.3, 0.3, 0.0], [0.5, 0.5, 0.0], [0.4, 0.4, 0.0]], stale_lines=2)
    assert read_checkpoint(in_train_py / validation.SELECTED_FILE)["selection"]["step"] == 1


def test_nothing_is_written_outside_train_py_or_when_switched_off(tmp_path, monkeypatch):
    _as_train_py(monkeypatch, None)
    _simulate(tmp_path, [[0.3, 0.3, 0.0]])
    assert not (tmp_path / validation.SELECTED_FILE).exists()
    _as_train_py(monkeypatch, tmp_path)
    monkeypatch.setenv(validation.SWITCH, "0")
    _simulate(tmp_path, [[0.3, 0.3, 0.0]])
    assert not (tmp_path / validation.SELECTED_FILE).exists()


@pytest.mark.parametrize("word", ["OFF", "False", "no", " 0 "])
def test_every_way_of_saying_off_switches_it_off(tmp_path, monkeypatch, word):
    _as_train_py(monkeypatch, tmp_path)
    monkeypatch.setenv(validation.SWITCH, word)
    _simulate(tmp_path, [[0.3, 0.3, 0.0]])
    assert not (tmp_path / validation.SELECTED_FILE).exists()


@pytest.mark.parametrize("variable, value, named", [
    (validation.SWITCH, "maybe", "DOMAINBED_ALIGN_KEEP_SELECTED = 'maybe' is not a boolean"),
    ("DOMAINBED_ALIGN_KEEP_SELECTD", "0", "did you mean DOMAINBED_ALIGN_KEEP_SELECTED?")])
def test_a_switch_it_cannot_read_stops_train_py_instead_of_saving(in_train_py, monkeypatch, variable, value, named):
    from domainbed_align.settings import SettingsError

    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=re.escape(named)):
        KeptTimmERM(SHAPE, 3, 2, hparams_lib.default_hparams("TimmERM", "Debug28"))
    _as_train_py(monkeypatch, None)  # outside train.py the switch is not read
    KeptTimmERM(SHAPE, 3, 2, hparams_lib.default_hparams("TimmERM", "Debug28"))


def test_a_line_that_does_not_describe_the_weights_is_not_saved(in_train_py):
    torch.manual_seed(0)
    algorithm = KeptTimmERM(SHAPE, 3, 2, hparams_lib.default_hparams("TimmERM", "Debug28"))
    algorithm.update(_batches(0))
    with open(in_train_py / "results.jsonl", "a") as handle:
        handle.write(json.dumps(_record(7, [0.5, 0.5, 0.5])) + "\n")  # step 7, but one update was made
    algorithm.state_dict()
    assert any("step 7" in message for message in algorithm.monitor.fired)
    assert not (in_train_py / validation.SELECTED_FILE).exists()


def test_validation_accuracy_is_upstreams_mean_over_training_environments():
    record = _record(0, [0.1, 0.2, 0.7, 0.4], test_envs=(2,))
    assert validation.validation_accuracy(record) == np.mean([0.1, 0.2, 0.4])
    # several test environments (single-source runs): all of them are excluded
    assert validation.validation_accuracy(_record(0, [0.1, 0.2, 0.7], test_envs=(1, 2))) == 0.1
    assert validation.validation_accuracy(_record(0, [0.1, 0.2], test_envs=(0, 1))) is None
    records = [_record(s, accs) for s, accs in enumerate([[0.1, 0.1, 0], [0.3, 0.1, 0], [0.1, 0.3, 0]])]
    assert validation.selected_record(records)["step"] == 1
    assert selection.checkpoint_step({"selection": {"step": 4}}, records) == 4
    assert selection.checkpoint_step({}, records) == 2


def test_a_failed_write_warns_once_and_training_goes_on(in_train_py, monkeypatch, capsys):
    """model_selected.pkl is an extra: a full disk or a quota must not end the run (train.py calls state_dict())."""
    real_save = torch.save
    full = {"disk": True}

    def save(obj, handle, *args, **kwargs):
        if full["disk"]:
            if hasattr(handle, "write"):
                handle.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    _simulate(in_train_py, [[0.2, 0.2, 0.0]])  # a first selected checkpoint, written
    monkeypatch.setattr(checkpoint_keeper.torch, "save", save)
    (in_train_py / "results.jsonl").unlink()
    algorithm, _ = _simulate(in_train_py, [[0.3, 0.3, 0.0], [0.4, 0.4, 0.0]])  # two improvements, both fail
    warnings = [line for line in capsys.readouterr().err.splitlines() if validation.SELECTED_FILE in line]
    assert len(warnings) == 1, warnings
    assert str(in_train_py / validation.SELECTED_FILE) in warnings[0] and "No space left on device" in warnings[0]
    assert "training continues" in warnings[0]
    # the earlier file is not the selection any more: gone, and no half-written file or temporary is left
    assert [p.name for p in in_train_py.iterdir()] == ["results.jsonl"]
    full["disk"] = False  # space again: the next improvement is kept
    with open(in_train_py / "results.jsonl", "a") as handle:
        handle.write(json.dumps(_record(2, [0.5, 0.5, 0.0]), sort_keys=True) + "\n")
    algorithm.update(_batches(2))
    algorithm.state_dict()
    assert read_checkpoint(in_train_py / validation.SELECTED_FILE)["selection"]["step"] == 2


def test_the_keeper_learns_the_run_folder_from_train_pys_own_arguments(monkeypatch):
    monkeypatch.setattr(train_script, "is_train_process", lambda: True)
    for argv, folder in [(["--output_dir", "runs/a"], "runs/a"), (["--output_dir=runs/b", "--steps", "5"], "runs/b"),
                         (["--dataset", "Debug28"], "train_output")]:  # train.py's default
        monkeypatch.setattr(sys, "argv", ["train.py", *argv])
        assert train_script.train_output_dir() == folder
    monkeypatch.setattr(train_script, "is_train_process", lambda: False)
    assert train_script.train_output_dir() is None and checkpoint_keeper.keeping_dir() is None
