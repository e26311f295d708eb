"""Command launchers for DomainBed sweeps: ``slurm`` and ``submitit_local`` (submitit), and ``parallel`` (N jobs at
once on one machine). The hook adds them to upstream's ``command_launchers.REGISTRY``, so both ``python -m
domainbed.scripts.sweep launch --command_launcher slurm`` and ``python -m domainbed_align.sweep launch ...`` use them.

A launcher gets upstream's command strings (``python -m domainbed.scripts.train --hparams '{...}' ...``, shell-quoted
by upstream) and runs each one whole through ``bash -c`` with this interpreter (the leading ``python`` becomes
``sys.executable``), so quoting survives; a non-zero exit is a failed job, recorded in the run's folder
(:mod:`domainbed_align.runs.liveness`). Settings, none of them in code: environment variables ``DOMAINBED_ALIGN_<KEY>``
(upper case), or a JSON file named by ``DOMAINBED_ALIGN_LAUNCHER_CONFIG`` (lower-case keys; the environment wins).
See :data:`SETTINGS` and ``python -m domainbed_align.settings``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Mapping

from domainbed_align.runs import liveness
from domainbed_align import settings as declared
from domainbed_align import floors
from domainbed_align.errors import DomainbedAlignError

CONFIG_VARIABLE = declared.CONFIG_VARIABLE
# key -> its declaration (type, default, what it sets, range): :mod:`domainbed_align.settings` declares them all
SETTINGS = {key: setting for key, setting in declared.SETTINGS.items() if setting.scope == declared.LAUNCHER}
LauncherConfigError = declared.SettingsError  # the name this module raised before settings.py read every setting


def settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every launcher setting: defaults, then the config file, then ``DOMAINBED_ALIGN_<KEY>`` variables (every
    ``DOMAINBED_ALIGN_*`` variable checked: an unknown name, a wrong type or a value out of range is named)."""
    return declared.launcher_settings(environ)


# --- the commands -----------------------------------------------------------------------------------------------
def with_this_interpreter(command: str) -> str:
    """Upstream's command starts with a bare ``python``: run it with this process's interpreter instead."""
    if command.startswith("python "):
        return shlex.quote(sys.executable) + command[len("python"):]
    return command


def run_dir_of(command: str) -> str:
    """The run's folder: the command's ``--output_dir`` (upstream writes ``--output_dir VALUE``)."""
    words = shlex.split(command)
    for index, word in enumerate(words):
        if word == "--output_dir" and index + 1 < len(words):
            return words[index + 1]
        if word.startswith("--output_dir="):
            return word.split("=", 1)[1]
    raise DomainbedAlignError(f"the command has no --output_dir, so its run cannot be tracked: {command[:200]}")


def run_command(command: str) -> int:
    """Run one sweep command whole (``bash -c``: quoting intact) and fail loudly on a non-zero exit."""
    code = subprocess.run(["bash", "-c", with_this_interpreter(command)]).returncode
    if code != 0:
        run_dir = run_dir_of(command)
        raise RuntimeError(f"train.py exited with code {code}; its log: {os.path.join(run_dir, 'err.txt')}")
    return code


# --- GPUs and threads -------------------------------------------------------------------------------------------
def _gpu_ids(config: dict[str, Any]) -> list[str]:
    chosen = config["gpus"]
    if chosen is not None:
        return [] if chosen.strip().lower() in ("none", "") else [g.strip() for g in chosen.split(",") if g.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # indices or GPU-/MIG- UUIDs: kept as the strings CUDA reads
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def slots(config: dict[str, Any]) -> list[dict[str, str]]:
    """One environment per concurrent run: its GPU (shared out round robin) and its thread count."""
    gpus = _gpu_ids(config)
    cores = os.cpu_count() or 1
    jobs = config["jobs"] or (len(gpus) * config["jobs_per_gpu"] if gpus else max(1, cores // (config[
        "threads_per_job"] or 1)))
    threads = config["threads_per_job"] or max(1, cores // jobs)
    envs = []
    for index in range(jobs):
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)] if gpus else ""}
        envs.append(env)
    return envs


# --- parallel: N at once on this machine ------------------------------------------------------------------------
def parallel_launcher(commands: list[str]) -> None:
    """Run the commands on this machine, ``jobs`` at a time (each with its GPU and threads); waits for all."""
    run_parallel(commands, slots(settings()), dict(os.environ), "parallel")


