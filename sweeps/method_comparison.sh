#!/usr/bin/env bash
# Every registered method (or --algorithms ...), three trials, one held-out domain of a TextureMNIST-family
# dataset, at the demo's CPU-sized settings (500 steps, batch 8 per domain, two runs at a time with one thread
# each), through upstream's own sweep jobs; then the explanation metrics of each run's selected checkpoint and every table.
#
#   DOMAINBED_ROOT=<DomainBed at b93c22a> bash sweeps/method_comparison.sh DATASET RESULTS_DIR [demo options]
#
# Run from the repository root (train.py records --data_dir and --output_dir, so they stay relative). Resumable:
# rerun the same command; finished runs are kept, a half-done one is redone. While it trains, each finished run's
# results.jsonl is copied to RESULTS_DIR/runs/<run>/ with the explanation metrics of its selected checkpoint
# (`evaluate` on model_selected.pkl, MAX_IMAGES held-out images, default 200: runs/<run>/explanations.jsonl), so
# committing runs/ as it fills loses nothing if the machine goes (model files stay in sweeps/out/). At the end:
# RESULTS_DIR/explanations.jsonl (every run's), tables.md and the figures curves.png (every run) and maps.png (trial
# 0's runs, every environment; it needs the model files).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash sweeps/method_comparison.sh DATASET RESULTS_DIR [demo options, e.g. --test_envs 2]" >&2
  exit 2
fi
dataset=$1 results=$2
shift 2
python=${PYTHON:-python}
out="sweeps/out/$(basename "$results")_500steps_3trials"  # a folder per results folder
mkdir -p "$results/runs"

source "$(dirname "$0")/copy_runs.sh"
copy_and_evaluate() {  # results.jsonl, then the explanation metrics of the run's selected checkpoint
  copy_finished "$out" "$results" results.jsonl
  for run in "$out"/*/; do
    kept="$results/runs/$(basename "$run")"
    if [ -f "$run/done" ] && [ ! -f "$kept/explanations.jsonl" ] && [ -f "$run/model_selected.pkl" ]; then
      "$python" -m domainbed_align.evaluate --model "$run/model_selected.pkl" --max_images "${MAX_IMAGES:-200}" \
        > "$kept/explanations.jsonl.partial" && mv "$kept/explanations.jsonl.partial" "$kept/explanations.jsonl"
    fi
  done
}
start_copier "$out" "$results" copy_and_evaluate

"$python" -m domainbed_align.demo --dataset "$dataset" --algorithms all --n_trials 3 --output_dir "$out" \
  --skip_explanations "$@"
stop_copier "$out"
copy_and_evaluate
cat "$results"/runs/*/explanations.jsonl > "$results/explanations.jsonl"
"$python" -m domainbed_align.tables --input_dir "$results/runs" --explanations "$results/explanations.jsonl" \
  --output "$results/tables.md"
"$python" -m domainbed_align.figures curves --input_dir "$results/runs" --out "$results/curves.png"
"$python" -m domainbed_align.figures maps --input_dir "$out" --envs all --images 6 --out "$results/maps.png"
echo "== tables: $results/tables.md; figures: $results/curves.png, $results/maps.png"
