"""Paired comparison of two sweeps of the same runs that differ in one setting (an ablation), from committed files.

    python sweeps/paired_ablation.py --baseline results/texturemnist_500steps --baseline_label 100 \
        --variant results/texturemnist_500steps_masker_warmup0 --variant_label 0 --setting masker_warmup_steps \
        > results/texturemnist_500steps_masker_warmup0/comparison.md

Each folder holds ``runs/*/results.jsonl`` and ``explanations.jsonl`` (``python -m domainbed_align.evaluate`` of
its runs). Upstream's sweep seeds a run by (dataset, algorithm, test envs, hparams_seed, trial_seed), not by
--hparams, so trial t of both sweeps starts from the same weights, data order and split: pairing by trial compares
runs that differ only in the setting. Needs pandas and tabulate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from domainbed_align.runs.validation import selected_record
from domainbed_align.runs.records import json_lines, readable_records  # the one JSON-lines reader


def last_checkpoints(folder: Path, algorithm: str) -> list[dict]:
    rows = []
    for results in sorted((folder / "runs").glob("*/results.jsonl")):
        records = readable_records(results.parent)
        last, args = records[-1], records[-1]["args"]
        if args["algorithm"] != algorithm:
            continue
        test_env = args["test_envs"][0]
        selected = selected_record(records)  # DomainBed's training-domain validation
        rows.append({"trial": args["trial_seed"], "run": results.parent.name,
                     "held-out acc (selected)": selected[f"env{test_env}_in_acc"], "selected step": selected["step"],
                     "held-out acc (last)": last[f"env{test_env}_in_acc"], "mask_mean": last.get("mask_mean"),
                     "zero_cams": last.get("zero_cams")})
    return rows


def explanation_rows(folder: Path, algorithm: str) -> dict[str, dict]:
    path = folder / "explanations.jsonl"
    records = []
    for _, line, record, error in json_lines(path):
        if error is not None and line.strip():
            raise error
        if error is None:
            records.append(record)
    return {Path(r["run"]).name: r for r in records if r["algorithm"] == algorithm}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--baseline_label", type=int, required=True, help="the setting's value in --baseline")
    p.add_argument("--variant", type=Path, required=True)
    p.add_argument("--variant_label", type=int, required=True, help="the setting's value in --variant")
    p.add_argument("--setting", default="masker_warmup_steps", help="the name of the setting that differs")
    p.add_argument("--algorithm", default="ALIGN")
    options = p.parse_args()
    base, variant, setting = options.baseline_label, options.variant_label, options.setting
    frames = []
    for warmup, folder in ((variant, options.variant), (base, options.baseline)):
        explained = explanation_rows(folder, options.algorithm)
        for row in last_checkpoints(folder, options.algorithm):
            metrics = explained.get(row["run"], {})
            row.update({key: metrics.get(key) for key in ("masker_iou", "foreground_mass", "insertion_auc")})
            frames.append({setting: warmup, **row})
    table = pd.DataFrame(frames).drop(columns="run").sort_values(["trial", setting])
    table = table.astype({setting: str, "trial": str, "selected step": str})  # shown as integers
    print("Per run (last checkpoint unless marked; explanation metrics: as each folder's explanations.jsonl):\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    paired = table.astype({setting: int, "trial": int}).pivot(index="trial", columns=setting)
    common = paired.dropna().index
    print(f"\nPaired differences ({setting} {base} minus {variant}) over trials {list(common)}:\n")
    columns = ["held-out acc (selected)", "held-out acc (last)", "mask_mean", "masker_iou", "foreground_mass",
               "insertion_auc"]
    difference = pd.DataFrame({c: paired.loc[common, (c, base)] - paired.loc[common, (c, variant)]
                               for c in columns})
    summary = pd.DataFrame({"mean": difference.mean(), "standard error": difference.sem()})
    print(difference.to_markdown(floatfmt=".3f"))
    print()
    print(summary.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
