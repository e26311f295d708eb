"""DomainBed's sweep, with the paper's protocols, run states for every launcher, and nothing lost.

    python -m domainbed_align.sweep launch            --data_dir D --output_dir O --command_launcher L [...]
    python -m domainbed_align.sweep status            --data_dir D --output_dir O [...]
    python -m domainbed_align.sweep delete_incomplete --data_dir D --output_dir O [...]

Upstream's arguments, names and defaults (``domainbed.scripts.sweep``: its parser sits under ``__main__``, so the
boundary, :mod:`domainbed_align.upstream.adapter`, declares them again), and upstream's own jobs (``make_args_list``
and ``Job``, from the user's DomainBed through the boundary): a run lands in the folder ``sweep launch`` would give
it. Added:

- ``--protocol single_source``: each run trains on one domain and tests on every other (``test_envs`` = the
  others); the default ``domainbed`` is upstream's.
- ``status``: each run done, running, queued, failed (with its log), not launched, or unknown (its lock cannot be
  checked on this file system, and nothing proves it ended) (:mod:`domainbed_align.runs.liveness`).
- ``delete_incomplete`` deletes failed runs only, never a live (running or queued) or unknown one, and judges each
  run again, under its lock, immediately before removing it. Upstream's deletes every folder without ``done``,
  queued and running jobs of an asynchronous launcher included: do not use it with ``slurm``.
- ``launch`` waits for its jobs with a progress bar and ends with the failed runs and their logs (exit code 1 when
  any failed); ``--detach`` (slurm) returns once the jobs are submitted: follow them with ``status``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any, Sequence

from domainbed_align.errors import DomainbedAlignError, user_message
from domainbed_align.runs import liveness
from domainbed_align.upstream import adapter  # cheap: DomainBed is imported by its functions, when called
from domainbed_align.errors import print_error

COMMAND = "domainbed-align sweep"  # how its errors are prefixed (errors.print_error)


FOLLOW_WITH_STATUS = "follow them with 'python -m domainbed_align.sweep status' and the same arguments"


def parser(datasets: list[str], algorithms: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed_align.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["launch", "status", "delete_incomplete"])
    adapter.add_sweep_arguments(p, datasets, algorithms)  # upstream's own, as its sweep declares them
    # ours
    p.add_argument("--protocol", choices=["domainbed", "single_source"], default="domainbed",
                   help="domainbed: upstream's test environments; single_source: train on one domain, test on the rest")
    p.add_argument("--source_envs", type=int, nargs="+", default=None, metavar="ENV",
                   help="single_source: only the runs trained on these environments (indices; default: every one), "
                        "e.g. the paper's VOC2007-only single-source protocol")
    p.add_argument("--held_out_envs", type=int, nargs="+", default=None, metavar="ENV",
                   help="domainbed protocol: only the runs that hold out every one of these environments (none trains "
                        "on them), e.g. DecoyMNIST's 2; without --single_test_envs the pairs that leave-one-domain-out "
                        "selection needs stay")
    p.add_argument("--detach", action="store_true", help="launch: return once submitted (slurm); see status")
    p.add_argument("--poll_seconds", type=float, default=5.0, help="launch: how often the progress bar looks")
    return p


def make_jobs(options: argparse.Namespace) -> list[Any]:
    """Upstream ``Job``s for the options: ``sweep launch``'s own (domainbed) or single-source ones."""
    make = adapter.upstream_single_source_jobs if options.protocol == "single_source" else adapter.upstream_jobs
    extra = ({"source_envs": options.source_envs} if options.protocol == "single_source"
             else {"single_test_envs": options.single_test_envs, "held_out_envs": options.held_out_envs})
    return make(options.output_dir, options.data_dir, options.datasets, options.algorithms, options.n_hparams,
                options.n_trials, options.steps, options.hparams, n_hparams_from=options.n_hparams_from,
                task=options.task, holdout_fraction=options.holdout_fraction, **extra)


def run_states(jobs: list[Any]) -> list[liveness.RunState]:
    """Each job's state (one squeue call for every recorded Slurm job)."""
    records = [liveness.read_job_record(job.output_dir) or {} for job in jobs]
    slurm = liveness.slurm_states(record.get("slurm_job_id") for record in records)
    return [liveness.run_state(job.output_dir, slurm) for job in jobs]


def has_diverged(run_dir: str) -> bool:
    """Whether the run's last checkpoint record reports a divergence (``diverged`` > 0: monitor.py's rule)."""
    from domainbed_align.runs.records import RESULTS_FILE, read_results

    path = os.path.join(run_dir, RESULTS_FILE)
    checkpoints = read_results(path)[0] if os.path.exists(path) else []
    return bool(checkpoints) and checkpoints[-1][1].get("diverged", 0) > 0


