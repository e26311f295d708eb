"""The one reader of the sweep output that DomainBed's ``collect_results`` reads, and readable errors for it.

``train.py`` appends one JSON line per checkpoint to ``<run>/results.jsonl``; a run killed while writing leaves
a partial last line, and upstream's reader then stops every table with a JSONDecodeError traceback that names
no file. :func:`check_results_files` finds every damaged line in a sweep folder and says what to do; it reads
only and never edits a file (a damaged run stays for the user to inspect). Below: what ``tables`` and ``evaluate``
read, each damaged line with its whole reason, which runs are finished (liveness' run states), and what a record says
of its run (:func:`diverged`, :func:`degenerate_mask`: the report commands mark such runs).

Every reader here (and ``evaluate``'s of its own JSON lines) goes through :func:`json_lines`: one way to split and
parse a JSON-lines file, upstream's. This module imports nothing above ``runs``: a dataset's default step count
(needed to tell a complete copy from a cut one) is given to :func:`unfinished_runs` by its caller
(:mod:`domainbed_align.report.finished`).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from domainbed_align.annotations import EMPTY_MASK, FULL_MASK
from domainbed_align.runs import liveness
from domainbed_align.errors import ResultsFileError

RESULTS_FILE = "results.jsonl"
_SHOWN = 5  # damaged files named in full; the rest are counted

# (1-based line number, the line as read (with its newline, if it has one), the parsed value or None, the parse
# error or None)
JsonLine = tuple[int, str, Any, "json.JSONDecodeError | None"]
DefaultSteps = Callable[[str], "int | None"]  # dataset name -> its N_STEPS, None when unknown here


def json_lines(path: str | os.PathLike) -> list[JsonLine]:
    """Every line of a JSON-lines file, parsed: split as upstream's reader splits it (text mode, universal newlines,
    each line keeping its ``\\n``), each parsed without its newline (a cut-off line's error column is its own).
    Raises ``OSError`` when the file cannot be read, ``UnicodeDecodeError`` when it is not UTF-8 text."""
    text = Path(path).read_text(encoding="utf-8")  # whole: a decoding error's byte offset is the file's
    parsed = []
    for number, line in enumerate(io.StringIO(text).readlines(), start=1):  # "\n" only, as file iteration
        try:
            parsed.append((number, line, json.loads(line.rstrip("\n")), None))
        except json.JSONDecodeError as error:
            parsed.append((number, line, None, error))
    return parsed


def _not_utf8(error: UnicodeDecodeError) -> str:
    return f"not UTF-8 text ({error.reason} at byte {error.start})"


def damaged_lines(input_dir: str | os.PathLike) -> list[tuple[Path, int, str]]:
    """``(file, 1-based line number, reason)`` for each results.jsonl line upstream's reader cannot take.

    Read as upstream reads (text mode, line by line, each line's last character dropped as its newline), so a
    last line without a newline is damaged too: upstream would cut off its closing brace.
    """
    damaged = []
    for run_dir in sorted(Path(input_dir).iterdir()):
        path = run_dir / RESULTS_FILE
        if not path.is_file():
            continue
        try:
            lines = json_lines(path)
        except UnicodeDecodeError as error:
            damaged.append((path, 0, _not_utf8(error)))
            continue
        for number, line, record, error in lines:
            if error is not None:
                damaged.append((path, number, f"not JSON (column {error.colno}: {error.msg})"))
            elif not isinstance(record, dict):
                damaged.append((path, number, f"a JSON {type(record).__name__}, not a record"))
            elif not line.endswith("\n"):
                damaged.append((path, number, "a complete record without its final newline (add one)"))
    return damaged


def readable_records(run_dir: str | os.PathLike) -> list[dict]:
    """The checkpoint records of one run folder that parse, in order; lines being written or cut off by a kill
    are skipped (:func:`damaged_lines` names them). Empty when the run has not checkpointed yet."""
    try:
        lines = json_lines(Path(run_dir) / RESULTS_FILE)
    except (OSError, UnicodeDecodeError):
        return []
    return [record for _, _, record, _ in lines if isinstance(record, dict)]


def check_results_files(input_dir: str | os.PathLike) -> None:
    """Raise :class:`ResultsFileError` naming the culprit(s) and the fix, or return if the folder reads well."""
    if not Path(input_dir).is_dir():
        raise ResultsFileError(f"collect_results: --input_dir {str(input_dir)!r} is not a folder; give the "
                               f"--output_dir that 'sweep launch' wrote to.")
    damaged = damaged_lines(input_dir)
    if not damaged:
        return
    shown = "; ".join(f"{path} line {number}: {reason}" if number else f"{path}: {reason}"
                      for path, number, reason in damaged[:_SHOWN])
    more = f" (and {len(damaged) - _SHOWN} more)" if len(damaged) > _SHOWN else ""
    raise ResultsFileError(
        f"damaged results file{'s' if len(damaged) > 1 else ''}: {shown}{more}. A run killed while writing "
        f"leaves a partial last line. Fix: delete the damaged line (the run's earlier checkpoints stay valid; "
        f"without a 'done' file 'sweep launch' counts it as incomplete), or delete the run's folder and run "
        f"'sweep launch' again to redo it. Nothing was changed.")


# --- reading a sweep for the tables: whole reasons, and which runs are finished --------------------------------------
def read_results(path: str | os.PathLike) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """``([(line number, checkpoint record)], [(line number, reason)])`` of one results.jsonl: the lines that are
    train.py checkpoint records, and the damaged ones with their whole reason (line 0: the file cannot be read).
    A line without its final newline is damaged: the kill that cut it may have cut the record too."""
    try:
        lines = json_lines(path)
    except OSError as error:
        return [], [(0, f"cannot be read ({error.strerror or type(error).__name__})")]
    except UnicodeDecodeError as error:
        return [], [(0, _not_utf8(error))]
    records, damaged = [], []
    for number, line, record, error in lines:
        if error is not None:
            damaged.append((number, f"not JSON: {error.msg} (column {error.colno})"))
        elif not isinstance(record, dict):
            damaged.append((number, f"a JSON {type(record).__name__}, not a record"))
        elif not {"args", "step"} <= record.keys():
            damaged.append((number, "not a train.py checkpoint record (no 'args' or 'step')"))
        elif not line.endswith("\n"):
            damaged.append((number, "cut off: no final newline"))
        else:
            records.append((number, record))
    return records, damaged


def diverged(record: dict) -> bool:
    """Whether a train.py checkpoint record says its run had diverged by then: our trainer reports ``diverged`` (1.0
    once its divergence warning fired) at every step, so the record's mean over the interval is > 0. Records without
    the key (DomainBed's own algorithms, older runs) say no."""
    value = record.get("diverged")
    return isinstance(value, (int, float)) and value > 0


def degenerate_mask(record: dict) -> bool:
    """Whether a train.py checkpoint record says its run's masker mask was degenerate over the interval: ALIGN reports
    ``mask_mean`` (its mean over the interval) and ``in_warmup``; past the classifier's warm-up (``in_warmup`` 0 over
    the whole interval: the masker trained at every step) a mean under ``EMPTY_MASK`` (an empty mask) or over
    ``FULL_MASK`` (an all-ones one) selects nothing. The thresholds are the collapse monitor's
    (:mod:`domainbed_align.annotations`). Records without the keys (other methods, older runs) say no."""
    mean, warmup = record.get("mask_mean"), record.get("in_warmup")
    if not isinstance(mean, (int, float)) or not isinstance(warmup, (int, float)) or warmup != 0:
        return False
    return mean < EMPTY_MASK or mean > FULL_MASK


def sweep_folder(input_dir: str | os.PathLike) -> Path:
    """The folder holding the run folders: ``input_dir`` itself, or its ``runs/`` when ``input_dir`` is one of this
    project's ``results/`` folders (which keep the runs there beside tables.md and a README)."""
    folder = Path(input_dir)
    runs = folder / "runs"
    if runs.is_dir() and not any(is_run_folder(child) for child in folder.iterdir() if child.is_dir()):
        return runs
    return folder


RUN_FILES = (RESULTS_FILE, "done", "out.txt", "err.txt", liveness.LOCK_FILE, liveness.JOB_FILE)


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a file train.py or a launcher writes (a model file copied out of its run does not)."""
    return any((folder / name).exists() for name in RUN_FILES)


def run_folders(folder: str | os.PathLike) -> list[Path]:
    """The run folders of a sweep folder (those holding any file train.py or a launcher writes), in ``os.listdir``
    order, as collect_results reads them."""
    folder = Path(folder)
    return [folder / name for name in os.listdir(folder) if (folder / name).is_dir() and is_run_folder(folder / name)]


def final_step(record: dict, default_steps: DefaultSteps | None = None) -> int | None:
    """The step of train.py's last checkpoint for this record's run (``args.steps or dataset.N_STEPS``, minus one),
    or None when the run gave no ``--steps`` and ``default_steps`` (dataset name -> ``N_STEPS``) does not know its
    dataset's default (none given: the datasets and DomainBed sit above ``runs``)."""
    steps = record["args"].get("steps")
    if not steps:
        steps = default_steps(record["args"].get("dataset")) if default_steps is not None else None
    return int(steps) - 1 if steps else None


# why a run is not counted, by liveness state (one word group each, for the one-line summary)
UNFINISHED_WHY = {liveness.FAILED: "killed or failed", liveness.RUNNING: "still running",
                  liveness.QUEUED: "queued", liveness.NOT_LAUNCHED: "not launched",
                  liveness.UNKNOWN: "state unknown (its lock could not be checked)"}
SQUEUE_SILENT = "state unknown (squeue did not answer)"


def unfinished_runs(folders: Iterable[Path], default_steps: DefaultSteps | None = None) -> dict[Path, str]:
    """Why each run folder that is not finished is not (:data:`UNFINISHED_WHY`'s words); finished ones are absent.

    Finished: DomainBed's ``done`` file (:func:`domainbed_align.runs.liveness.run_state`), or, for a copy that kept only
    results.jsonl (as this project's ``results/`` folders do), a run no process holds whose last readable line is
    train.py's last checkpoint (``args.steps - 1``; for a run without ``--steps``, its dataset's ``N_STEPS - 1`` as
    ``default_steps`` gives it): the tables read nothing train.py writes after it."""
    pending = [folder for folder in folders if not (folder / "done").exists()]
    job_ids = [(liveness.read_job_record(str(folder)) or {}).get("slurm_job_id") for folder in pending]
    try:
        slurm: dict[str, str] | None = liveness.slurm_states(job_ids)  # one squeue call for the whole sweep
    except liveness.SlurmUnavailable:
        slurm = None
    why = {}
    for folder, job_id in zip(pending, job_ids):
        if job_id and slurm is None:
            why[folder] = SQUEUE_SILENT
            continue
        state = liveness.run_state(str(folder), slurm or {})
        if state.state == liveness.DONE:
            continue
        if state.state == liveness.FAILED:
            readable = readable_records(folder)
            last = readable[-1] if readable else None
            if last is not None and "args" in last and last.get("step") == final_step(last, default_steps):
                continue  # results.jsonl complete; only the marker is missing (a copy)
        why[folder] = UNFINISHED_WHY.get(state.state, f"state {state.state}")  # e.g. a lock nobody can check
    return why


def grouped_names(why: dict[str, str], shown: int = 3) -> str:
    """``"9 killed or failed (a, b, c, and 6 more); 1 still running (d)"``: runs grouped by why, a few named."""
    groups: dict[str, list[str]] = {}
    for name, reason in why.items():
        groups.setdefault(reason, []).append(name)
    parts = []
    for reason, names in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        names = sorted(names)
        listed = ", ".join(names[:shown]) + (f", and {len(names) - shown} more" if len(names) > shown else "")
        parts.append(f"{len(names)} {reason} ({listed})")
    return "; ".join(parts)


def unfinished_summary(why: dict[Path, str], total: int, counted: bool, fix: str) -> str:
    """One line: how many runs are unfinished, grouped by why, a few named; ``counted``: whether they are in."""
    runs = f"{len(why)} of {total} run{'s' if total != 1 else ''}"
    verb = "counting" if counted else "left out"
    groups = grouped_names({folder.name: reason for folder, reason in why.items()})
    return f"{verb} {runs}, unfinished (no DomainBed `done` file): {groups}; {fix}."
