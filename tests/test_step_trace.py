"""The per-step trace (DOMAINBED_ALIGN_TRACE_STEPS): every update()'s floats in the run's steps.jsonl, with ALIGN's
diagnostics, and not one step changed by it.

train.py is simulated as in test_selection: a process that says it is train.py, with its own --output_dir, and the
class DomainBed sees (the boundary puts TracesSteps in its bases; the keeper is left out here).
"""

import json
import sys

import torch

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods.align import ALIGN
from domainbed_align.upstream import step_trace, train_script

SHAPE = (3, 28, 28)
TracedALIGN = type("ALIGN", (step_trace.TracesSteps, ALIGN), {})
DIAGNOSTICS = {"masker_fidelity_grad_norm", "masker_sparsity_grad_norm", "masker_smooth_grad_norm",
               "masker_prob_kept", "masker_prob_removed"}


def _as_train_py(monkeypatch, folder, trace):
    monkeypatch.setattr(train_script, "is_train_process", lambda: True)
    monkeypatch.setattr(sys, "argv", ["train.py", "--dataset", "Debug28", "--output_dir", str(folder)])
    monkeypatch.setenv("DOMAINBED_ALIGN_TRACE_STEPS", trace)


def _train(steps=4):
    """ALIGN through its three phases (1 warm-up step, 1 masker warm-up step, then aligning)."""
    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("ALIGN", "Debug28", batch_size=4, warmup_steps=1, masker_warmup_steps=1)
    algorithm = TracedALIGN(SHAPE, 3, 2, hparams)
    generator = torch.Generator().manual_seed(1)
    reports = []
    for _ in range(steps):
        batches = [(torch.rand(4, *SHAPE, generator=generator), torch.randint(0, 3, (4,), generator=generator))
                   for _ in range(2)]
        reports.append(algorithm.update(batches))
    return algorithm, reports


def test_every_step_is_traced_with_its_diagnostics_and_no_step_changes(tmp_path, monkeypatch):
    _as_train_py(monkeypatch, tmp_path / "off", "0")
    plain, plain_reports = _train()
    assert not (tmp_path / "off" / step_trace.TRACE_FILE).exists()
    _as_train_py(monkeypatch, tmp_path / "on", "1")
    traced, traced_reports = _train()
    lines = [json.loads(line) for line in (tmp_path / "on" / step_trace.TRACE_FILE).read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    assert [{k: v for k, v in line.items() if k != "step"} for line in lines] == traced_reports
    for before, after in zip(plain_reports, traced_reports):  # the same step, bit for bit, plus the diagnostics
        assert set(after) - set(before) == (DIAGNOSTICS if after["in_warmup"] == 0.0 else set())
        assert {k: after[k] for k in before} == before
    for p, q in zip(plain.parameters(), traced.parameters()):
        assert torch.equal(p, q)
    aligning = lines[-1]
    # the parts add up: the masker's step gradient is the sum of its terms' (norms obey the triangle inequality)
    parts = [aligning[f"masker_{term}_grad_norm"] for term in ("fidelity", "sparsity", "smooth")]
    assert all(part > 0 for part in parts)
    assert aligning["masker_grad_norm"] <= sum(parts) * (1 + 1e-5)
    assert abs(aligning["masker_distance"] - (aligning["masker_prob_kept"] - aligning["masker_prob_removed"])) < 1e-6


def test_the_sparsity_gradient_norm_is_the_terms_own(tmp_path, monkeypatch):
    """With lambda_sparsity 0 the sparsity part is zero and the rest is the whole step's gradient."""
    _as_train_py(monkeypatch, tmp_path, "1")
    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("ALIGN", "Debug28", batch_size=4, warmup_steps=0, masker_warmup_steps=0,
                                          lambda_sparsity=0.0, lambda_smooth=0.0)
    algorithm = TracedALIGN(SHAPE, 3, 2, hparams)
    report = algorithm.update([(torch.rand(4, *SHAPE), torch.tensor([0, 1, 2, 0]))])
    assert report["masker_sparsity_grad_norm"] == 0.0 and report["masker_smooth_grad_norm"] == 0.0
    assert abs(report["masker_fidelity_grad_norm"] - report["masker_grad_norm"]) <= 1e-6 * report["masker_grad_norm"]


def test_outside_train_py_nothing_is_traced(tmp_path, monkeypatch):
    monkeypatch.setattr(train_script, "is_train_process", lambda: False)
    monkeypatch.setenv("DOMAINBED_ALIGN_TRACE_STEPS", "1")
    monkeypatch.chdir(tmp_path)
    algorithm, reports = _train(steps=3)
    assert not algorithm.diagnostics and not list(tmp_path.iterdir())
    assert not DIAGNOSTICS & set(reports[-1])


def test_a_failed_write_warns_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    _as_train_py(monkeypatch, tmp_path, "1")
    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("ALIGN", "Debug28", batch_size=4)
    algorithm = TracedALIGN(SHAPE, 3, 2, hparams)

    class FullDisk:
        def write(self, text):
            raise OSError(28, "No space left on device")

    algorithm._trace = FullDisk()
    for _ in range(3):
        algorithm.update([(torch.rand(4, *SHAPE), torch.tensor([0, 1, 2, 0]))])
    assert algorithm.steps_done == 3
    err = capsys.readouterr().err
    assert err.count("could not write steps.jsonl (No space left on device)") == 1 and "training goes on" in err