def _describe(job: Any) -> str:
    a = job.train_args
    return f"{a['dataset']} {a['algorithm']} test_envs={a['test_envs']} hparams_seed={a['hparams_seed']} " \
           f"trial_seed={a['trial_seed']}"


def print_status(jobs: list[Any], states: list[liveness.RunState], every_run: bool = True) -> None:
    if every_run:
        for job, state in zip(jobs, states):
            print(f"{state.state:12s} {job.output_dir} {_describe(job)}")
    counts = {name: sum(s.state == name for s in states) for name in liveness.STATES}
    print(f"{len(jobs)} runs: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    print_failures(jobs, states)


def print_failures(jobs: list[Any], states: list[liveness.RunState]) -> None:
    failed = [(job, state) for job, state in zip(jobs, states) if state.state == liveness.FAILED]
    if failed:
        print(f"failed runs ({len(failed)}): remove them with delete_incomplete, then launch again")
        for job, state in failed:
            print(f"  {job.output_dir} ({_describe(job)}): {state.why}; log: {state.log}")
    diverged = [job for job in jobs if has_diverged(job.output_dir)]
    if diverged:
        print(f"diverged runs ({len(diverged)}; their accuracies mean nothing: see err.txt, lower 'lr'):")
        for job in diverged:
            print(f"  {job.output_dir} ({_describe(job)})")
    unknown = [(job, state) for job, state in zip(jobs, states) if state.state == liveness.UNKNOWN]
    if unknown:
        print(f"runs in an unknown state ({len(unknown)}; delete_incomplete keeps them):")
        for job, state in unknown:
            print(f"  {job.output_dir} ({_describe(job)}): {state.why}; log: {state.log}")


def _confirmed(options: argparse.Namespace) -> bool:
    if options.skip_confirmation:
        return True
    try:
        answer = input("Are you sure? (y/n) ")
    except EOFError:
        answer = ""
    if answer.lower().strip()[:1] != "y":
        print("Nevermind!")
        return False
    return True


def launch(options: argparse.Namespace, jobs: list[Any]) -> int:
    from domainbed_align import settings

    settings.launcher_settings()  # a misspelt DOMAINBED_ALIGN_* fails here, not in each train.py
    if not options.command_launcher:
        raise DomainbedAlignError("launch needs --command_launcher (upstream's local, dummy, multi_gpu; ours: "
                                  "parallel, submitit_local, slurm).")
    launchers = adapter.command_launcher_names()
    if options.command_launcher not in launchers:
        raise DomainbedAlignError(f"--command_launcher {options.command_launcher!r} is not one of {launchers}.")
    states = run_states(jobs)
    print_status(jobs, states, every_run=False)
    to_launch = [job for job, state in zip(jobs, states) if state.state == liveness.NOT_LAUNCHED]
    print(f"About to launch {len(to_launch)} jobs.")
    if not to_launch or not _confirmed(options):
        return 0
    if options.detach:
        os.environ["DOMAINBED_ALIGN_DETACH"] = "1"
    for job in to_launch:  # queued from now on: this process will start them (launchers add their own details)
        os.makedirs(job.output_dir, exist_ok=True)
        liveness.write_job_record(job.output_dir, **liveness.launcher_record(options.command_launcher))
    failure: list[BaseException] = []

    def run_launcher() -> None:
        try:
            adapter.launch_jobs(to_launch, options.command_launcher)
        except BaseException as error:  # reported below, after the progress bar
            failure.append(error)

    launcher = threading.Thread(target=run_launcher, daemon=True)
    launcher.start()
    import tqdm

    blind = False
    with tqdm.tqdm(total=len(to_launch), desc="runs ended", unit="run") as bar:
        while launcher.is_alive():
            launcher.join(options.poll_seconds)
            try:
                ended = sum(s.state in (liveness.DONE, liveness.FAILED) for s in run_states(to_launch))
            except liveness.SlurmUnavailable:  # a busy controller: the next poll asks again
                continue
            except Exception as error:  # the bar is only a view: whatever breaks it must not stop the launcher
                if not blind:
                    bar.write(f"warning: progress cannot be read ({type(error).__name__}: {error}); the runs go on",
                              file=sys.stderr)
                    blind = True
                continue
            bar.update(max(0, ended - bar.n))
    if failure:
        raise failure[0]
    if options.command_launcher == "dummy":
        return 0
    try:
        states = run_states(to_launch)
    except liveness.SlurmUnavailable as error:
        print_error(f"{user_message(error)} (the jobs were submitted: {FOLLOW_WITH_STATUS})", COMMAND)
        return 1
    if any(state.live for state in states):
        print(f"{sum(s.live for s in states)} runs still queued or running (detached): {FOLLOW_WITH_STATUS}")
    print_failures(to_launch, states)
    return 1 if any(state.state in (liveness.FAILED, liveness.UNKNOWN) for state in states) else 0


def delete_incomplete(options: argparse.Namespace, jobs: list[Any]) -> int:
    states = run_states(jobs)
    to_delete = [job for job, state in zip(jobs, states) if state.state == liveness.FAILED]
    live = sum(state.live for state in states)
    unknown = sum(state.state == liveness.UNKNOWN for state in states)
    print(f"About to delete {len(to_delete)} jobs (failed or killed); keeping {live} live (running or queued)" +
          (f" and {unknown} whose state is unknown (see status)." if unknown else "."))
    if not to_delete or not _confirmed(options):
        return 0
    # the confirmation may have taken minutes: Slurm is asked again, and each run judged again under its lock
    slurm = liveness.slurm_states((liveness.read_job_record(job.output_dir) or {}).get("slurm_job_id")
                                  for job in to_delete)
    deleted, trouble = 0, 0
    for job in to_delete:
        try:
            state = liveness.delete_if_failed(job.output_dir, slurm)
        except OSError as error:
            print(f"could not delete {job.output_dir} ({error.strerror or error}): remove it by hand", file=sys.stderr)
            trouble += 1
            continue
        if state.state == liveness.FAILED:
            deleted += 1
        else:
            print(f"kept {job.output_dir}: it is {state.state} now{f' ({state.why})' if state.why else ''}")
    print(f"Deleted {deleted} jobs!")
    return 1 if trouble else 0


def check_names(options: argparse.Namespace) -> None:
    """Every algorithm and dataset, ``--hparams`` (JSON, names, our algorithms' types) and, for launch,
    ``--data_dir``: one error for the first problem, before any job is made or started (upstream's sweep launches
    a misspelt algorithm, and each run then fails)."""
    from domainbed_align.upstream import preflight

    given = preflight.parse_hparams(options.hparams)
    # each environment filter belongs to one protocol, and its indices must exist in every dataset swept
    filters = (("--held_out_envs", options.held_out_envs, "domainbed",
                "--held_out_envs filters --protocol domainbed's runs; with single_source use --source_envs (the "
                "training domain) instead"),
               ("--source_envs", options.source_envs, "single_source",
                "--source_envs chooses the training domain of --protocol single_source; add --protocol "
                "single_source, or drop --source_envs"))
    for flag, envs, protocol, wrong_protocol in filters:
        if envs is None:
            continue
        if options.protocol != protocol:
            raise preflight.RunArgumentError(wrong_protocol)
        for dataset in options.datasets:
            names = adapter.upstream_dataset_class(dataset).ENVIRONMENTS
            wrong = [env for env in envs if not 0 <= env < len(names)]
            if wrong:
                raise preflight.RunArgumentError(f"{flag} {wrong}: {dataset} has environments 0-{len(names) - 1} "
                                                 f"({', '.join(names)})")
    for dataset in options.datasets:
        for algorithm in options.algorithms:
            preflight.check_run(algorithm, dataset, given, options.data_dir, test_envs=(),
                                check_data_dir=options.command == "launch", steps=options.steps,
                                check_length=options.command == "launch" and options.n_hparams_from == 0)


def main(argv: Sequence[str] | None = None) -> int:
    from domainbed_align.upstream import hook

    if not adapter.domainbed_importable():
        print_error("no DomainBed: set DOMAINBED_ROOT to a clone at b93c22a (or run from it)", COMMAND)
        return 2
    hook.install()
    algorithms = adapter.algorithm_names()  # domainbed.algorithms first, as upstream's sweep imports them
    defaults = [d for d in adapter.dataset_names() if "Debug" not in d], algorithms
    options = parser(*defaults).parse_args(argv)
    try:
        check_names(options)
        jobs = make_jobs(options)
        if options.command == "status":
            print_status(jobs, run_states(jobs))
            return 0
        if options.command == "delete_incomplete":
            return delete_incomplete(options, jobs)
        return launch(options, jobs)
    except DomainbedAlignError as error:
        print_error(f"{user_message(error)}", COMMAND)
        return 2


if __name__ == "__main__":
    sys.exit(main())
