"""A stand-in for DomainBed's train.py in the launcher tests (no DomainBed, no torch): it takes the run's lock as the
hook does for train.py, records what it was given, then ends as told.

    python -m fake_train --output_dir D [--hparams JSON] [--sleep S] [--exit_code N]
"""

import argparse
import json
import os
import sys
import time

from domainbed_align.runs import liveness

p = argparse.ArgumentParser()
p.add_argument("--output_dir", required=True)
p.add_argument("--hparams", default="{}")
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--exit_code", type=int, default=0)
args = p.parse_args()
os.makedirs(args.output_dir, exist_ok=True)
liveness.hold_run_lock(args.output_dir)
with open(os.path.join(args.output_dir, "seen.json"), "w") as handle:
    json.dump({"hparams": json.loads(args.hparams), "python": sys.executable, "start": time.time(),
               "threads": os.environ.get("OMP_NUM_THREADS"), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}, handle)
with open(os.path.join(args.output_dir, "results.jsonl"), "a") as handle:
    handle.write(json.dumps({"step": 0}) + "\n")
time.sleep(args.sleep)
with open(os.path.join(args.output_dir, "seen.json")) as handle:
    seen = json.load(handle)
seen["end"] = time.time()
with open(os.path.join(args.output_dir, "seen.json"), "w") as handle:
    json.dump(seen, handle)
if args.exit_code:
    sys.exit(args.exit_code)
open(os.path.join(args.output_dir, "done"), "w").close()
