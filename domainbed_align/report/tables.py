"""``python -m domainbed_align.tables --input_dir DIR``: every table of a sweep folder (pandas; markdown, LaTeX, CSV).

Layouts (``--layout``, by default every one the folder's runs allow):

- ``domainbed``: DomainBed's table, one held-out domain per run, per test environment and their average, for each
  model-selection method (training-domain validation, leave-one-domain-out, oracle), and the averages table. Its
  numbers are ``collect_results``' own: the same selection rules (ties between hparam draws go to the higher
  ``hparams_seed``, between checkpoints to the earlier step), test accuracy on the held-out domain's ``in`` split,
  and DomainBed's standard error, ``np.std`` (ddof 0) of the trials' accuracies / sqrt(n).
- ``single_source``: runs with one training domain (every other domain a test domain). Rows: method and source;
  columns: every domain; the diagonal is the source's held-out (``out``) split (in-domain accuracy), the rest the
  target's ``in`` split. Training-domain validation would select on the very split the diagonal reports, so the
  first table takes the last checkpoint of DomainBed's default hparams (``hparams_seed`` 0): no selection; the second
  is oracle selection (DomainBed's: the hparam draw best on the target's ``out`` split, last checkpoint).
- ``in_domain``: the diagonal of the first single-source table, one row per method.
- ``explanations`` (with ``--explanations FILE``, the JSON lines of ``python -m domainbed_align.evaluate
  --checkpoint selected``): per held-out domain, accuracy beside the explanation metrics **of the checkpoint whose
  accuracy is shown** (training-domain validation's, which our algorithms keep as ``model_selected.pkl``; a record of
  another step is refused in its cell), and the cost: train.py's ``step_time`` and its ratio to TimmERM's.

Outside the ``domainbed`` layout: mean ± standard error over trials (std with ddof 1 / sqrt(n)); means are
collect_results' (``100 * np.mean``), so one accuracy reads the same in every layout. A cell without a number says why.

Which records: the finished runs' (DomainBed's ``done`` file; a copy that kept only results.jsonl counts when its last
line is train.py's last step), the others left out in one line on stderr and in the notes (``--include_unfinished``
counts them, each cell reading one marked †). ``--max_step N``: only checkpoints up to step N, before selection. A
damaged or cut-off results line is skipped with one warning naming file, line and why, and every cell reading its
run is marked ‡. A cell that counts a run whose last record says it diverged (``diverged`` > 0: the trainer's
divergence warning fired, its accuracies mean nothing) is marked §, one that counts a run whose last record has a
degenerate masker mask (ALIGN's ``mask_mean`` past warm-up under 2 % or over 98 %: the mask selects nothing, the
collapse monitor's thresholds; :func:`domainbed_align.runs.records.degenerate_mask`) ¶; the notes name the runs (and
the step, or the final mask mean). ``--input_dir`` may be a sweep folder or a results folder holding its runs in
``runs/``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from domainbed_align import atomic
from domainbed_align.errors import DomainbedAlignError, ResultsFileError
from domainbed_align.report.render import (Table, domainbed_mean_and_error, mean_and_error,  # noqa: F401
                                           percent_mean_and_error, render)
from domainbed_align.report.selection import IID, LODO, ORACLE, SELECTION_METHODS, n_envs, records_by, select
# what the tables read (the records, the marks): re-exported, tables.load_records is this module's public reader
from domainbed_align.report.sweep_records import Marks, Sweep, load_records, read_sweep  # noqa: F401
from domainbed_align.errors import print_error

COMMAND = "domainbed-align tables"  # how its errors are prefixed (errors.print_error)


LAYOUTS = ("domainbed", "single_source", "in_domain", "explanations")
EXPLANATION_COLUMNS = {"insertion_auc": "insertion AUC", "random_insertion_auc": "random maps' insertion AUC",
                       "comprehensiveness": "comprehensiveness", "sufficiency": "sufficiency",
                       "zero_maps": "zero maps", "foreground_mass": "mass on object",
                       "foreground_share": "object share", "masker_iou": "masker IoU"}
REFERENCE = "TimmERM"  # the cost ratio's denominator


def _runs_by_cell(records: list[dict]) -> dict[tuple, set[str]]:
    """(dataset, algorithm, held-out env) -> the runs DomainBed's selection for that cell considers (every trial and
    hparam draw holding that domain out; pairs too, for leave-one-domain-out)."""
    runs: dict[tuple, set[str]] = {}
    for record in records:
        args = record["args"]
        for env in args["test_envs"]:
            runs.setdefault((args["dataset"], args["algorithm"], env), set()).add(record["_run"])
    return runs


# --- names and orders (DomainBed's when it is importable, as collect_results orders them) ------------------------
class Names:
    """Algorithm and dataset order and environment names: DomainBed's lists when ``domainbed`` is importable
    (or DOMAINBED_ROOT is set), else ours (registry order, then the rest sorted)."""

    def __init__(self, records: list[dict]) -> None:
        from domainbed_align.methods import registry
        from domainbed_align.data import DATASETS as ours

        self.upstream = _upstream_modules()
        known_algorithms = list(self.upstream[0].ALGORITHMS) if self.upstream else list(registry.algorithm_names())
        present = list(dict.fromkeys(r["args"]["algorithm"] for r in records))
        self.algorithms = [a for a in known_algorithms if a in present] + sorted(set(present) - set(known_algorithms))
        datasets = sorted({r["args"]["dataset"] for r in records})
        known = list(self.upstream[1].DATASETS) if self.upstream else list(ours)
        self.datasets = [d for d in known if d in datasets] + [d for d in datasets if d not in known]
        self._ours = ours
        self._envs_seen = {d: max(n_envs(r) for r in records if r["args"]["dataset"] == d) for d in datasets}
        self.notes: list[str] = []

    def environments(self, dataset: str) -> list[str]:
        if dataset in self._ours:
            return list(self._ours[dataset].ENVIRONMENTS)
        if self.upstream and dataset in self.upstream[1].DATASETS:
            return list(self.upstream[1].get_dataset_class(dataset).ENVIRONMENTS)
        note = f"{dataset}: environment names need DomainBed (set DOMAINBED_ROOT); shown as env0, env1, ..."
        if note not in self.notes:
            self.notes.append(note)
        return [f"env{i}" for i in range(self._envs_seen[dataset])]


def _upstream_modules() -> tuple[Any, Any] | None:
    """``(domainbed.algorithms, domainbed.datasets)`` through the boundary, or None without DomainBed."""
    from domainbed_align.upstream import adapter

    return adapter.registry_modules()


# --- tables ---------------------------------------------------------------------------------------------------------
def domainbed_tables(records: list[dict], names: Names) -> list[Table]:
    """collect_results' tables: per dataset and selection method, then the averages per selection method."""
    tables = []
    runs_of = _runs_by_cell(records)
    for method in SELECTION_METHODS:
        selected = select(records, method)
        for dataset in names.datasets:
            envs = names.environments(dataset)
            rows, marks = [], Marks(records)
            for algorithm in names.algorithms:
                cells, means, read = {}, [], set()
                for index, env in enumerate(envs):
                    accs = selected[(selected.dataset == dataset) & (selected.algorithm == algorithm)
                                    & (selected.test_env == index)].test_acc
                    if len(accs):
                        mean, err = domainbed_mean_and_error(accs)
                        runs = runs_of.get((dataset, algorithm, index), set())
                        cells[env] = {"mean": mean, "se": err, "n": len(accs), "marks": marks.of(runs)}
                        means.append(mean)
                        read |= runs
                    else:
                        cells[env] = _why_no_selection(records, dataset, algorithm, index, method)
                cells["Avg"] = ({"mean": sum(means) / len(means), "se": None, "n": len(means), "marks": marks.of(read)}
                                if len(means) == len(envs) else "needs every domain held out")
                rows.append({"Algorithm": algorithm, "cells": cells})
            tables.append(Table(f"Dataset: {dataset}, model selection method: {method}", rows, ["Algorithm"],
                                [*envs, "Avg"], marks.notes()))
        rows, marks = [], Marks(records)
        for algorithm in names.algorithms:
            cells, means, read = {}, [], set()
            for dataset in names.datasets:
                mine = selected[(selected.dataset == dataset) & (selected.algorithm == algorithm)]
                # np.mean per trial, trials sorted: upstream's Q.group("trial_seed") then Q.mean
                per_trial = [float(np.mean(list(group.test_acc))) for _, group in mine.groupby("trial_seed")]
                if len(per_trial):
                    mean, err = domainbed_mean_and_error(per_trial)
                    runs = set().union(*(runs for key, runs in runs_of.items() if key[:2] == (dataset, algorithm)))
                    cells[dataset] = {"mean": mean, "se": err, "n": len(per_trial), "marks": marks.of(runs)}
                    means.append(mean)
                    read |= runs
                else:
                    cells[dataset] = "no selected run"
            cells["Avg"] = ({"mean": sum(means) / len(means), "se": None, "n": len(means), "marks": marks.of(read)}
                            if len(means) == len(names.datasets) else "needs every dataset")
            rows.append({"Algorithm": algorithm, "cells": cells})
        tables.append(Table(f"Averages, model selection method: {method}", rows, ["Algorithm"],
                            [*names.datasets, "Avg"], marks.notes()))
    for table in tables:
        table.notes.insert(0, "Percent accuracy on the held-out domain's `in` split, mean ± DomainBed's standard "
                              "error (np.std with ddof 0 over trials / sqrt(n)), as collect_results computes them.")
    return tables


