#!/usr/bin/env bash
# DomainBed's usual protocol for TimmERM, DRE and ALIGN: every single test environment, 20 hparam draws, 3 trials.
# Usage: bash sweeps/domainbed_protocol.sh DATA_DIR OUTPUT_DIR [DATASETS...]   (default: VLCS TerraIncognita)
set -euo pipefail
data_dir=${1:?DATA_DIR}; output_dir=${2:?OUTPUT_DIR}; shift 2
datasets=("${@:-VLCS TerraIncognita}")
python -m domainbed_align.doctor
python -m domainbed.scripts.sweep launch --algorithms TimmERM DRE ALIGN --datasets ${datasets[@]} \
  --data_dir "$data_dir" --output_dir "$output_dir" --command_launcher local \
  --n_hparams 20 --n_trials 3 --single_test_envs --skip_confirmation
python -m domainbed.scripts.collect_results --input_dir "$output_dir"
# What collect_results lacks: the explanation metrics of the runs with DomainBed's default hparams (hparams_seed 0),
# on their test environments, saved next to the sweep folder and tabulated.
records="${output_dir%/}.explanations.jsonl"
python -m domainbed_align.evaluate --input_dir "$output_dir" --hparams_seed 0 > "$records"
python -m domainbed_align.evaluate --records "$records"
