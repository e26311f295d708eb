"""Decoy-MNIST's reproduction table (issue 30): each method's accuracy beside the authors' published figures.

    python sweeps/decoy_accuracy.py SWEEP_OUTPUT_DIR [--data_dir data] [--without_weights] > decoy_accuracy.md

For every finished run holding out environment 2 alone (test_envs [2]), at the checkpoint training-domain validation
selects and at the last one: from its results.jsonl the train accuracy (the mean of the two training environments'
in-splits, the authors' train acc) and the accuracy on the randomized decoys (environment 2, their test acc); from the
run's weights (model_selected.pkl, model.pkl) the accuracy on the same test digits without their patch (patch-free
acc: how much of the digit the model learned) and, on the first 500 of them with their patch, the input gradient's
share on the patch (the explanation the authors plot: |d p_predicted / d x| summed on the 16 patch pixels over its sum
on all 784; a uniform gradient gives 16/784 = 0.0204). Mean ± standard error over trials (pandas), with the figures
of dtak/rrr's notebook beside. Needs DomainBed importable (DOMAINBED_ROOT on PYTHONPATH) only to read the checkpoints
it pickled.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from domainbed_align.data import decoy_mnist
from domainbed_align.methods.checkpoints import algorithm_from_checkpoint, read_checkpoint
from domainbed_align.runs.records import readable_records
from domainbed_align.runs.validation import selected_record

# dtak/rrr, experiments/Decoy MNIST.ipynb at 3c932ed (its camera-ready commit; the same at 46e1a88), cells 6-8. The
# earlier 29dfa45 printed 0.9958 / 0.5520, 0.9847 / 0.9604 and 0.9578 for the same cells.
PUBLISHED = {
    "plain (TimmERM's place)": {"train acc": 0.9969, "randomized acc": 0.5155, "clean-trained test acc": None},
    "RRR, l2_grads 1000": {"train acc": 0.9820, "randomized acc": 0.9607, "clean-trained test acc": None},
    "plain, trained and tested on clean MNIST (the ceiling)": {"train acc": 0.9922, "randomized acc": None,
                                                                "clean-trained test acc": 0.9611},
}
GRADIENT_IMAGES = 500  # the first 500 test digits, as evaluate's explanation metrics
MEASURES = ["train acc", "randomized acc", "patch-free acc", "gradient share on patch"]


def randomized_environment(dataset: str, data_dir: str, cache: dict[str, Any]) -> Any:
    """The randomized-decoy environment of ``dataset`` (DecoyMNIST or DecoyMNISTFull), built once per dataset."""
    if dataset not in cache:
        cache[dataset] = getattr(decoy_mnist, dataset)(data_dir, [2], {}).datasets[2]
    return cache[dataset]


def model_measures(model_pkl: Path, environment: Any) -> dict[str, float]:
    """Patch-free accuracy on ``environment``'s digits and the input gradient's share on the patch."""
    algorithm = algorithm_from_checkpoint(read_checkpoint(model_pkl, "cpu"), "cpu")  # in eval mode
    labels = torch.from_numpy(environment.labels)
    clean = environment.clean.float().unsqueeze(1) / 255.0
    with torch.no_grad():
        predicted = torch.cat([algorithm.predict(chunk).argmax(1) for chunk in clean.split(500)])
    images = environment.images[:GRADIENT_IMAGES].float().unsqueeze(1).div(255.0).requires_grad_(True)
    probabilities = algorithm.predict(images).softmax(dim=1)
    (gradient,) = torch.autograd.grad(probabilities.max(dim=1).values.sum(), images)
    magnitude = gradient.abs().flatten(1)
    on_patch = (magnitude * environment.patches[:GRADIENT_IMAGES].flatten(1)).sum(dim=1)
    share = on_patch / magnitude.sum(dim=1).clamp_min(1e-30)
    return {"patch-free acc": float((predicted == labels).float().mean()),
            "gradient share on patch": float(share.mean())}


def rows(sweep: Path, data_dir: str, without_weights: bool = False) -> list[dict]:
    """One row per finished run and selection rule; with ``without_weights``, only the records' accuracies. A missing
    weight file is an error otherwise (checked before any is read): a mean over the runs that kept theirs would be
    labelled with every trial."""
    runs = []
    for run in sorted(p for p in sweep.iterdir() if (p / "done").is_file()):
        records = readable_records(run)
        if list(records[-1]["args"]["test_envs"]) == [2]:  # not leave-one-domain-out's pairs (one training env)
            runs.append((run, records))
    weights = {"training-domain validation": "model_selected.pkl", "last checkpoint": "model.pkl"}
    missing = [run / name for run, _ in runs for name in weights.values() if not (run / name).is_file()]
    if missing and not without_weights:
        sys.exit(f"error: {missing[0]} is missing ({len(missing)} weight files in all): the patch-free accuracy and "
                 f"the gradient share need every run's weights (retrain: rerun the sweep's command), or pass "
                 f"--without_weights for the records' accuracies alone")
    environments: dict[str, Any] = {}
    found = []
    for run, records in runs:
        args, hparams = records[-1]["args"], records[-1]["hparams"]
        selected = {"training-domain validation": selected_record(records), "last checkpoint": records[-1]}
        for rule, record in selected.items():
            measured = {}
            if not without_weights:
                environment = randomized_environment(args["dataset"], data_dir, environments)
                measured = model_measures(run / weights[rule], environment)
            found.append({"algorithm": args["algorithm"], "backbone": hparams["backbone"], "dataset": args["dataset"],
                          "selection": rule, "trial": args["trial_seed"], "step": record["step"],
                          "train acc": (record["env0_in_acc"] + record["env1_in_acc"]) / 2,
                          "randomized acc": record["env2_in_acc"], **measured})
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="the sweep's output folder (run folders with their model files)")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--without_weights", action="store_true",
                   help="the train and randomized accuracies from the records alone, for a sweep without its weights")
    options = p.parse_args()
    if not options.sweep.is_dir():
        sys.exit(f"error: {options.sweep} is not a folder: give the sweep's output folder (its run folders)")
    table = pd.DataFrame(rows(options.sweep, options.data_dir, options.without_weights))
    if table.empty:
        sys.exit(f"no finished run with test_envs [2] under {options.sweep}")
    measures = [m for m in MEASURES if m in table]
    grouped = table.groupby(["algorithm", "backbone", "dataset", "selection"])[measures]
    summary = grouped.mean().map(lambda v: f"{v:.4f}") + " ± " + grouped.sem().map(lambda v: f"{v:.4f}")
    summary.insert(0, "trials", grouped.size())
    print(f"Ours (mean ± standard error over trials; {options.sweep.name}). Gradient share on patch: uniform "
          f"16/784 = {16 / 784:.4f}.\n")
    print(summary.reset_index().to_markdown(index=False))
    published = pd.DataFrame(PUBLISHED).T.rename_axis("model (MLP 50-30, 60,000 training digits)").reset_index()
    published = published.astype(object).where(published.notna(), None)  # tabulate writes None, not NaN, as "-"
    print("\nPublished (dtak/rrr, experiments/Decoy MNIST.ipynb at 3c932ed, cells 6-8; the ceiling is a different "
          "model, trained on MNIST without patches):\n")
    print(published.to_markdown(index=False, floatfmt=".4f", missingval="-"))
    print("\nPer run:\n")
    print(table.sort_values(["algorithm", "selection", "trial"]).to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