def _why_no_selection(records: list[dict], dataset: str, algorithm: str, env: int, method: str) -> str:
    mine = [r for r in records if r["args"]["dataset"] == dataset and r["args"]["algorithm"] == algorithm
            and env in r["args"]["test_envs"]]
    if not mine:
        return "no run with this held-out domain"
    if method == LODO:
        return "needs runs holding out this domain with each other one"
    return "only runs with several held-out domains"


def _last_records(records: list[dict]) -> dict[tuple, dict]:
    """The last checkpoint of each single-source run: (dataset, algorithm, trial, hparams_seed, source) -> record."""
    last: dict[tuple, dict] = {}
    for record in records:
        args = record["args"]
        sources = set(range(n_envs(record))) - set(args["test_envs"])
        if len(sources) != 1:
            continue
        key = (args["dataset"], args["algorithm"], args["trial_seed"], args["hparams_seed"], sources.pop())
        if key not in last or record["step"] >= last[key]["step"]:
            last[key] = record
    return last


def _accuracy_key(source: int, target: int) -> str:
    return f"env{source}_out_acc" if target == source else f"env{target}_in_acc"


def single_source_tables(records: list[dict], names: Names) -> tuple[list[Table], list[Table]]:
    """(the source x target matrices, the in-domain tables): last checkpoint of the default hparams, and oracle."""
    last = _last_records(records)
    matrices, in_domain = [], []
    for dataset in names.datasets:
        envs = names.environments(dataset)
        runs = {k: v for k, v in last.items() if k[0] == dataset}
        if not runs:
            continue
        for variant in ("last", "oracle"):
            rows, diagonal, marks = [], [], Marks(records)
            for algorithm in names.algorithms:
                for source, source_name in enumerate(envs):
                    mine = {k: v for k, v in runs.items() if k[1] == algorithm and k[4] == source}
                    if not mine:
                        continue
                    cells = {}
                    # the runs this row reads: the default draw's (last) or every draw (oracle picks among them)
                    read = [r["_run"] for k, r in mine.items() if variant == "oracle" or k[3] == 0]
                    for target, target_name in enumerate(envs):
                        values = _single_source_values(mine, source, target, variant)
                        cells[target_name] = (_percent_cell(values, marks.of(read)) if values else
                                              "no run with DomainBed's default hparams (hparams_seed 0)")
                    rows.append({"Algorithm": algorithm, "trained on": source_name, "cells": cells})
                    diagonal.append((algorithm, source_name, cells[source_name]))
            title = (f"Dataset: {dataset}, single source, " +
                     ("last checkpoint of the default hparams (no selection)" if variant == "last" else
                      "oracle selection (hparams by the target's `out` split, last checkpoint)"))
            matrices.append(Table(title, rows, ["Algorithm", "trained on"], envs, [
                "Percent accuracy, mean ± standard error over trials (std ddof 1 / sqrt(n)); the column of the "
                "source is its held-out `out` split (in-domain), the others the target's `in` split.",
                *marks.notes()]))
            if variant == "last":
                by_algorithm: dict[str, dict] = {}
                for algorithm, source_name, cell in diagonal:
                    by_algorithm.setdefault(algorithm, {})[source_name] = cell
                id_rows = [{"Algorithm": a, "cells": {e: c.get(e, "no run trained on this domain alone")
                                                      for e in envs}} for a, c in by_algorithm.items()]
                in_domain.append(Table(f"Dataset: {dataset}, in-domain accuracy per domain (trained on it alone, "
                                       f"its `out` split, last checkpoint of the default hparams)", id_rows,
                                       ["Algorithm"], envs, ["Mean ± standard error over trials (ddof 1).",
                                                             *marks.notes()]))
    return matrices, in_domain


