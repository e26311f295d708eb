"""Paired comparison of two sweeps of the same runs that differ in one setting (an ablation), from committed files.

    python sweeps/paired_ablation.py --baseline results/texturemnist_500steps --baseline_label 100 \
        --variant results/texturemnist_500steps_masker_warmup0 --variant_label 0 --setting masker_warmup_steps \
        > results/texturemnist_500steps_masker_warmup0/comparison.md

Each folder holds ``runs/*/results.jsonl`` and, optionally, ``explanations.jsonl`` (``python -m
domainbed_align.evaluate`` of its runs). Runs are paired by test environments and trial (single-source runs: by
their training domain), the held-out accuracy being the mean over a run's test environments. Upstream's sweep seeds a run by (dataset, algorithm, test envs, hparams_seed, trial_seed), not by
--hparams, so trial t of both sweeps starts from the same weights, data order and split: pairing by trial compares
runs that differ only in the setting. Needs pandas and tabulate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from domainbed_align.runs.validation import selected_record
from domainbed_align.runs.records import json_lines, readable_records  # the one JSON-lines reader


def held_out_accuracy(record: dict, test_envs: list[int]) -> float:
    """The mean accuracy over the run's test environments (one: DomainBed's; three: single-source's OOD mean)."""
    return sum(record[f"env{e}_in_acc"] for e in test_envs) / len(test_envs)


def last_checkpoints(folder: Path, algorithm: str) -> list[dict]:
    rows = []
    for results in sorted((folder / "runs").glob("*/results.jsonl")):
        records = readable_records(results.parent)
        last, args = records[-1], records[-1]["args"]
        if args["algorithm"] != algorithm:
            continue
        test_envs = list(args["test_envs"])
        selected = selected_record(records)  # DomainBed's training-domain validation
        rows.append({"test_envs": str(test_envs), "trial": args["trial_seed"], "run": results.parent.name,
                     "held-out acc (selected)": held_out_accuracy(selected, test_envs),
                     "selected step": selected["step"],
                     "held-out acc (last)": held_out_accuracy(last, test_envs), "mask_mean": last.get("mask_mean"),
                     "zero_cams": last.get("zero_cams")})
    return rows


def explanation_rows(folder: Path, algorithm: str) -> dict[str, dict]:
    """Each run's explanation metrics, averaged over the environments evaluate scored (its test environments)."""
    path = folder / "explanations.jsonl"
    if not path.is_file():
        return {}
    by_run: dict[str, list[dict]] = {}
    for _, line, record, error in json_lines(path):
        if error is not None and line.strip():
            raise error
        if error is None and record["algorithm"] == algorithm:
            by_run.setdefault(Path(record["run"]).name, []).append(record)
    return {run: {key: (sum(r[key] for r in records) / len(records) if all(r.get(key) is not None for r in records)
                        else None) for key in EXPLANATION_KEYS}
            for run, records in by_run.items()}


EXPLANATION_KEYS = ("masker_iou", "foreground_mass", "insertion_auc")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--baseline_label", required=True, help="the setting's value in --baseline")
    p.add_argument("--variant", type=Path, required=True)
    p.add_argument("--variant_label", required=True, help="the setting's value in --variant")
    p.add_argument("--setting", default="masker_warmup_steps", help="the name of the setting that differs")
    p.add_argument("--algorithm", default="ALIGN")
    options = p.parse_args()
    base, variant, setting = options.baseline_label, options.variant_label, options.setting
    frames = []
    for label, folder in ((variant, options.variant), (base, options.baseline)):
        explained = explanation_rows(folder, options.algorithm)
        for row in last_checkpoints(folder, options.algorithm):
            metrics = explained.get(row["run"], {})
            row.update({key: metrics.get(key) for key in EXPLANATION_KEYS})
            frames.append({setting: label, **row})
    table = pd.DataFrame(frames).drop(columns="run").sort_values(["test_envs", "trial", setting])
    table = table.astype({"trial": str, "selected step": str})  # shown as integers
    single = table["test_envs"].nunique() == 1
    shown = table.drop(columns="test_envs") if single else table
    shown = shown.astype(object).where(shown.notna(), None)  # a run without explanation metrics shows '-'
    print("Per run (last checkpoint unless marked; held-out acc: the mean over the run's test environments; "
          "explanation metrics: as each folder's explanations.jsonl, '-' where it has none):\n")
    print(shown.to_markdown(index=False, floatfmt=".3f", missingval="-", disable_numparse=[0]))  # labels as given
    paired = table.astype({"trial": int}).pivot(index=["test_envs", "trial"], columns=setting)
    columns = ["held-out acc (selected)", "held-out acc (last)", "mask_mean", *EXPLANATION_KEYS]
    difference = pd.DataFrame({c: pd.to_numeric(paired[(c, base)], errors="coerce")
                               - pd.to_numeric(paired[(c, variant)], errors="coerce") for c in columns})
    difference = difference.dropna(how="all").dropna(axis="columns", how="all")  # e.g. no explanations.jsonl
    if single:
        difference = difference.droplevel("test_envs")
    print(f"\nPaired differences ({setting} {base} minus {variant}), {len(difference)} pairs:\n")
    print(difference.to_markdown(floatfmt=".3f", missingval="-"))
    print()
    summary = pd.DataFrame({"mean": difference.mean(), "standard error": difference.sem(),
                            "pairs": difference.count().astype(str)})
    print(summary.to_markdown(floatfmt=".3f", missingval="-"))


if __name__ == "__main__":
    main()
