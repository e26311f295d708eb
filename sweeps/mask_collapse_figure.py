"""Issue 29's figure: how ALIGN's mask collapses, step by step, from traced runs (``DOMAINBED_ALIGN_TRACE_STEPS=1``).

    python sweeps/mask_collapse_figure.py RESULTS_DIR/runs --out RESULTS_DIR/collapse.png [--summary summary.md]

One line per run (its trial and training domain in the legend; a run whose err.txt holds the empty-mask warning is
drawn solid, the others dashed), from the masker's first step: the mask's mean (log scale, with the 2 % the monitor
calls empty), the norm of each weighted masker term's gradient (fidelity against sparsity), the classifier's mean
true-class probability on x*M and on x*(1-M), and the training cross-entropy. Rolling means over 10 steps. With
--summary, a table per run and masker phase (pandas): the means of those quantities over each 50-step stretch.
Needs pandas, matplotlib and tabulate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import pandas as pd

from domainbed_align.annotations import EMPTY_MASK
from domainbed_align.runs.records import json_lines, readable_records

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

TRACE = "steps.jsonl"
WARNING = "kept under"  # the monitor's empty-mask message (methods.monitor: "the masker's mask kept under 2% ...")
STRETCH = 50


def traced_runs(runs: Path) -> dict[str, pd.DataFrame]:
    """Each run folder's trace from the masker's first step, labelled 'trial t, trained on E' (+ 'warned')."""
    found = {}
    for trace in sorted(runs.glob(f"*/{TRACE}")):
        rows = [record for _, _, record, error in json_lines(trace) if error is None]
        frame = pd.DataFrame(rows).set_index("step")
        frame = frame[frame["in_warmup"] == 0.0]
        args = readable_records(trace.parent)[-1]["args"]
        source = [e for e in range(4) if e not in args["test_envs"]]
        err = trace.parent / "err.txt"
        warned = err.is_file() and WARNING in err.read_text(errors="replace")
        label = f"trial {args['trial_seed']}, trained on env {source[0] if len(source) == 1 else source}"
        found[label + (" (warned)" if warned else "")] = frame
    return found


def figure(runs: dict[str, pd.DataFrame], out: Path) -> None:
    panels = [("mask_mean", "mask mean (log)", True), ("grad_norms", "masker term gradient norm (log)", True),
              ("probs", "classifier p_y on the masked images", False), ("ce", "training cross-entropy", False)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, frame), colour in zip(runs.items(), colours):
        style = "-" if "warned" in label else "--"
        smooth = frame.rolling(10, min_periods=1).mean()
        axes[0, 0].plot(smooth.index, smooth["mask_mean"], style, color=colour, label=label)
        axes[0, 1].plot(smooth.index, smooth["masker_fidelity_grad_norm"], style, color=colour)
        axes[0, 1].plot(smooth.index, smooth["masker_sparsity_grad_norm"], ":", color=colour, alpha=0.6)
        axes[1, 0].plot(smooth.index, smooth["masker_prob_kept"], style, color=colour)
        axes[1, 0].plot(smooth.index, smooth["masker_prob_removed"], ":", color=colour, alpha=0.6)
        axes[1, 1].plot(smooth.index, smooth["ce"], style, color=colour)
    axes[0, 0].axhline(EMPTY_MASK, color="black", linewidth=0.8)
    axes[0, 0].text(axes[0, 0].get_xlim()[0], EMPTY_MASK * 1.1, " empty (monitor)", fontsize=8)
    axes[0, 1].text(0.02, 0.03, "solid/dashed: fidelity; dotted: lambda_sparsity * sparsity",
                    transform=axes[0, 1].transAxes, fontsize=8)
    axes[1, 0].text(0.02, 0.9, "solid/dashed: p_y(x*M); dotted: p_y(x*(1-M))", transform=axes[1, 0].transAxes,
                    fontsize=8)
    for ax, (_, title, log) in zip(axes.flat, panels):
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step (from the masker's first step; 10-step rolling mean)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def summary(runs: dict[str, pd.DataFrame]) -> str:
    columns = ["mask_mean", "masker_fidelity_grad_norm", "masker_sparsity_grad_norm", "masker_prob_kept",
               "masker_prob_removed", "ce"]
    rows = []
    for label, frame in runs.items():
        start = frame.index.min()
        stretch = (frame.index - start) // STRETCH
        for k, part in frame.groupby(stretch):
            row = {"run": label, "steps": f"{part.index.min()}-{part.index.max()}", **part[columns].mean()}
            row["fidelity / sparsity"] = row["masker_fidelity_grad_norm"] / row["masker_sparsity_grad_norm"]
            rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, help="a folder of run folders holding steps.jsonl")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--summary", type=Path, help="also write the per-stretch table here")
    options = p.parse_args()
    runs = traced_runs(options.runs)
    if not runs:
        raise SystemExit(f"no {TRACE} under {options.runs}: trace runs with DOMAINBED_ALIGN_TRACE_STEPS=1")
    figure(runs, options.out)
    if options.summary:
        options.summary.write_text(summary(runs) + "\n")


if __name__ == "__main__":
    main()
