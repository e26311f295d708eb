"""Readable errors for the sweep output that DomainBed's ``collect_results`` reads (no DomainBed import).

``train.py`` appends one JSON line per checkpoint to ``<run>/results.jsonl``; a run killed while writing leaves
a partial last line, and upstream's reader then stops every table with a JSONDecodeError traceback that names
no file. :func:`check_results_files` finds every damaged line in a sweep folder and says what to do; it reads
only and never edits a file (a damaged run stays for the user to inspect).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from domainbed_align.errors import ResultsFileError

RESULTS_FILE = "results.jsonl"
_SHOWN = 5  # damaged files named in full; the rest are counted


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
            with open(path, encoding="utf-8") as results:
                lines = list(results)
        except UnicodeDecodeError as error:
            damaged.append((path, 0, f"not UTF-8 text ({error.reason} at byte {error.start})"))
            continue
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                damaged.append((path, number, f"not JSON (column {error.colno}: {error.msg})"))
                continue
            if not isinstance(record, dict):
                damaged.append((path, number, f"a JSON {type(record).__name__}, not a record"))
            elif not line.endswith("\n"):
                damaged.append((path, number, "a complete record without its final newline (add one)"))
    return damaged


def readable_records(run_dir: str | os.PathLike) -> list[dict]:
    """The checkpoint records of one run folder that parse, in order; lines being written or cut off by a kill
    are skipped (:func:`damaged_lines` names them). Empty when the run has not checkpointed yet."""
    try:
        lines = (Path(run_dir) / RESULTS_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


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
