"""The checkpoint DomainBed's training-domain validation selects, kept while the run trains (``model_selected.pkl``).

DomainBed's tables report the accuracy of a selected checkpoint, but train.py saves only the last one
(``model.pkl``), and upstream's sweep cannot pass ``--save_model_every_checkpoint`` (~45 MB each). So each of our
algorithms, as DomainBed sees it (``domainbed.algorithms.<Name>``, which :mod:`domainbed_align.upstream.patches`
builds with :class:`KeepsSelectedCheckpoint` first in its bases), keeps the best-so-far checkpoint by
training-domain validation (:mod:`domainbed_align.runs.validation`): when the results.jsonl line train.py just wrote
beats every earlier line, the weights are written to ``model_selected.pkl`` in upstream's own checkpoint format, plus
``selection`` (method, step, val_acc).

Only a train.py process keeps it: the keeper learns the run's folder from train.py's own ``--output_dir``
(:mod:`domainbed_align.upstream.train_script`); elsewhere ``state_dict()`` is plain.
``DOMAINBED_ALIGN_KEEP_SELECTED=0`` (or false, no, off, in any case) switches it off.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from domainbed_align import atomic
from domainbed_align.runs.validation import METHOD, SELECTED_FILE, validation_accuracy
from domainbed_align.upstream import train_script


def keeping_dir() -> str | None:
    """Where this process keeps model_selected.pkl: the running train.py's ``--output_dir``, or None outside train.py
    (the switch is then not read, so nothing else fails on it) or when switched off."""
    folder = train_script.train_output_dir()
    if folder is None:
        return None
    from domainbed_align import settings  # checks every DOMAINBED_ALIGN_* variable: a misspelt switch is named

    return folder if settings.value("keep_selected") else None


class SelectedCheckpointKeeper:
    """Writes ``model_selected.pkl`` when the checkpoint train.py just recorded is the best so far.

    Only lines appended after the keeper was made count (train.py appends to results.jsonl, so a rerun in the same
    folder finds an earlier attempt's lines there). ``checkpoint_fields`` are what train.py's save_checkpoint writes
    beside the weights: (input_shape, num_classes, num_domains, hparams), the algorithm's constructor arguments.
    """

    def __init__(self, output_dir: str | os.PathLike, checkpoint_fields: tuple) -> None:
        self.folder = Path(output_dir)
        self.results = self.folder / "results.jsonl"
        self.offset = self.results.stat().st_size if self.results.is_file() else 0
        self.best_accuracy = -math.inf
        self.checkpoint_fields = checkpoint_fields

    def after_checkpoint(self, algorithm: Any, state: Mapping[str, torch.Tensor]) -> Path | None:
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
        input_shape, num_classes, num_domains, hparams = self.checkpoint_fields
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


class KeepsSelectedCheckpoint:
    """First base of ``domainbed.algorithms.<Name>`` (our registry class next, then upstream's ``Algorithm``): in
    train.py it attaches a :class:`SelectedCheckpointKeeper` at construction and feeds it every ``state_dict()``.

    Why ``state_dict``: it is train.py's only per-checkpoint call into the algorithm (b93c22a: right after appending
    a checkpoint's line to results.jsonl, ``algorithm_dict = algorithm.state_dict()``), at that moment the weights are
    the ones that line measured, and the final checkpoint has no later ``update()`` to hook instead. Its other call,
    save_checkpoint's, follows no new line, so the keeper changes nothing there.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, num_domains: int, hparams: Mapping[str, Any],
                 *args: Any, **kwargs: Any) -> None:
        super().__init__(input_shape, num_classes, num_domains, hparams, *args, **kwargs)
        folder = keeping_dir()
        # what train.py's save_checkpoint writes beside the weights: the constructor's own arguments
        self._checkpoint_keeper = (SelectedCheckpointKeeper(folder, (input_shape, num_classes, num_domains, hparams))
                                   if folder else None)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        """As the algorithm's own; inside train.py, train.py's call right after a results line also keeps the
        checkpoint training-domain validation selects (``model_selected.pkl``)."""
        state = super().state_dict(*args, **kwargs)
        keeper = getattr(self, "_checkpoint_keeper", None)
        if keeper is not None and not args and not kwargs:  # a module's recursive call passes arguments: not train.py's
            keeper.after_checkpoint(self, state)
        return state
