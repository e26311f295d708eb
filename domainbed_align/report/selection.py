"""The checkpoint DomainBed's training-domain validation selects, kept while the run trains (``model_selected.pkl``).

DomainBed's tables report the accuracy of a selected checkpoint, but train.py saves only the last one
(``model.pkl``), and upstream's sweep cannot pass ``--save_model_every_checkpoint`` (~45 MB each). So each of our
algorithms keeps the best-so-far checkpoint by training-domain validation: train.py calls ``state_dict()`` right after
it appends a checkpoint's line to ``results.jsonl`` (b93c22a: ``algorithm_dict = algorithm.state_dict()``); at that
moment the weights are the ones that line measured. When the line's validation accuracy beats every earlier line's,
the weights are written to ``model_selected.pkl`` in upstream's own checkpoint format, plus ``selection`` (method,
step, val_acc). Ties keep the earlier step, as upstream's ``argmax`` (Python's ``max``) does.

Validation accuracy = the mean of ``env{i}_out_acc`` over the run's training environments (every environment not in
``test_envs``); with one test environment that is exactly upstream's ``IIDAccuracySelectionMethod`` (which excludes
only ``test_envs[0]``). Oracle selection takes the last checkpoint (``model.pkl``); leave-one-domain-out needs other
runs, so no single run can keep its checkpoint.

Only a train.py process records where its run writes (the hook sees train.py open ``out.txt``); elsewhere
``state_dict()`` is plain. ``DOMAINBED_ALIGN_KEEP_SELECTED=0`` (or false, no, off, in any case) switches it off.

Below: DomainBed's three selection methods across runs (:func:`select`), as the tables use them.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from domainbed_align import atomic

IID, LODO, ORACLE = ("training-domain validation set", "leave-one-domain-out cross-validation",
                     "test-domain validation set (oracle)")  # upstream's names for its selection methods
SELECTION_METHODS = (IID, LODO, ORACLE)
SELECTED_FILE = "model_selected.pkl"
LAST_FILE = "model.pkl"
METHOD = "training-domain validation"
SWITCH = "DOMAINBED_ALIGN_KEEP_SELECTED"

_train_output_dir: str | None = None


def note_train_output_dir(folder: str) -> None:
    """Called by the hook when DomainBed's train.py opens ``<output_dir>/out.txt``."""
    global _train_output_dir
    _train_output_dir = folder


def train_output_dir() -> str | None:
    """The running train.py's ``--output_dir``, or None outside train.py (or when switched off)."""
    if _train_output_dir is None:  # not train.py: the switch is not read, so nothing else fails on it
        return None
    from domainbed_align import settings  # checks every DOMAINBED_ALIGN_* variable: a misspelt switch is named

    return _train_output_dir if settings.value("keep_selected") else None


def validation_accuracy(record: Mapping[str, Any]) -> float | None:
    """Training-domain validation accuracy of one results.jsonl line: mean ``env{i}_out_acc`` over the training
    environments (None when the line has none, e.g. every environment is a test environment)."""
    test_envs = set(record["args"]["test_envs"])
    values, i = [], 0
    while f"env{i}_out_acc" in record:
        if i not in test_envs:
            values.append(record[f"env{i}_out_acc"])
        i += 1
    return float(np.mean(values)) if values else None  # np.mean: the same float upstream's selection computes


