"""The paper's first sanity check on an offline dataset: an annotation method trained on ALIGN's exported masks
against the same method on the dataset's ground-truth masks, paired by trial.

    python sweeps/align_masks_sanity.py --align_runs RUNS --output_dir OUT [--data_dir DATA] [--algorithm GRADIA]

RUNS holds finished ALIGN runs of upstream's train.py (``*/model.pkl``, one per trial; e.g. a demo sweep's folder).
For each (hparams_seed 0) ALIGN run, its masks are exported for its training environments
(``python -m domainbed_align.masks export``: IoU with the ground truth per environment), then ``--algorithm`` is
trained twice through upstream's train.py with that run's arguments (dataset, test environments, steps, seed, trial
seed, batch size, holdout fraction): on the dataset's own masks and on the exported ones. Resumable: finished runs
(their ``done`` file) are kept, unfinished ones redone. Then ``summary.md`` (pandas): held-out accuracy at the last
checkpoint and at DomainBed's training-domain-validation choice, and the explanation metrics of each last
checkpoint (``domainbed_align.report.evaluate``), mean ± standard error over the trials, and the paired difference.
Needs ``domainbed`` importable (PYTHONPATH=$DOMAINBED_ROOT). Paths stay as given (relative ones are recorded so).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from domainbed_align import atomic
from domainbed_align.runs.records import readable_records  # the one results.jsonl reader

SOURCES = ("dataset", "align")  # the dataset's own masks, ALIGN's exported ones


def align_runs(folder: Path) -> list[dict]:
    """The args of each finished ALIGN run with DomainBed's default hparams, by trial."""
    runs = []
    for results in sorted(folder.glob("*/results.jsonl")):
        if not (results.parent / "done").exists() or not (results.parent / "model.pkl").exists():
            continue
        first = readable_records(results.parent)[0]
        if first["args"]["algorithm"] == "ALIGN" and first["args"]["hparams_seed"] == 0:
            runs.append({**first["args"], "run": results.parent, "batch_size": first["hparams"]["batch_size"]})
    return sorted(runs, key=lambda run: run["trial_seed"])


def train_command(run: dict, algorithm: str, source: str, masks: Path, output: Path, data_dir: str) -> list[str]:
    hparams = {"batch_size": run["batch_size"], **({"mask_dir": str(masks)} if source == "align" else {})}
    return [sys.executable, "-m", "domainbed.scripts.train", "--algorithm", algorithm, "--dataset", run["dataset"],
            "--data_dir", data_dir, "--test_envs", *map(str, run["test_envs"]), "--steps", str(run["steps"]),
            "--holdout_fraction", str(run["holdout_fraction"]), "--hparams", json.dumps(hparams),
            "--seed", str(run["seed"]), "--trial_seed", str(run["trial_seed"]), "--output_dir", str(output)]


def run_once(command: list[str], output: Path, threads: int) -> int:
    if (output / "done").exists():
        return 0
    shutil.rmtree(output, ignore_errors=True)  # DomainBed cannot resume a run: redo it
    output.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(output.parent / f"{output.name}.console.txt", "w") as console:
        return subprocess.call(command, stdout=console, stderr=subprocess.STDOUT, env=env)


