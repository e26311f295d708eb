"""The ALIGN paper's protocols as upstream sweep jobs, for every method: one command each.

    python sweeps/paper_protocols.py domainbed     --data_dir D --output_dir O [--datasets VLCS TerraIncognita]
    python sweeps/paper_protocols.py single_source --data_dir D --output_dir O      # and the per-domain ID table
    python sweeps/paper_protocols.py PROTOCOL ... --estimate                         # count runs, estimate GPU-hours

- ``domainbed``: DomainBed's protocol, one held-out domain per run (``--pairs`` adds every pair of held-out
  domains, which leave-one-domain-out selection needs), ``--n_hparams`` random draws (20), ``--n_trials`` (3).
- ``single_source``: each run trains on one domain and tests on every other (train on VOC2007, test on the rest,
  for each source); the same runs give the per-domain in-distribution table (each source's held-out ``out``
  split). Upstream's ``sweep`` cannot make these jobs; they are upstream ``Job``s all the same (same argument
  format, ``seed_hash`` seeds, md5-named folders), launched with upstream's launchers.

It launches the jobs not launched yet with ``--command_launcher`` (DomainBed's local, dummy, multi_gpu, or ours:
parallel, submitit_local, slurm) through ``domainbed_align.sweep``'s launch (progress bar, failed runs with their
logs), then prints the commands that tabulate them: collect_results (domainbed), ``evaluate --checkpoint selected``
and ``tables``. A failed or killed run is removed with ``python -m domainbed_align.sweep delete_incomplete`` (same
datasets/algorithms/protocol arguments) before a relaunch; it never deletes a live run. Needs DomainBed importable (``DOMAINBED_ROOT`` or run from the clone) and a GPU for the
real datasets (download them with ``python -m domainbed.scripts.download``).

``--estimate``: the number of runs and GPU-hours = runs x steps x TimmERM's step on the H200 (results/bench/
h200_run1.json: ResNet-18, 224 px, 3 x 32, bf16) x the method's step-time ratio to TimmERM (cpu_quick.json's
interleaved CPU rounds; ALIGN's from the H200 file) x the run's training domains / 3 (a step takes 32 images per
training domain; time taken as proportional to the batch). Training steps only: no evaluation, no data loading. An
estimate, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "results" / "bench"
# Methods the benchmark does not time yet, with the measured method of the same passes (one Grad-CAM forward and
# backward per step, plus a loss on the map): an assumption, printed with the estimate.
SAME_PASSES = {"RES_G": "GRADIA", "RES_L": "GRADIA", "CARE": "GRADIA"}


def step_ms(algorithm: str) -> tuple[float, str]:
    """(one training step of ``algorithm`` in ms on the H200 at the protocol's batch, how it was obtained)."""
    gpu = json.loads((BENCH / "h200_run1.json").read_text())
    ratios = json.loads((BENCH / "cpu_quick.json").read_text())["methods"]
    if algorithm == "ALIGN":
        return gpu["align_ms"], "H200 bench"
    source = SAME_PASSES.get(algorithm, algorithm)
    if source not in ratios:
        return gpu["erm_ms"], "not benchmarked: counted as TimmERM"
    note = "CPU ratio" if source == algorithm else f"not benchmarked: counted at {source}'s CPU ratio"
    return gpu["erm_ms"] * ratios[source]["over_erm"], note


def _run_steps(job: object, steps: int | None, hook: object) -> int:
    return steps or hook.upstream_dataset_class(job.train_args["dataset"]).N_STEPS


def _batch_share(job: object, hook: object) -> float:
    """A step's batch is 32 per training domain; the bench timed 3 domains (time taken as proportional)."""
    n_envs = len(hook.upstream_dataset_class(job.train_args["dataset"]).ENVIRONMENTS)
    return (n_envs - len(job.train_args["test_envs"])) / 3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python sweeps/paper_protocols.py", description=__doc__.split("\n\n")[0])
    p.add_argument("protocol", choices=("domainbed", "single_source"))
    p.add_argument("--datasets", nargs="+", default=["VLCS", "TerraIncognita"])
    p.add_argument("--algorithms", nargs="+", default=["all"], help="default: every registered method")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--n_hparams", type=int, default=20)
    p.add_argument("--n_trials", type=int, default=3)
    p.add_argument("--steps", type=int, help="default: each dataset's N_STEPS (DomainBed's 5000)")
    p.add_argument("--hparams", help="JSON, as sweep's --hparams")
    p.add_argument("--pairs", action="store_true", help="domainbed: also held-out pairs (for leave-one-out)")
    p.add_argument("--command_launcher", default="local",
                   help="DomainBed's (local, dummy, multi_gpu) or ours (parallel, submitit_local, slurm)")
    p.add_argument("--detach", action="store_true", help="slurm: return once submitted (then: domainbed_align.sweep "
                                                         "status --protocol ...)")
    p.add_argument("--estimate", action="store_true", help="count the runs and estimate GPU-hours; launch nothing")
    options = p.parse_args(argv)
    root = os.environ.get("DOMAINBED_ROOT")
    if root:
        sys.path.insert(0, root)
    from domainbed_align.upstream import adapter, patches
    from domainbed_align.methods import registry
    from domainbed_align.errors import DomainbedAlignError

    try:
        patches.patch_all_now()
    except ImportError:
        print("error: no DomainBed: set DOMAINBED_ROOT to a clone at b93c22a (or run from it)", file=sys.stderr)
        return 2
    algorithms = list(registry.algorithm_names()) if options.algorithms == ["all"] else options.algorithms
    make = adapter.upstream_single_source_jobs if options.protocol == "single_source" else adapter.upstream_protocol_jobs
    extra = {} if options.protocol == "single_source" else {"pairs": options.pairs}
    jobs = make(options.output_dir, options.data_dir, options.datasets, algorithms, options.n_hparams,
                options.n_trials, options.steps, options.hparams, **extra)
    states = {state: sum(job.state == state for job in jobs) for state in {job.state for job in jobs}}
    print(f"{options.protocol}: {len(jobs)} runs ({', '.join(f'{n} {s.lower()}' for s, n in sorted(states.items()))})")
    if options.estimate:
        total = 0.0
        for algorithm in algorithms:
            ms, how = step_ms(algorithm)
            hours = sum(_run_steps(job, options.steps, adapter) * ms * _batch_share(job, adapter) / 3.6e6
                        for job in jobs if job.train_args["algorithm"] == algorithm)
            total += hours
            print(f"  {algorithm:8s} {hours:7.1f} GPU-hours ({ms:.1f} ms/step: {how})")
        print(f"  total    {total:7.1f} GPU-hours (estimate: training steps on one H200, the bench's 3 x 32 batch "
              f"scaled by each run's training domains; no evaluation or data loading)")
        return 0
    from domainbed_align import sweep

    try:  # our sweep's launch: progress bar, failed runs with their logs, --detach (slurm)
        code = sweep.launch(argparse.Namespace(command_launcher=options.command_launcher, skip_confirmation=True,
                                               detach=options.detach, poll_seconds=5.0), jobs)
    except DomainbedAlignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if code:
        return code
    out = options.output_dir
    print("then:\n" + (f"  python -m domainbed.scripts.collect_results --input_dir {out}\n"
                       if options.protocol == "domainbed" else "") +
          f"  python -m domainbed_align.evaluate --input_dir {out} --checkpoint selected > {out}.explanations.jsonl\n"
          f"  python -m domainbed_align.tables --input_dir {out} --explanations {out}.explanations.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
