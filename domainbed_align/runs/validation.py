"""Training-domain validation of one run's results.jsonl lines: the rule the in-run checkpoint keeper
(:mod:`domainbed_align.upstream.checkpoint_keeper`) and the tables (:mod:`domainbed_align.report.selection`) share.

Validation accuracy = the mean of ``env{i}_out_acc`` over the run's training environments (every environment not in
``test_envs``); with one test environment that is exactly upstream's ``IIDAccuracySelectionMethod`` (which excludes
only ``test_envs[0]``). Ties keep the earlier step, as upstream's ``argmax`` (Python's ``max``) does.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

SELECTED_FILE = "model_selected.pkl"  # the checkpoint training-domain validation selects, kept while a run trains
LAST_FILE = "model.pkl"  # upstream's last checkpoint
METHOD = "training-domain validation"  # model_selected.pkl's selection "method"
SWITCH = "DOMAINBED_ALIGN_KEEP_SELECTED"  # settings' "keep_selected": 0/false/no/off switches the keeping off


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
