"""What the report commands (tables, evaluate, figures) read of a sweep folder.

The records are :mod:`domainbed_align.runs.records`' (its one reader of results.jsonl), of the runs it counts as
finished; what ``runs`` cannot know is a dataset's default step count (``N_STEPS``, for a run without ``--steps``):
ours live in :mod:`domainbed_align.data` and DomainBed's behind the boundary (:mod:`domainbed_align.upstream`), both
layers above ``runs``, so :func:`unfinished_runs` passes it in from here. :class:`Marks` says which cells read an
unfinished, damaged or diverged run, or one whose final mask is degenerate.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

from domainbed_align.annotations import EMPTY_MASK, FULL_MASK
from domainbed_align.errors import ResultsFileError
from domainbed_align.report.render import DAMAGED_MARK, DEGENERATE_MASK_MARK, DIVERGED_MARK, MARKS, UNFINISHED_MARK
from domainbed_align.runs import records as results_files


# --- which runs are finished ----------------------------------------------------------------------------------------
def default_steps(dataset: str | None) -> int | None:
    """``N_STEPS`` of the dataset named ``dataset`` (ours, or DomainBed's when DomainBed is importable), or None
    when it is unknown here."""
    try:
        from domainbed_align.data import DATASETS
        from domainbed_align.upstream import adapter

        if dataset in DATASETS:
            return int(DATASETS[dataset].N_STEPS)
        if adapter.domainbed_importable():
            return int(adapter.upstream_dataset_class(dataset).N_STEPS)
    except (ImportError, NotImplementedError, AttributeError):  # get_dataset_class: NotImplementedError
        return None
    return None


def unfinished_runs(folders: Iterable[Path]) -> dict[Path, str]:
    """:func:`domainbed_align.runs.records.unfinished_runs` with the datasets' default step counts."""
    return results_files.unfinished_runs(folders, default_steps)


# --- the records the tables read -------------------------------------------------------------------------
class Sweep:
    """What the tables read of a sweep folder: ``records`` (each results.jsonl line counted, in collect_results'
    order, each with ``_run``, its folder's name, ``_unfinished``, why its run is unfinished or None, and
    ``_damaged``, its run's damaged lines), and ``notes`` for under the tables (runs left out or counted
    unfinished, ``--max_step``)."""

    def __init__(self, records: list[dict], notes: list[str]) -> None:
        self.records, self.notes = records, notes


def read_sweep(input_dir: str | os.PathLike, warn: Callable[[str], None] | None = None, *,
               max_step: int | None = None, include_unfinished: bool = False,
               note: Callable[[str], None] | None = None) -> Sweep:
    """Every results.jsonl line of the finished runs (``include_unfinished``: of every run) of a sweep folder (or
    of a results folder's ``runs/``), up to step ``max_step`` when given. A damaged line is skipped with a warning
    naming file, line and why, and every cell that reads its run is marked; the runs left out (or counted
    unfinished) are summed up in one line (``note``) and in the tables' notes."""
    warn = warn or (lambda text: print(f"domainbed-align: warning: {text}", file=sys.stderr))
    note = note or (lambda text: print(f"domainbed-align: note: {text}", file=sys.stderr))
    given = Path(input_dir)
    if not given.is_dir():
        raise ResultsFileError(f"--input_dir {given} is not a folder: give the --output_dir of 'sweep launch' (or a "
                               f"results folder holding its runs/).")
    folder = results_files.sweep_folder(given)
    runs = results_files.run_folders(folder)
    unfinished = unfinished_runs(runs)
    notes = []
    if unfinished:
        fix = (f"their cells are marked {UNFINISHED_MARK}" if include_unfinished else
               f"--include_unfinished counts them, their cells marked {UNFINISHED_MARK}")
        summary = results_files.unfinished_summary(unfinished, len(runs), include_unfinished, fix)
        note(summary)
        if not include_unfinished:  # counted ones are named under each table that reads them (Marks)
            notes.append(summary[0].upper() + summary[1:])
    records = []
    for run in runs:
        path = run / results_files.RESULTS_FILE
        if (run in unfinished and not include_unfinished) or not path.is_file():
            continue
        readable, damaged = results_files.read_results(path)
        damage = tuple(f"{path} line {number}: {reason}" if number else f"{path}: {reason}"
                       for number, reason in damaged)
        consequence = ("every cell that reads this run is marked " + DAMAGED_MARK if readable else
                       "the run has no readable line, so it is in no table")
        for line in damage:
            warn(f"{line}; skipped, {consequence}.")
        for _, record in readable:
            if max_step is None or record["step"] <= max_step:
                records.append({**record, "_run": run.name, "_unfinished": unfinished.get(run), "_damaged": damage})
    if max_step is not None:
        notes.append(f"Only checkpoints at or before step {max_step} (--max_step {max_step}): DomainBed's model "
                     f"selection over each run's records up to that step.")
    if not records:
        left_out = (f" ({len(unfinished)} unfinished run{'s' if len(unfinished) > 1 else ''} left out: "
                    f"--include_unfinished counts them)" if unfinished and not include_unfinished else "")
        at = f" at or before step {max_step}" if max_step is not None else ""
        raise ResultsFileError(f"no readable results.jsonl line{at} under {folder}{left_out}: give the --output_dir "
                               f"of 'sweep launch' (its runs write <run>/results.jsonl at each checkpoint).")
    return Sweep(records, notes)


def load_records(input_dir: str | os.PathLike, warn: Callable[[str], None] | None = None, *,
                 max_step: int | None = None, include_unfinished: bool = True) -> list[dict]:
    """:func:`read_sweep`'s records; by default of every run (the tables command counts finished runs only unless
    ``--include_unfinished``), each flagged so that the cells reading an unfinished one are marked."""
    return read_sweep(input_dir, warn, max_step=max_step, include_unfinished=include_unfinished,
                      note=lambda text: None).records


class Marks:
    """The marks of cells whose runs include an unfinished one (†), one with a damaged line (‡), one that diverged
    (§: its last record counted says ``diverged`` > 0) or one whose final mask is degenerate (¶: its last record
    counted has a masker mask mean under 2 % or over 98 % past warm-up, :func:`domainbed_align.runs.records.
    degenerate_mask`), and the notes under the table naming those runs."""

    def __init__(self, records: list[dict]) -> None:
        self.flags = {r["_run"]: (r.get("_unfinished"), tuple(r.get("_damaged") or ())) for r in records
                      if "_run" in r}
        last: dict[str, dict] = {}  # each run's last record counted (--max_step: up to that step)
        for record in records:
            if "_run" in record and (record["_run"] not in last or record["step"] >= last[record["_run"]]["step"]):
                last[record["_run"]] = record
        self.diverging = {run: record["step"] for run, record in last.items() if results_files.diverged(record)}
        self.collapsing = {run: (record["step"], record["mask_mean"]) for run, record in last.items()
                           if results_files.degenerate_mask(record)}
        self.unfinished: dict[str, str] = {}
        self.damaged: dict[str, tuple] = {}
        self.diverged: dict[str, int] = {}
        self.degenerate: dict[str, tuple[int, float]] = {}  # run -> (its last step counted, its mask mean there)

    def of(self, runs: Iterable[str]) -> str:
        """The marks of a cell that reads ``runs`` (folder names)."""
        marks = ""
        for run in runs:
            unfinished, damaged = self.flags.get(run, (None, ()))
            if unfinished:
                self.unfinished[run] = unfinished
                marks += UNFINISHED_MARK
            if damaged:
                self.damaged[run] = damaged
                marks += DAMAGED_MARK
            if run in self.diverging:
                self.diverged[run] = self.diverging[run]
                marks += DIVERGED_MARK
            if run in self.collapsing:
                self.degenerate[run] = self.collapsing[run]
                marks += DEGENERATE_MASK_MARK
        return "".join(mark for mark in MARKS if mark in marks)

    def notes(self) -> list[str]:
        notes = []
        if self.unfinished:
            notes.append(f"{UNFINISHED_MARK}: counts unfinished runs (no DomainBed `done` file; "
                         f"--include_unfinished): {results_files.grouped_names(self.unfinished, shown=9)}.")
        if self.damaged:
            lines = [line for _, damage in sorted(self.damaged.items()) for line in damage]
            notes.append(f"{DAMAGED_MARK}: reads a run with a damaged results.jsonl line, skipped: {_some(lines, 3)}.")
        if self.diverged:
            runs = [f"{run} (step {step})" for run, step in sorted(self.diverged.items())]
            notes.append(f"{DIVERGED_MARK}: counts runs that diverged (their last record says `diverged` > 0: the "
                         f"loss blew up, see each run's err.txt; their accuracies mean nothing): "
                         f"{', '.join(runs[:9])}{f', and {len(runs) - 9} more' if len(runs) > 9 else ''}.")
        if self.degenerate:
            runs = [f"{run} (mask mean {mean:.2g} at step {step})"
                    for run, (step, mean) in sorted(self.degenerate.items())]
            notes.append(f"{DEGENERATE_MASK_MARK}: counts runs whose final mask is degenerate (their last record's "
                         f"`mask_mean` past warm-up is under {EMPTY_MASK:.0%} or over {FULL_MASK:.0%}: the masker's "
                         f"mask selects nothing; see each run's err.txt for the collapse warning and the hparams "
                         f"to look at): "
                         f"{', '.join(runs[:9])}{f', and {len(runs) - 9} more' if len(runs) > 9 else ''}.")
        return notes


def _some(items: Sequence[str], shown: int) -> str:
    return "; ".join(items[:shown]) + (f"; and {len(items) - shown} more" if len(items) > shown else "")
