#!/usr/bin/env bash
# The single-source protocol at the demo's CPU-sized settings: each run trains on one domain of a TextureMNIST-family
# dataset and tests on every other (our `sweep launch --protocol single_source`, upstream's own jobs), three trials,
# 500 steps, batch 8, DomainBed's default hparams, two runs at a time with one thread each (`parallel` launcher).
#
#   DOMAINBED_ROOT=<DomainBed at b93c22a> bash sweeps/single_source_comparison.sh DATASET RESULTS_DIR \
#       [--algorithms TimmERM DRE ALIGN] [--n_trials 3] [--source_envs 1 ...] [--hparams '{"sparsity_floor": 0.05}']
#
# --source_envs: only the runs trained on these environments; --hparams: a JSON object merged into the settings
# below (same keys: yours win). Runs are named by their arguments, so the same settings give the same runs.
#
# Run from the repository root (train.py records --data_dir and --output_dir, so they stay relative). Resumable:
# rerun the same command; our delete_incomplete removes dead runs (never live ones) and launch trains the rest.
# Each finished run's results.jsonl is copied to RESULTS_DIR/runs/<run>/ as it ends (commit runs/ as it fills);
# model files stay in sweeps/out/. At the end: RESULTS_DIR/tables.md (the single-source matrix and the per-domain
# in-distribution table: last checkpoint, oracle as an extra column) and curves.png.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash sweeps/single_source_comparison.sh DATASET RESULTS_DIR [--algorithms A B ...] [--n_trials N]" >&2
  exit 2
fi
dataset=$1 results=$2
shift 2
algorithms=(TimmERM DRE ALIGN) n_trials=3 source_envs=() extra_hparams='{}'
while [ $# -gt 0 ]; do
  case "$1" in
    --algorithms) shift; algorithms=(); while [ $# -gt 0 ] && [[ $1 != --* ]]; do algorithms+=("$1"); shift; done ;;
    --source_envs) shift; while [ $# -gt 0 ] && [[ $1 != --* ]]; do source_envs+=("$1"); shift; done ;;
    --n_trials) n_trials=$2; shift 2 ;;
    --hparams) extra_hparams=$2; shift 2 ;;
    *) echo "error: unknown option $1 (known: --algorithms, --n_trials, --source_envs, --hparams)" >&2; exit 2 ;;
  esac
done
[ -n "${DOMAINBED_ROOT:-}" ] || { echo "error: set DOMAINBED_ROOT to DomainBed at b93c22a" >&2; exit 2; }
python=${PYTHON:-python}
data=${DATA_DIR:-data}
out="sweeps/out/$(basename "$results")_500steps_${n_trials}trials"
mkdir -p "$results/runs" "$out"
export PYTHONPATH="$DOMAINBED_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export DOMAINBED_ALIGN_JOBS=${DOMAINBED_ALIGN_JOBS:-2} DOMAINBED_ALIGN_THREADS_PER_JOB=${DOMAINBED_ALIGN_THREADS_PER_JOB:-1}
# The settings as one JSON object; the key order of the default settings is kept (it is part of the run's name).
hparams=$("$python" -c 'import json, sys; print(json.dumps({**json.loads(sys.argv[1]), **json.loads(sys.argv[2])}))' \
  '{"batch_size": 8, "warmup_steps": 250, "masker_warmup_steps": 100}' "$extra_hparams") \
  || { echo "error: --hparams must be a JSON object, got: $extra_hparams" >&2; exit 2; }
sweep=("$python" -m domainbed_align.sweep)  # then the command, then its options (--source_envs takes a list)
options=(--datasets "$dataset" --algorithms "${algorithms[@]}" --data_dir "$data"
       --output_dir "$out" --protocol single_source --n_hparams 1 --n_trials "$n_trials" --steps 500
       --hparams "$hparams" ${source_envs[@]:+--source_envs "${source_envs[@]}"})

"$python" -m domainbed_align.data prepare --data_dir "$data"
source "$(dirname "$0")/copy_runs.sh"
start_copier "$out" "$results" copy_finished "$out" "$results" results.jsonl
"${sweep[@]}" delete_incomplete "${options[@]}" --skip_confirmation
status=0
"${sweep[@]}" launch "${options[@]}" --command_launcher parallel --skip_confirmation --poll_seconds 30 || status=$?
copy_finished "$out" "$results" results.jsonl
"$python" -m domainbed_align.tables --input_dir "$results/runs" --layout single_source in_domain \
  --output "$results/tables.md"
"$python" -m domainbed_align.figures curves --input_dir "$results/runs" --out "$results/curves.png"
echo "== tables: $results/tables.md; figures: $results/curves.png"
exit $status
