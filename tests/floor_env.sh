#!/usr/bin/env bash
# The floor environment: every dependency at exactly the floor the package declares, on the oldest Python we
# support when this machine has it, and the numerical tests run there. CI runs it after the README's test command.
#   bash tests/floor_env.sh            (builds .venv-floor, reading the floors from .venv's installed metadata)
# Fails when a test fails, or when a test is skipped for a reason other than CUDA or DomainBed.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOR_VENV=${FLOOR_VENV:-.venv-floor}
MAIN_PYTHON=${MAIN_PYTHON:-.venv/bin/python}
OLDEST=3.10  # setup.py's python_requires
TESTS=(tests/test_floors.py tests/test_precision.py tests/test_gradcam.py tests/test_losses.py tests/test_explain.py
       tests/test_algorithms.py tests/test_baselines.py tests/test_res_care.py tests/test_checkpoints.py
       tests/test_reference_equivalence.py)

oldest_python() {
  local found
  found=$(command -v "python$OLDEST" 2>/dev/null || true)
  if [ -n "$found" ] && "$found" -c pass 2>/dev/null; then echo "$found"; return; fi
  # pyenv keeps versions it does not put on PATH
  for found in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$OLDEST".*/bin/python"$OLDEST"; do
    if [ -x "$found" ]; then echo "$found"; return; fi
  done
  echo "warning: no python$OLDEST on this machine: the floor environment uses python3" >&2
  command -v python3
}

# The floors, read back from the installed package's metadata (what pip users get), pinned exactly.
"$MAIN_PYTHON" - > .floors.txt <<'PY'
from importlib import metadata
for requirement in metadata.requires("domainbed-align"):
    spec, _, marker = requirement.partition(";")
    if not marker or ('extra == "slurm"' in marker or 'extra == "report"' in marker):  # the floored extras too
        name, _, floor = spec.partition(">=")
        assert floor, f"{requirement!r} declares no floor"
        print(f"{name.strip()}=={floor.strip()}")
PY
python_bin=$(oldest_python)
echo "== floor environment: $("$python_bin" --version) in $FLOOR_VENV; floors: $(tr '\n' ' ' < .floors.txt)" >&2
rm -rf "$FLOOR_VENV"
"$python_bin" -m venv "$FLOOR_VENV"
pip=("$FLOOR_VENV/bin/python" -m pip install --disable-pip-version-check -q)
# the test tools at whatever release suits the floors; the floors themselves pinned
"${pip[@]}" -r .floors.txt pytest grad-cam captum parameterized 2>&1 | grep -v "is ignored" >&2 || true
"${pip[@]}" --no-deps . 2>&1 | grep -v "is ignored" >&2 || true
"$FLOOR_VENV/bin/python" - .floors.txt <<'PY'
import sys
from importlib import metadata
wanted = dict(line.strip().split("==") for line in open(sys.argv[1]) if line.strip())
found = {name: metadata.version(name) for name in wanted}
print("== floor environment versions: " + ", ".join(f"{name} {version}" for name, version in found.items()),
      file=sys.stderr)
wrong = {name: found[name] for name in wanted if found[name].split("+")[0] != wanted[name]}
sys.exit(f"error: the floor environment did not install the floors: {wrong} (wanted {wanted})" if wrong else 0)
PY
report=$(mktemp)
status=0
HF_HUB_OFFLINE=1 DOMAINBED_ALIGN_FLOOR_ENV=1 "$FLOOR_VENV/bin/python" -m pytest -q -p no:cacheprovider -rs \
  "${TESTS[@]}" 2>&1 | tee "$report" || status=$?
rm -f .floors.txt
# skips are allowed for CUDA (no GPU here) and DomainBed (not installed) only
other_skips=$(grep '^SKIPPED' "$report" | grep -v -i -E 'cuda|domainbed' || true)
rm -f "$report"
if [ -n "$other_skips" ]; then
  echo "error: the floor environment skipped tests for other reasons:" >&2; echo "$other_skips" >&2; exit 1
fi
exit "$status"