def _single_source_values(runs: dict[tuple, dict], source: int, target: int, variant: str) -> list[float]:
    key = _accuracy_key(source, target)
    if variant == "last":
        return [r[key] for k, r in sorted(runs.items()) if k[3] == 0]
    chosen = []
    for trial in sorted({k[2] for k in runs}):
        draws = sorted((k[3], r) for k, r in runs.items() if k[2] == trial)
        # DomainBed's oracle: the draw best on the target's out split (ties: the higher hparams_seed)
        best = max(reversed(draws), key=lambda pair: pair[1][f"env{target}_out_acc"])[1]
        chosen.append(best[key])
    return chosen


def _percent_cell(values: Sequence[float], marks: str = "") -> dict:
    mean, err = percent_mean_and_error(values)
    return {"mean": mean, "se": err if len(values) > 1 else None, "n": len(values), "marks": marks}


def read_explanations(path: str | os.PathLike) -> list[dict]:
    """The JSON lines ``python -m domainbed_align.evaluate`` printed (one clear error for a missing or foreign
    file)."""
    from domainbed_align.report import evaluate

    return evaluate.read_records(Path(path))


def explanation_tables(records: list[dict], explanations: list[dict], names: Names) -> list[Table]:
    """Per dataset and held-out domain: the training-domain-validation-selected accuracy, the explanation metrics of
    that very checkpoint on the held-out domain, and the cost."""
    from domainbed_align.methods import registry

    ours = registry.algorithm_names()
    selected = select(records, IID)
    evaluated = {(Path(e["run"]).name, e["env"]): e for e in explanations if e.get("split") == "test"}
    step_time = {run: float(np.mean([r["step_time"] for r in group if r["step"] > 0 and "step_time" in r] or
                                    [np.nan])) for run, group in records_by(records, lambda r: r["_run"]).items()}
    tables = []
    runs_of = _runs_by_cell(records)
    for dataset in names.datasets:
        for env, env_name in enumerate(names.environments(dataset)):
            held_out = selected[(selected.dataset == dataset) & (selected.test_env == env)]
            if held_out.empty:
                continue
            rows, costs, marks = [], {}, Marks(records)
            for algorithm in names.algorithms:
                runs = held_out[held_out.algorithm == algorithm]
                if runs.empty:
                    continue
                matched, problem = [], ""
                for run in runs.itertuples():
                    record = evaluated.get((run.run, env))
                    if record is None:
                        problem = ("not evaluated: run `evaluate --checkpoint selected` on this sweep" if algorithm
                                   in ours else "DomainBed's own algorithms keep no model_selected.pkl")
                    elif record.get("checkpoint") != "selected" or record.get("step") != run.step:
                        problem = (f"evaluated the {record.get('checkpoint', 'last')} checkpoint (step "
                                   f"{record.get('step')}), not the selected step {run.step}")
                    else:
                        matched.append(record)
                cells = {"accuracy": _percent_cell(list(runs.test_acc)),
                         "selected step": _plain_cell(list(runs.step), digits=0)}
                for key, label in EXPLANATION_COLUMNS.items():
                    values = [m.get(key) for m in matched]
                    missing = "no masker" if key.startswith("masker") else "not on this dataset"
                    cells[label] = (problem or missing) if problem or None in values or not values \
                        else _plain_cell(values)
                times = [step_time.get(run) for run in runs.run]
                cells["step time (s)"] = _plain_cell(times, digits=3)
                costs[algorithm] = float(np.mean(times))
                row_marks = marks.of(runs_of.get((dataset, algorithm, env), set()))
                for cell in cells.values():  # every number of the row comes from the same runs
                    if isinstance(cell, dict):
                        cell["marks"] = row_marks
                rows.append({"Algorithm": algorithm, "cells": cells})
            for row in rows:
                ratio = costs[row["Algorithm"]] / costs[REFERENCE] if REFERENCE in costs else None
                row["cells"][f"x {REFERENCE}"] = ({"mean": ratio, "se": None, "digits": 2,
                                                   "marks": row["cells"]["accuracy"]["marks"]}  # the row's runs
                                                  if ratio is not None else f"no {REFERENCE} run here")
            columns = ["accuracy", "selected step", *EXPLANATION_COLUMNS.values(), "step time (s)", f"x {REFERENCE}"]
            tables.append(Table(
                f"Dataset: {dataset}, held out: {env_name}, explanations of the checkpoint training-domain "
                f"validation selects (model_selected.pkl)", rows, ["Algorithm"], columns,
                ["Accuracy: percent, the held-out domain's `in` split at the selected checkpoint; explanation "
                 "metrics: `evaluate` on the held-out domain (its --max_images subset), true-class Grad-CAM, of the "
                 "same checkpoint; "
                 "mean ± standard error over trials (ddof 1). Step time: train.py's `step_time` on the machine "
                 "that trained (not a benchmark). The accuracy's mean is the `domainbed` layout's (training-domain "
                 "validation); its standard error uses ddof 1 where DomainBed's uses ddof 0, so it reads larger "
                 "(by sqrt(n / (n - 1))).", *marks.notes()]))
    return tables


