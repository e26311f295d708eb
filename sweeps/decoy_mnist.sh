#!/usr/bin/env bash
# Decoy-MNIST (issue 30) at CPU size: our sweep on DecoyMNIST (2,000 digits per environment), every run holding out
# the randomized-decoy environment 2 (--held_out_envs 2: no run trains on it), three trials, 500 steps, batch 16 per
# training environment, DomainBed's default hparams otherwise (RRR's lambda: the reference's 1000 translated to
# pixel/255 inputs, 1000/255^2; ALIGN's warm-ups: half the run, then a fifth), one torch thread per run.
#
#   DOMAINBED_ROOT=<DomainBed at b93c22a> bash sweeps/decoy_mnist.sh RESULTS_DIR [--algorithms TimmERM RRR ...] \
#       [--n_trials 3] [--hparams JSON] [--pairs] [--dataset DecoyMNISTFull] [--steps N]
#
# --pairs adds the runs leave-one-domain-out selection needs (test_envs [0, 2] and [1, 2]: three times the runs);
# --hparams is merged into the settings above; --dataset DecoyMNISTFull takes the reference's sizes (60,000
# training digits); --steps replaces 500. With --hparams '{"backbone": "rrr_mlp", ...}' (dtak/rrr's perceptron, no
# Grad-CAM) the Grad-CAM explanations are skipped: decoy_accuracy.md reports the input gradient instead. Run from
# the repository root; resumable (rerun the same command: our delete_incomplete removes dead runs, never live ones,
# and launch trains the rest). Each finished run's results.jsonl is copied to RESULTS_DIR/runs/<run>/ as it ends;
# model files stay in sweeps/out/ (explanations and decoy_accuracy.md read them: keep them until the end). At the end:
# RESULTS_DIR/tables.md (test environment 2: training-domain validation, oracle, and leave-one-domain-out with
# --pairs), explanations.jsonl/.md (evaluate of each run's selected checkpoint on 500 randomized images: Grad-CAM
# mass on the patch, ALIGN's mask) and decoy_accuracy.md (sweeps/decoy_accuracy.py: the authors' figures beside).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash sweeps/decoy_mnist.sh RESULTS_DIR [--algorithms A B ...] [--n_trials N] [--hparams JSON] [--pairs]" >&2
  exit 2
fi
results=$1
shift
algorithms=(TimmERM RRR) n_trials=3 extra_hparams='{}' pairs=0 dataset=DecoyMNIST steps=500
while [ $# -gt 0 ]; do
  case "$1" in
    --algorithms) shift; algorithms=(); while [ $# -gt 0 ] && [[ $1 != --* ]]; do algorithms+=("$1"); shift; done ;;
    --n_trials) n_trials=$2; shift 2 ;;
    --hparams) extra_hparams=$2; shift 2 ;;
    --pairs) pairs=1; shift ;;
    --dataset) dataset=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "error: unknown option $1 (known: --algorithms, --n_trials, --hparams, --pairs, --dataset, --steps)" >&2
       exit 2 ;;
  esac
done
[ -n "${DOMAINBED_ROOT:-}" ] || { echo "error: set DOMAINBED_ROOT to DomainBed at b93c22a" >&2; exit 2; }
python=${PYTHON:-python}
data=${DATA_DIR:-data}
out="sweeps/out/$(basename "$results")_decoy_${n_trials}trials"
mkdir -p "$results/runs" "$out"
export PYTHONPATH="$DOMAINBED_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export DOMAINBED_ALIGN_JOBS=${DOMAINBED_ALIGN_JOBS:-2} DOMAINBED_ALIGN_THREADS_PER_JOB=${DOMAINBED_ALIGN_THREADS_PER_JOB:-1}
merge='import json, sys; print(json.dumps({k: v for a in sys.argv[1:] for k, v in json.loads(a).items()}))'
hparams=$("$python" -c "$merge" '{"batch_size": 16}' "$extra_hparams") \
  || { echo "error: --hparams must be a JSON object, got: $extra_hparams" >&2; exit 2; }
# ALIGN's default warm-ups (1000 + 100 updates, for 5000-step runs) would cover the whole run: it gets half the run,
# then a fifth (250 + 100 at 500 steps, as this project's other 500-step sweeps), in its own launch, so that the other
# methods' settings, hence their run folders, stay those above (they read no warm-up). --hparams still wins.
align_hparams=$("$python" -c "$merge" "$hparams" \
  "{\"warmup_steps\": $((steps / 2)), \"masker_warmup_steps\": $((steps / 5))}" "$extra_hparams")
sweep=("$python" -m domainbed_align.sweep)  # then the command, then its options (--held_out_envs takes a list)
case "$dataset" in
  DecoyMNIST|DecoyMNISTFull) ;;
  *) echo "error: --dataset is DecoyMNIST or DecoyMNISTFull, got $dataset" >&2; exit 2 ;;
esac
others=() with_align=0
for algorithm in "${algorithms[@]}"; do
  if [ "$algorithm" = ALIGN ]; then with_align=1; else others+=("$algorithm"); fi
done
common=(--datasets "$dataset" --data_dir "$data" --output_dir "$out" --n_hparams 1 --n_trials "$n_trials"
        --steps "$steps" --held_out_envs 2)
[ "$pairs" = 1 ] || common+=(--single_test_envs)
"$python" -m domainbed_align.data prepare --data_dir "$data" --datasets "$dataset"
source "$(dirname "$0")/copy_runs.sh"
start_copier "$out" "$results" copy_finished "$out" "$results" results.jsonl err.txt
status=0
launch() {  # one launch of the sweep: its --algorithms and --hparams
  "${sweep[@]}" delete_incomplete "${common[@]}" "$@" --skip_confirmation
  "${sweep[@]}" launch "${common[@]}" "$@" --command_launcher parallel --skip_confirmation --poll_seconds 30 \
    || status=$?
}
[ ${#others[@]} = 0 ] || launch --algorithms "${others[@]}" --hparams "$hparams"
[ "$with_align" = 0 ] || launch --algorithms ALIGN --hparams "$align_hparams"
copy_finished "$out" "$results" results.jsonl err.txt
"$python" -m domainbed_align.tables --input_dir "$results/runs" --output "$results/tables.md"
if "$python" -c 'import json, sys; sys.exit(json.loads(sys.argv[1]).get("backbone") != "rrr_mlp")' "$hparams"; then
  echo "note: backbone rrr_mlp has no Grad-CAM: no explanations.*; decoy_accuracy.md has the input gradient" >&2
else
  write_to "$results/explanations.jsonl" \
    "$python" -m domainbed_align.evaluate --input_dir "$out" --checkpoint selected --max_images 500
  write_to "$results/explanations.md" "$python" -m domainbed_align.evaluate --records "$results/explanations.jsonl"
fi
write_to "$results/decoy_accuracy.md" "$python" sweeps/decoy_accuracy.py "$out"
echo "== $results: tables.md, decoy_accuracy.md (and explanations.md with a Grad-CAM backbone)"
exit $status
