"""Prints summary.md: the table of this folder's runs, read from their results.jsonl files (nothing typed by hand).

python summary.py > summary.md
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [("TimmERM", "TimmERM.jsonl"), ("ALIGN (lambda_sparsity 2.0)", "ALIGN.jsonl"),
        ("earlier TimmERM (2 threads)", "TimmERM_earlier.jsonl"),
        ("earlier ALIGN (lambda_sparsity 0.05, 2 threads)", "ALIGN_earlier_lambda_sparsity_0.05.jsonl")]
STEPS = (500, 750, 999)

print("Training-domain validation accuracy (mean of env0-2 out_acc) / test accuracy (env3 = photos, out_acc)\n")
print("| run | " + " | ".join(f"step {s} val / test" for s in STEPS) + " | mask_mean at 999 |")
print("|---" * (len(STEPS) + 2) + "|")
for label, file in RUNS:
    records = {r["step"]: r for r in map(json.loads, (HERE / file).read_text().splitlines())}
    cells = []
    for step in STEPS:
        r = records[step]
        cells.append(f"{sum(r[f'env{i}_out_acc'] for i in range(3)) / 3:.3f} / {r['env3_out_acc']:.3f}")
    mask = records[999].get("mask_mean")
    print(f"| {label} | " + " | ".join(cells) + f" | {'-' if mask is None else f'{mask:.3f}'} |")