def selected_record(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The line training-domain validation selects among one run's lines (the first of equal ones), or None."""
    best, best_acc = None, -math.inf
    for record in records:
        accuracy = validation_accuracy(record)
        if accuracy is not None and accuracy > best_acc:
            best, best_acc = record, accuracy
    return best


class SelectedCheckpointKeeper:
    """Writes ``model_selected.pkl`` when the checkpoint train.py just recorded is the best so far.

    Only lines appended after the keeper was made count (train.py appends to results.jsonl, so a rerun in the same
    folder finds an earlier attempt's lines there).
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.folder = Path(output_dir)
        self.results = self.folder / "results.jsonl"
        self.offset = self.results.stat().st_size if self.results.is_file() else 0
        self.best_accuracy = -math.inf
        self.saving = False

    def after_checkpoint(self, algorithm: Any, state: Mapping[str, torch.Tensor],
                         checkpoint_fields: tuple) -> Path | None:
        """Called from ``state_dict()`` with its result; returns the path written, if any."""
        record = self._newest_record()
        if record is None:
            return None
        accuracy = validation_accuracy(record)
        if accuracy is None or not accuracy > self.best_accuracy:
            return None
        if record.get("step") != algorithm.steps_done - 1:  # the line does not describe these weights
            algorithm.monitor.warn_once(
                "selected_step", algorithm.steps_done,
                f"results.jsonl's newest line is step {record.get('step')} but the weights are after step "
                f"{algorithm.steps_done - 1}: {SELECTED_FILE} is not updated for it.")
            return None
        self.best_accuracy = accuracy
        if record["args"].get("skip_model_save"):
            return None
        input_shape, num_classes, num_domains, hparams = checkpoint_fields
        checkpoint = {"args": record["args"], "model_input_shape": input_shape, "model_num_classes": num_classes,
                      "model_num_domains": num_domains, "model_hparams": hparams, "model_dict": dict(state),
                      "selection": {"method": METHOD, "step": record["step"], "val_acc": accuracy}}
        path = self.folder / SELECTED_FILE
        try:  # atomic: a run killed while saving keeps the previous selected checkpoint whole
            with atomic.replacing(path) as handle:
                torch.save(checkpoint, handle)
        except OSError as error:  # full disk, quota: the file is an extra, the training goes on
            self._write_failed(algorithm, path, error)
            return None
        return path

    def _write_failed(self, algorithm: Any, path: Path, error: OSError) -> None:
        """The earlier selected checkpoint is no longer the selected one: removed (a later improvement writes the file
        again), so that nothing reads it as the selection."""
        try:
            path.unlink()
            removed = f"the earlier {SELECTED_FILE} (no longer the selected checkpoint) was removed; "
        except FileNotFoundError:
            removed = ""
        except OSError:
            removed = f"the earlier {SELECTED_FILE} could not be removed either: do not use it; "
        cause = f"{error.strerror or type(error).__name__}" + (f" [Errno {error.errno}]" if error.errno else "")
        algorithm.monitor.warn_once(
            "selected_write", algorithm.steps_done,
            f"could not write {path} ({cause}); training continues: {removed}the next checkpoint that improves "
            f"validation accuracy tries again. Free some space (or quota) for the selected checkpoint to be kept.")

    def _newest_record(self) -> dict | None:
        """The last complete line appended since the previous call (None when none was)."""
        if not self.results.is_file():
            return None
        with open(self.results, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n")
        if end < 0:
            return None
        self.offset += end + 1
        lines = [line for line in data[:end].split(b"\n") if line.strip()]
        try:
            return json.loads(lines[-1]) if lines else None
        except ValueError:
            print(f"domainbed-align: warning: {self.results}'s newest line is not JSON; {SELECTED_FILE} is not "
                  f"updated for it.", file=sys.stderr)
            return None


def checkpoint_step(checkpoint: Mapping[str, Any], run_records: Sequence[Mapping[str, Any]]) -> int | None:
    """The step a checkpoint's weights are from: its ``selection`` step (model_selected.pkl), else the run's last
    recorded step (model.pkl is written after the last checkpoint), else None."""
    if "selection" in checkpoint:
        return int(checkpoint["selection"]["step"])
    steps = [record["step"] for record in run_records if "step" in record]
    return max(steps) if steps else None


# --- DomainBed's selection across runs (its rules, our code: model_selection.py needs DomainBed to import) ---------
def n_envs(record: dict) -> int:
    count = 0
    while f"env{count}_out_acc" in record:
        count += 1
    return count


def records_by(records: Iterable[dict], key: Callable[[dict], Any]) -> dict[Any, list[dict]]:
    groups: dict[Any, list[dict]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return groups


def _iid(run: list[dict]) -> dict | None:
    best = None
    for record in (r for r in run if len(r["args"]["test_envs"]) == 1):
        test_env = record["args"]["test_envs"][0]
        val = np.mean([record[f"env{i}_out_acc"] for i in range(n_envs(record)) if i != test_env])
        if best is None or val > best["val_acc"]:  # the first maximum, as upstream's argmax
            best = {"val_acc": val, "test_acc": record[f"env{test_env}_in_acc"], "step": record["step"],
                    "run": record["_run"]}
    return best


def _oracle(run: list[dict]) -> dict | None:
    singles = [r for r in run if len(r["args"]["test_envs"]) == 1]
    if not singles:
        return None
    last = max(reversed(singles), key=lambda r: r["step"])  # the last of the latest step, as upstream's sort
    test_env = last["args"]["test_envs"][0]
    return {"val_acc": last[f"env{test_env}_out_acc"], "test_acc": last[f"env{test_env}_in_acc"],
            "step": last["step"], "run": last["_run"]}


def _lodo(run: list[dict], test_env: int) -> dict | None:
    best = None
    for step, step_records in sorted(records_by(run, lambda r: r["step"]).items()):
        singles = [r for r in step_records if len(r["args"]["test_envs"]) == 1]
        if len(singles) != 1:
            continue
        count = n_envs(step_records[0])
        val_accs = [-1.0] * count
        for record in (r for r in step_records if len(r["args"]["test_envs"]) == 2):
            val_env = (set(record["args"]["test_envs"]) - {test_env}).pop()
            val_accs[val_env] = record[f"env{val_env}_in_acc"]
        val_accs = val_accs[:test_env] + val_accs[test_env + 1:]
        if any(v == -1 for v in val_accs):
            continue
        val = np.sum(val_accs) / (count - 1)
        if best is None or val > best["val_acc"]:
            best = {"val_acc": val, "test_acc": singles[0][f"env{test_env}_in_acc"], "step": step,
                    "run": singles[0]["_run"]}
    return best


def select(records: list[dict], method: str) -> pd.DataFrame:
    """One row per (dataset, algorithm, trial_seed, test_env): the hparam draw and checkpoint ``method`` selects,
    with its ``val_acc`` and ``test_acc`` (DomainBed's ``sweep_acc``); groups it cannot select in are absent."""
    rows = []
    groups = records_by(((r, e) for r in records for e in r["args"]["test_envs"]),
                 lambda pair: (pair[0]["args"]["trial_seed"], pair[0]["args"]["dataset"],
                               pair[0]["args"]["algorithm"], pair[1]))
    for (trial, dataset, algorithm, test_env), pairs in groups.items():
        chosen = None
        draws = records_by((r for r, _ in pairs), lambda r: r["args"]["hparams_seed"])
        for hparams_seed, run in sorted(draws.items()):
            accs = _lodo(run, test_env) if method == LODO else (_iid if method == IID else _oracle)(run)
            if accs is not None and (chosen is None or accs["val_acc"] >= chosen["val_acc"]):
                chosen = {**accs, "hparams_seed": hparams_seed}  # ties: the higher hparams_seed, as upstream
        if chosen is not None:
            rows.append({"dataset": dataset, "algorithm": algorithm, "trial_seed": trial, "test_env": test_env,
                         **chosen})
    return pd.DataFrame(rows, columns=["dataset", "algorithm", "trial_seed", "test_env", "hparams_seed", "run",
                                       "step", "val_acc", "test_acc"])
