# Sourced by the sweep scripts (method_comparison.sh, single_source_comparison.sh, decoy_mnist.sh): each finished
# run's files are copied to RESULTS/runs/<run>/ as it ends, so a session killed mid-sweep loses no finished run.

# write_to FILE COMMAND...: COMMAND's output to FILE only when COMMAND succeeds (a killed step leaves no empty or
# partial FILE, only FILE.partial).
write_to() {
  local target=$1
  shift
  "$@" > "$target.partial" && mv "$target.partial" "$target"
}

# copy_finished OUT RESULTS FILE...: the FILEs (those present) of every finished run under OUT not yet copied; finished
# runs only, since a run still training has a partial results.jsonl.
copy_finished() {
  local out=$1 results=$2 run kept file
  shift 2
  for run in "$out"/*/; do
    [ -f "$run/done" ] || continue
    kept="$results/runs/$(basename "$run")"
    mkdir -p "$kept"
    for file in "$@"; do
      [ -f "$kept/$file" ] || [ ! -f "$run/$file" ] || cp "$run/$file" "$kept/$file"
    done
  done
}

# start_copier OUT RESULTS COMMAND...: runs COMMAND (e.g. copy_finished OUT RESULTS results.jsonl) every 30 s in the
# background until stop_copier OUT or the script's exit, which ask it to stop between two rounds (killing it could
# orphan a half-written file).
start_copier() {
  local stop="$1/.stop_copier"
  shift 2
  mkdir -p "$(dirname "$stop")"
  rm -f "$stop"
  (
    while [ ! -f "$stop" ]; do
      "$@" 2>/dev/null || true
      for _ in $(seq 30); do [ -f "$stop" ] && break; sleep 1; done
    done
  ) &
  COPIER_PID=$!
  trap "touch '$stop'" EXIT
}

# stop_copier OUT: asks the copier to stop and waits for its round to end.
stop_copier() {
  touch "$1/.stop_copier"
  wait "$COPIER_PID" || true
  rm -f "$1/.stop_copier"
}
