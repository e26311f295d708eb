#!/usr/bin/env bash
# The device check for issue 4, as one script (run by the `run` tool from the repository root, carry [".whl"]):
#   bash results/bench/gpu_check.sh            (writes into $OUT, or ./gpu_out without it)
# .whl/site (git-excluded) holds pure-Python wheels the device machine lacks: timm 1.0.31, grad-cam 1.5.7, ttach,
# pytest. Order: the CUDA-graph correctness tests first (a wrong graph makes its timing meaningless), then the
# benchmark, then one profiled run. Each step's output is kept even if a later one fails.
set -u
out="${OUT:-gpu_out}"
mkdir -p "$out"
export PYTHONPATH="$PWD/.whl/site:$PWD" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" >> "$out/gpu.txt" 2>&1
python3 -m pytest -q -p no:cacheprovider tests/test_explain.py tests/test_gradcam.py > "$out/cuda_tests.txt" 2>&1
echo "tests rc=$?" >> "$out/cuda_tests.txt"
python3 -m domainbed_align.bench --device cuda --repeats 30 > "$out/gpu.json" 2> "$out/gpu.err"
echo "bench rc=$?" >> "$out/gpu.err"
python3 -m domainbed_align.bench --device cuda --repeats 10 --profile > "$out/gpu_profile.json" 2> "$out/profile.txt"
echo "profile rc=$?" >> "$out/profile.txt"
tail -n 3 "$out/cuda_tests.txt"; cat "$out/gpu.json"