def run_parallel(commands: list[str], envs: list[dict[str, str]], base_env: dict[str, str],
                 launcher: str) -> list[int]:
    """Run the commands ``len(envs)`` at a time, the i-th slot's runs with ``base_env`` updated by ``envs[i]``;
    each run's output goes to ``launcher.log`` in its folder, its exit code to its launch record. Returns the exit
    codes in order."""
    for command in commands:
        liveness.write_job_record(run_dir_of(command), **liveness.launcher_record(launcher))
    pending = list(enumerate(commands))
    running: dict[int, tuple[int, subprocess.Popen, str, Any]] = {}
    codes: dict[int, int] = {}
    while pending or running:
        for slot in range(len(envs)):
            if slot in running or not pending:
                continue
            index, command = pending.pop(0)
            run_dir = run_dir_of(command)
            log = open(os.path.join(run_dir, "launcher.log"), "ab")
            process = subprocess.Popen(["bash", "-c", with_this_interpreter(command)], stdout=log, stderr=log,
                                       env={**base_env, **envs[slot]})
            liveness.write_job_record(run_dir, pid=process.pid, log=log.name, **envs[slot])
            running[slot] = (index, process, run_dir, log)
        for slot, (index, process, run_dir, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                liveness.write_job_record(run_dir, exit_code=process.returncode)
                codes[index] = process.returncode
                del running[slot]
        time.sleep(0.2)
    return [codes[i] for i in range(len(commands))]


# --- submitit: Slurm and its local stand-in ---------------------------------------------------------------------
def _submitit_folder(commands: list[str]) -> str:
    """A fresh folder per launch under the sweep's output folder (job ids restart when a cluster's state is wiped:
    a reused folder would hand back stale results)."""
    sweep_dir = os.path.dirname(os.path.abspath(run_dir_of(commands[0])))
    return os.path.join(sweep_dir, ".submitit", time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")


def _wait(jobs: list[Any], commands: list[str]) -> None:
    """Wait for submitit jobs; record each failure (with its log) in its run's folder."""
    for job, command in zip(jobs, commands):
        try:
            job.result()
        except Exception as error:  # FailedJobError, UncompletedJobError (cancelled, timed out): a failed run
            liveness.write_job_record(run_dir_of(command), error=_error_summary(error))


def _until_slurm_ends(job_ids: list[str], timeout_s: float = 120.0) -> None:
    """submitit's result() returns once a job has written its outcome, while Slurm may list it running a while
    longer (completing): wait until Slurm ends it too, so that run states agree with the launcher's report."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            states = liveness.slurm_states(job_ids)
        except liveness.SlurmUnavailable:  # a busy controller: ask again
            states = None
        if states is not None and not any(states.get(i) in liveness.SLURM_LIVE_STATES for i in job_ids):
            return
        time.sleep(1.0)


def _error_summary(error: Exception) -> str:
    """The line that says why (submitit's message wraps the job's traceback and log paths around it)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    ours = [line for line in lines if "train.py exited with code" in line]
    return (ours or lines or [type(error).__name__])[-1][:500]


def slurm_launcher(commands: list[str]) -> None:
    """One Slurm job array per launch, through submitit; waits unless ``detach``."""
    if not commands:
        return
    floors.require_extra("slurm", "the slurm and submitit_local launchers")
    import submitit

    config = settings()
    executor = submitit.AutoExecutor(folder=_submitit_folder(commands), cluster="slurm")
    parameters: dict[str, Any] = dict(timeout_min=config["timeout_min"], cpus_per_task=config["slurm_cpus_per_task"],
                                      slurm_array_parallelism=config["slurm_array_parallelism"],
                                      slurm_setup=config["slurm_setup"], name="domainbed_align")
    if config["slurm_gpus_per_task"]:
        parameters["slurm_gpus_per_task"] = config["slurm_gpus_per_task"]
    if config["slurm_partition"]:
        parameters["slurm_partition"] = config["slurm_partition"]
    if config["slurm_mem_gb"] is not None:
        parameters["mem_gb"] = config["slurm_mem_gb"]
    if config["slurm_additional"]:
        parameters["slurm_additional_parameters"] = config["slurm_additional"]
    executor.update_parameters(**parameters)
    jobs = executor.map_array(run_command, commands)
    for job, command in zip(jobs, commands):
        liveness.write_job_record(run_dir_of(command), **liveness.launcher_record(
            "slurm", slurm_job_id=str(job.job_id), log=str(job.paths.stderr)))
    print(f"submitted {len(jobs)} runs as Slurm job array {jobs[0].job_id.split('_')[0]}", flush=True)
    if not config["detach"]:
        _wait(jobs, commands)
        _until_slurm_ends([str(job.job_id) for job in jobs])


def submitit_local_launcher(commands: list[str]) -> None:
    """submitit's local executor, ``jobs`` at a time (it has no cap of its own), each with its GPU (an index or a
    GPU-/MIG- UUID) and an explicit time limit (its own default is 2 minutes). It always waits: it feeds the jobs."""
    if not commands:
        return
    floors.require_extra("slurm", "the slurm and submitit_local launchers")
    import submitit

    config = settings()
    envs = slots(config)
    executor = submitit.LocalExecutor(folder=_submitit_folder(commands))
    for command in commands:
        liveness.write_job_record(run_dir_of(command), **liveness.launcher_record("submitit_local"))
    pending = list(zip(range(len(commands)), commands))
    running: dict[int, tuple[Any, str]] = {}
    submitted: list[tuple[Any, str]] = []
    while pending or running:
        for slot in range(len(envs)):
            if slot in running or not pending:
                continue
            _, command = pending.pop(0)
            # submitit's visible_gpus takes only integer indices, but a GPU may be a GPU-/MIG- UUID: submitit hides
            # every GPU (gpus_per_node=0), and the job itself sets its slot's CUDA_VISIBLE_DEVICES, a string
            executor.update_parameters(timeout_min=config["timeout_min"], gpus_per_node=0)
            job = executor.submit(_run_in_slot, command, envs[slot])
            liveness.write_job_record(run_dir_of(command), log=str(job.paths.stderr))
            running[slot] = (job, command)
            submitted.append((job, command))
        for slot, (job, command) in list(running.items()):
            if job.done():
                del running[slot]
        time.sleep(0.2)
    _wait([job for job, _ in submitted], [command for _, command in submitted])


def _run_in_slot(command: str, env: dict[str, str]) -> int:
    """Run the command with its slot's GPU and threads (in the submitit job: its environment reaches train.py)."""
    os.environ.update(env)
    return run_command(command)


REGISTRY: dict[str, Callable[[list[str]], None]] = {
    "slurm": slurm_launcher,
    "submitit_local": submitit_local_launcher,
    "parallel": parallel_launcher,
}
