"""Decoy-MNIST's reproduction table (issue 30): each method's accuracy beside the authors' published figures.

    python sweeps/decoy_accuracy.py SWEEP_OUTPUT_DIR [--data_dir data] > decoy_accuracy.md

For every finished run holding out environment 2 alone (test_envs [2]), from its results.jsonl at the checkpoint
training-domain validation selects and at the last one: train accuracy (the mean of the two training environments'
in-splits, what the authors call train acc), accuracy on the randomized decoys (environment 2, their test acc), and
from the run's weights (model_selected.pkl, model.pkl) the accuracy on the same 2,000 test digits without any patch
(their "plain, on clean MNIST"). Mean ± standard error over trials (pandas), with the figures of dtak/rrr's notebook
(`experiments/Decoy MNIST.ipynb`, cells 6-8: MLP 50-30, 64 epochs on all 60,000 digits) beside. Needs DomainBed
importable (DOMAINBED_ROOT on PYTHONPATH) only to read checkpoints it pickled.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from domainbed_align.data import DecoyMNIST
from domainbed_align.methods.checkpoints import algorithm_from_checkpoint, read_checkpoint
from domainbed_align.runs.records import readable_records
from domainbed_align.runs.validation import selected_record

# dtak/rrr, experiments/Decoy MNIST.ipynb at 29dfa45 (cells 6-8), as the issue quotes them
PUBLISHED = {"plain (TimmERM's place)": {"train acc": 0.9969, "randomized acc": 0.5155, "clean acc": 0.9611},
             "RRR, l2_grads 1000": {"train acc": 0.9820, "randomized acc": 0.9607, "clean acc": None}}
PUBLISHED_AS = {"TimmERM": "plain (TimmERM's place)", "RRR": "RRR, l2_grads 1000"}


def clean_accuracy(model_pkl: Path, environment: Any) -> float:
    """Accuracy of the model in ``model_pkl`` on ``environment``'s digits without their patches."""
    checkpoint = read_checkpoint(model_pkl, "cpu")
    algorithm = algorithm_from_checkpoint(checkpoint, "cpu")
    images = environment.clean.float().unsqueeze(1) / 255.0
    labels = torch.from_numpy(environment.labels)
    with torch.no_grad():
        predicted = torch.cat([algorithm.predict(chunk).argmax(1) for chunk in images.split(500)])
    return float((predicted == labels).float().mean())


def rows(sweep: Path, data_dir: str) -> list[dict]:
    randomized = DecoyMNIST(data_dir, [2], {}).datasets[2]  # built once: the same digits for every run
    found = []
    for run in sorted(p for p in sweep.iterdir() if (p / "done").is_file()):
        records = readable_records(run)
        args = records[-1]["args"]
        if list(args["test_envs"]) != [2]:
            continue  # leave-one-domain-out's pair runs train on one environment: not the reproduction
        for rule, record, weights in (("training-domain validation", selected_record(records), "model_selected.pkl"),
                                      ("last checkpoint", records[-1], "model.pkl")):
            found.append({"algorithm": args["algorithm"], "selection": rule, "trial": args["trial_seed"],
                          "step": record["step"],
                          "train acc": (record["env0_in_acc"] + record["env1_in_acc"]) / 2,
                          "randomized acc": record["env2_in_acc"],
                          "clean acc": (clean_accuracy(run / weights, randomized) if (run / weights).is_file()
                                        else None)})
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="the sweep's output folder (run folders with their model files)")
    p.add_argument("--data_dir", default="data")
    options = p.parse_args()
    table = pd.DataFrame(rows(options.sweep, options.data_dir))
    if table.empty:
        sys.exit(f"no finished run with test_envs [2] under {options.sweep}")
    measures = ["train acc", "randomized acc", "clean acc"]
    grouped = table.groupby(["algorithm", "selection"])[measures]
    summary = grouped.mean().map(lambda v: f"{v:.4f}") + " ± " + grouped.sem().map(lambda v: f"{v:.4f}")
    summary.insert(0, "trials", grouped.size())
    print(f"Ours (mean ± standard error over trials; {options.sweep.name}):\n")
    print(summary.reset_index().to_markdown(index=False))
    published = pd.DataFrame(PUBLISHED).T.rename_axis("model").reset_index()
    print("\nPublished (dtak/rrr, experiments/Decoy MNIST.ipynb, cells 6-8; MLP 50-30, all 60,000 training digits):\n")
    print(published.to_markdown(index=False, floatfmt=".4f", missingval="-"))
    print("\nPer run:\n")
    print(table.sort_values(["algorithm", "selection", "trial"]).to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