def accuracies(output: Path, test_envs: list[int]) -> dict:
    """Held-out accuracy (the test environments' ``in`` splits, as collect_results) at the last checkpoint and at
    the checkpoint with the best mean training-environment ``out`` accuracy (training-domain validation)."""
    records = readable_records(output)
    envs = sorted(int(key[3:].split("_")[0]) for key in records[0] if key.startswith("env") and key.endswith("_out_acc"))
    train = [e for e in envs if e not in test_envs]

    def test_acc(record: dict) -> float:
        return sum(record[f"env{e}_in_acc"] for e in test_envs) / len(test_envs)

    chosen = max(records, key=lambda r: sum(r[f"env{e}_out_acc"] for e in train) / len(train))
    return {"acc_last": test_acc(records[-1]), "acc_selected": test_acc(chosen), "selected_step": chosen["step"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--align_runs", type=Path, required=True)
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--data_dir", default=None, help="default: each ALIGN run's own --data_dir")
    p.add_argument("--algorithm", default="GRADIA")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per training")
    p.add_argument("--masks_only", action="store_true", help="export the masks and write masks.md; train nothing")
    options = p.parse_args()
    runs = align_runs(options.align_runs)
    if not runs:
        p.error(f"no finished ALIGN run (hparams_seed 0, with model.pkl) in {options.align_runs}")
    jobs, manifests = [], {}
    for run in runs:
        masks = options.output_dir / "masks" / f"trial{run['trial_seed']}"
        if not (masks / "manifest.json").exists():
            subprocess.check_call([sys.executable, "-m", "domainbed_align.masks", "export", "--model",
                                   str(run["run"] / "model.pkl"), "--output_dir", str(masks), "--envs", "train",
                                   *(["--data_dir", options.data_dir] if options.data_dir else [])])
        manifests[run["trial_seed"]] = json.loads((masks / "manifest.json").read_text())
        if options.masks_only:
            continue
        for source in SOURCES:
            output = options.output_dir / "runs" / f"{options.algorithm}_{source}_trial{run['trial_seed']}"
            command = train_command(run, options.algorithm, source, masks, output, options.data_dir or run["data_dir"])
            jobs.append((run, source, output, command))
    atomic.write_text(options.output_dir / "masks.md", iou_table(manifests))
    if options.masks_only:
        print(iou_table(manifests))
        return 0
    with ThreadPoolExecutor(options.parallel) as pool:
        codes = list(pool.map(lambda job: run_once(job[3], job[2], options.threads), jobs))
    failed = [str(job[2]) for job, code in zip(jobs, codes) if code != 0]
    if failed:
        print("failed (see each folder's .console.txt):", *failed, sep="\n  ", file=sys.stderr)
        return 1
    summarise(options, runs, jobs, manifests)
    return 0


def iou_table(manifests: dict) -> str:
    """Markdown: the exported masks' IoU with the ground truth per environment, mean ± standard error over trials."""
    import pandas as pd

    ious = pd.DataFrame([{"trial": t, "environment": name, "iou": entry["iou"]}
                         for t, manifest in manifests.items() for name, entry in manifest["environments"].items()])
    per_env = ious.groupby("environment")["iou"]
    table = (per_env.mean().map("{:.3f}".format) + " ± " + per_env.sem().map("{:.3f}".format)).to_frame(
        f"IoU (mask > 0.5), {ious['trial'].nunique()} trials")
    return ("## ALIGN's exported masks against the ground-truth digits, mean ± standard error over trials\n\n"
            + table.to_markdown() + "\n")


def summarise(options: argparse.Namespace, runs: list[dict], jobs: list, manifests: dict) -> None:
    import pandas as pd

    rows = []
    for run, source, output, _ in jobs:
        row = {"source": source, "trial": run["trial_seed"], **accuracies(output, run["test_envs"])}
        lines = subprocess.run([sys.executable, "-m", "domainbed_align.evaluate", "--model", str(output / "model.pkl"),
                                "--max_images", "200"], capture_output=True, text=True, check=True).stdout
        for record in map(json.loads, lines.splitlines()):
            row.update({key: record[key] for key in ("accuracy", "foreground_mass", "foreground_share",
                                                     "insertion_auc", "comprehensiveness")})
        rows.append(row)
    table = pd.DataFrame(rows)
    with atomic.replacing(options.output_dir / "runs.csv", "w") as handle:
        table.to_csv(handle, index=False)
    metrics = ["acc_last", "acc_selected", "foreground_mass", "insertion_auc", "comprehensiveness"]
    grouped = table.groupby("source")[metrics]
    summary = grouped.mean().map("{:.3f}".format) + " ± " + grouped.sem().map("{:.3f}".format)
    paired = table.pivot(index="trial", columns="source", values=metrics)
    difference = pd.DataFrame({m: paired[m]["align"] - paired[m]["dataset"] for m in metrics})
    text = [f"# {options.algorithm} on ALIGN's exported masks vs on the dataset's own masks",
            "", f"{len(runs)} trials, paired (the same seeds, data split and settings as each ALIGN run); "
            f"written by `sweeps/align_masks_sanity.py` (its command in the README beside this file).", "",
            iou_table(manifests), "## Accuracy (held-out environment) and explanations of the last checkpoint", "",
            summary.to_markdown(), "", "## Paired difference (align - dataset), mean ± standard error", "",
            (difference.mean().map("{:.3f}".format) + " ± " + difference.sem().map("{:.3f}".format))
            .to_frame("align - dataset").to_markdown(), ""]
    atomic.write_text(options.output_dir / "summary.md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