def _plain_cell(values: Sequence[float | None], digits: int = 3) -> dict | str:
    if not values or any(v is None or v != v for v in values):
        return "not recorded"
    mean, err = mean_and_error(values)
    return {"mean": mean, "se": err if len(values) > 1 else None, "n": len(values), "digits": digits}


# --- output ---------------------------------------------------------------------------------------------------------
def build(records: list[dict], layouts: Sequence[str], explanations: list[dict] | None = None,
          notes: Sequence[str] = ()) -> list[Table]:
    """The tables of ``layouts``; ``notes`` (e.g. :class:`Sweep`'s) go under every table."""
    names = Names(records)
    tables: list[Table] = []
    if "domainbed" in layouts:
        tables += domainbed_tables(records, names)
    if "single_source" in layouts or "in_domain" in layouts:
        matrices, in_domain = single_source_tables(records, names)
        tables += (matrices if "single_source" in layouts else []) + (in_domain if "in_domain" in layouts else [])
    if "explanations" in layouts and explanations is not None:
        tables += explanation_tables(records, explanations, names)
    if tables and names.notes:
        tables[0].notes.extend(names.notes)
    for table in tables:  # each table may be read alone (one is pasted into a paper): each says what it counts
        table.notes.extend(notes)
    return tables


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed_align.tables", description=__doc__.split("\n\n")[0])
    p.add_argument("--input_dir", required=True, type=Path,
                   help="a sweep's output folder (its run folders), or a results folder holding them in runs/")
    p.add_argument("--format", choices=("markdown", "latex", "csv"), default="markdown")
    p.add_argument("--layout", nargs="+", choices=LAYOUTS, default=list(LAYOUTS),
                   help="which tables (default: every one the runs allow)")
    p.add_argument("--explanations", type=Path,
                   help="JSON lines of `python -m domainbed_align.evaluate --checkpoint selected --input_dir` on "
                        "the same folder: adds the explanation tables")
    p.add_argument("--max_step", type=_step, metavar="N",
                   help="DomainBed's model selection over each run's checkpoints up to step N only (records after N "
                        "are dropped first): runs cut short, or of different lengths, compared at a common step")
    p.add_argument("--include_unfinished", action="store_true",
                   help="also count runs without DomainBed's `done` file (killed, failed, still running); each cell "
                        "that reads one is marked † (by default they are left out, in one line on stderr)")
    p.add_argument("--output", type=Path, help="write here instead of printing")
    return p


def _step(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step: give a whole number >= 0 (e.g. 1400)")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    try:
        sweep = read_sweep(options.input_dir, max_step=options.max_step,
                           include_unfinished=options.include_unfinished)
        explanations = read_explanations(options.explanations) if options.explanations else None
        tables = build(sweep.records, options.layout, explanations, sweep.notes)
        if not tables:
            raise ResultsFileError(f"no table of {options.layout} can be made from {options.input_dir}'s runs "
                                   f"(single_source and in_domain need runs with one training domain).")
        text = render(tables, options.format)
    except DomainbedAlignError as error:
        print_error(f"{error}", COMMAND)
        return 1
    if options.output:
        try:
            atomic.write_text(options.output, text)  # a reader never sees half a table, nor a kill's leftovers
        except OSError as error:
            print_error(f"cannot write --output {options.output} ({error.strerror or error}): give "
                        f"a file in a folder that exists and that you can write to.", COMMAND)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
