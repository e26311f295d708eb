#!/usr/bin/env bash
# The GPU check (issue 25) as one command for the device machine: a bare CUDA image without network.
#
#   on the CPU machine, after the last edit:  python -m domainbed_align.gpu_check carry --domainbed_git PATH
#   on the GPU machine, from the repository root, carrying [".gpu_carry"]:
#       bash sweeps/gpu_check.sh [--deadline SECONDS] [OUT_DIR]         (OUT_DIR defaults to $OUT)
#   anywhere, on a CPU, in a few minutes:   bash sweeps/gpu_check.sh --dry-run [--deadline SECONDS] OUT_DIR
#
# Set-up (GPU run only): the carried wheels are installed with --force-reinstall (a warm machine otherwise keeps an
# earlier wheel of the same version) and DomainBed is unpacked into a scratch folder that DOMAINBED_ROOT points at.
# Then `python -m domainbed_align.gpu_check run` goes through the stages within the deadline (default 480 s in all,
# set-up included; dry run 420 s): see that module's docstring for the stages and the (at most 8) output files.
set -u
cd "$(dirname "$0")/.."
started=$(date +%s)
python=${PYTHON:-python3}
dry_run=()
deadline=()
out=${OUT:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=(--dry-run); shift ;;
    --deadline) deadline=(--deadline "${2:?--deadline needs a number of seconds}"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $1 (see: bash sweeps/gpu_check.sh --help)" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
if [ -z "$out" ]; then
  echo "error: no output folder: set OUT or pass one (bash sweeps/gpu_check.sh OUT_DIR)" >&2
  exit 2
fi
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
mkdir -p "$work/logs"
setup_rc=0
if [ ${#dry_run[@]} -eq 0 ]; then
  carry=.gpu_carry
  (
    set -x
    test -f "$carry/MANIFEST.json" || {
      echo "no $carry/MANIFEST.json: run 'python -m domainbed_align.gpu_check carry' on the CPU machine and carry" \
           "[\"$carry\"] with this command"
      exit 3
    }
    cat "$carry/MANIFEST.json"
    # --no-index: nothing is downloaded; --no-deps: the image has every other dependency
    "$python" -m pip install --disable-pip-version-check --no-index --no-deps --force-reinstall "$carry"/wheels/*.whl
    tar -xzf "$carry"/domainbed-*.tar.gz -C "$work"
  ) > "$work/logs/setup.log" 2>&1
  setup_rc=$?
  export DOMAINBED_ROOT="$work/DomainBed"
  echo "[gpu_check] set-up: exit code $setup_rc in $(( $(date +%s) - started ))s (log: setup.log in logs.tar.gz)"
fi
exec "$python" -m domainbed_align.gpu_check run --out "$out" --work "$work" --started_at "$started" \
  --setup_log "$work/logs/setup.log" --setup_rc "$setup_rc" "${dry_run[@]}" "${deadline[@]}"
