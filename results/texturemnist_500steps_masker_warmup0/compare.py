"""Paired comparison of ALIGN with and without the masker warm-up, from the committed run files only.

    python results/texturemnist_500steps_masker_warmup0/compare.py > results/texturemnist_500steps_masker_warmup0/comparison.md

(needs pandas and tabulate).

Upstream's sweep seeds a run by (dataset, algorithm, test envs, hparams_seed, trial_seed), not by --hparams, so
trial t of both settings starts from the same weights, data order and split: the runs differ only from step 250
(the end of the classifier warm-up) on. Reads runs/*/results.jsonl and explanations.jsonl here and in
../texturemnist_500steps/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
FOLDERS = {0: HERE, 100: HERE.parent / "texturemnist_500steps"}
PHOTOS = 3


def last_checkpoints(folder: Path) -> list[dict]:
    rows = []
    for results in sorted((folder / "runs").glob("*/results.jsonl")):
        records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        last, args = records[-1], records[-1]["args"]
        if args["algorithm"] != "ALIGN":
            continue
        # DomainBed's training-domain validation: the checkpoint with the best mean held-out accuracy of the
        # training environments
        selected = max(records, key=lambda r: sum(r[f"env{i}_out_acc"] for i in range(4) if i != PHOTOS))
        rows.append({"trial": args["trial_seed"], "run": results.parent.name,
                     "photos acc (selected)": selected[f"env{PHOTOS}_in_acc"], "selected step": selected["step"],
                     "photos acc (last)": last[f"env{PHOTOS}_in_acc"], "mask_mean": last["mask_mean"],
                     "zero_cams": last["zero_cams"]})
    return rows


def explanation_rows(folder: Path) -> dict[str, dict]:
    path = folder / "explanations.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {Path(r["run"]).name: r for r in records if r["algorithm"] == "ALIGN"}


def main() -> None:
    frames = []
    for warmup, folder in FOLDERS.items():
        explained = explanation_rows(folder)
        for row in last_checkpoints(folder):
            metrics = explained.get(row["run"], {})
            row.update({key: metrics.get(key) for key in ("masker_iou", "foreground_mass", "insertion_auc")})
            frames.append({"masker_warmup_steps": warmup, **row})
    table = pd.DataFrame(frames).drop(columns="run").sort_values(["trial", "masker_warmup_steps"])
    table = table.astype({"masker_warmup_steps": str, "trial": str, "selected step": str})  # shown as integers
    print("Per run (last checkpoint unless marked; explanation metrics: 100 photos images, model.pkl = last):\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    paired = table.astype({"masker_warmup_steps": int, "trial": int}).pivot(index="trial",
                                                                           columns="masker_warmup_steps")
    common = paired.dropna().index
    print(f"\nPaired differences (warm-up 100 minus warm-up 0) over trials {list(common)}:\n")
    columns = ["photos acc (selected)", "photos acc (last)", "mask_mean", "masker_iou", "foreground_mass",
               "insertion_auc"]
    difference = pd.DataFrame({c: paired.loc[common, (c, 100)] - paired.loc[common, (c, 0)] for c in columns})
    summary = pd.DataFrame({"mean": difference.mean(), "standard error": difference.sem()})
    print(difference.to_markdown(floatfmt=".3f"))
    print()
    print(summary.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
