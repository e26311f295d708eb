"""DomainBed's three selection methods across runs (:func:`select`), as the tables use them, and the step a kept
checkpoint's weights are from (:func:`checkpoint_step`).

The record-level rule (training-domain validation of one results.jsonl line: :func:`validation_accuracy`,
:func:`selected_record`) lives in :mod:`domainbed_align.runs.validation`, which the in-run checkpoint keeper
(:mod:`domainbed_align.upstream.checkpoint_keeper`, ``model_selected.pkl``) shares; its names are re-exported here.
Oracle selection takes the last checkpoint (``model.pkl``); leave-one-domain-out needs other runs, so no single run
can keep its checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd


IID, LODO, ORACLE = ("training-domain validation set", "leave-one-domain-out cross-validation",
                     "test-domain validation set (oracle)")  # upstream's names for its selection methods
SELECTION_METHODS = (IID, LODO, ORACLE)


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
