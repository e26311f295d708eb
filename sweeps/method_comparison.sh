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

copy_finished() {  # finished runs only: a run still training has a partial results.jsonl
  for run in "$out"/*/; do
    [ -f "$run/done" ] || continue
    kept="$results/runs/$(basename "$run")"
    mkdir -p "$kept"
    [ -f "$kept/results.jsonl" ] || cp "$run/results.jsonl" "$kept/results.jsonl"
    if [ ! -f "$kept/explanations.jsonl" ] && [ -f "$run/model_selected.pkl" ]; then
      "$python" -m domainbed_align.evaluate --model "$run/model_selected.pkl" --max_images "${MAX_IMAGES:-200}" \
        > "$kept/explanations.jsonl.partial" && mv "$kept/explanations.jsonl.partial" "$kept/explanations.jsonl"
    fi
  done
}

stop="$out/.stop_copier"  # asks the copier to stop between runs (killing it could orphan a half-written evaluation)
copier_loop() {
  while [ ! -f "$stop" ]; do
    copy_finished 2>/dev/null || true
    for _ in $(seq 120); do [ -f "$stop" ] && break; sleep 1; done
  done
}
mkdir -p "$out"; rm -f "$stop"
copier_loop &
copier=$!
trap 'touch "$stop"' EXIT

"$python" -m domainbed_align.demo --dataset "$dataset" --algorithms all --n_trials 3 --output_dir "$out" \
  --skip_explanations "$@"
touch "$stop"; wait $copier || true; rm -f "$stop"
copy_finished
cat "$results"/runs/*/explanations.jsonl > "$results/explanations.jsonl"
"$python" -m domainbed_align.tables --input_dir "$results/runs" --explanations "$results/explanations.jsonl" \
  --output "$results/tables.md"
"$python" -m domainbed_align.figures curves --input_dir "$results/runs" --out "$results/curves.png"
"$python" -m domainbed_align.figures maps --input_dir "$out" --envs all --images 6 --out "$results/maps.png"
echo "== tables: $results/tables.md; figures: $results/curves.png, $results/maps.png"
