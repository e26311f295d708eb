"""Launchers and run states without DomainBed: tests/fake_train.py stands in for train.py (it takes the run's lock as
the hook does for train.py). The Slurm tests run on a real one-node cluster (tests/slurm_cluster.sh)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from domainbed_align import settings
from domainbed_align.runs import launchers
from domainbed_align.runs import liveness
from domainbed_align.runs.launchers import LauncherConfigError

TESTS = Path(__file__).resolve().parent
# as nvidia-smi -L prints them: CUDA_VISIBLE_DEVICES takes these as well as indices
GPU_UUID = "GPU-5a3c1f2e-0d4b-6e7f-8a9b-0123456789ab"
MIG_UUID = "MIG-7f1e2d3c-4b5a-6978-8a9b-ba9876543210"


def fake_command(run_dir: Path, hparams: dict | None = None, sleep: float = 0.0, exit_code: int = 0) -> str:
    """A command shaped as upstream's Job writes them: a bare `python`, shell-quoted strings."""
    return (f"python -m fake_train --exit_code {exit_code} --hparams {shlex.quote(json.dumps(hparams or {}))} "
            f"--output_dir {shlex.quote(str(run_dir))} --sleep {sleep}")


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    for name in [n for n in os.environ if n.startswith(settings.PREFIX)]:
        declared = settings.SETTINGS.get(name[len(settings.PREFIX):].lower())
        if declared is None or declared.scope != settings.TEST:  # the tests' own switches stay
            monkeypatch.delenv(name)


def seen(run_dir: Path) -> dict:
    return json.loads((run_dir / "seen.json").read_text())


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = peak = 0
    for _, change in events:
        level += change
        peak = max(peak, level)
    return peak


# --- settings ---------------------------------------------------------------------------------------------------
def test_settings_defaults_file_then_environment(tmp_path):
    assert launchers.settings({})["timeout_min"] == 1440 and launchers.settings({})["slurm_partition"] is None
    assert launchers.settings({})["slurm_gpus_per_task"] == 0  # GPUs asked for, never assumed
    config = tmp_path / "launcher.json"
    config.write_text(json.dumps({"slurm_partition": "gpu", "slurm_setup": ["module load cuda"], "timeout_min": 60,
                                  "slurm_additional": {"qos": "low"}, "slurm_mem_gb": 16}))
    values = launchers.settings({launchers.CONFIG_VARIABLE: str(config), "DOMAINBED_ALIGN_TIMEOUT_MIN": "90",
                                 "DOMAINBED_ALIGN_DETACH": "yes"})
    assert values["slurm_partition"] == "gpu" and values["slurm_setup"] == ["module load cuda"]
    assert values["timeout_min"] == 90 and values["detach"] is True and values["slurm_mem_gb"] == 16.0
    assert values["slurm_additional"] == {"qos": "low"}
    lines = launchers.settings({"DOMAINBED_ALIGN_SLURM_SETUP": "module load cuda\nsource venv/bin/activate\n"})
    assert lines["slurm_setup"] == ["module load cuda", "source venv/bin/activate"]


@pytest.mark.parametrize("environ, named", [
    ({"DOMAINBED_ALIGN_JOBS": "two"}, "DOMAINBED_ALIGN_JOBS = 'two' is not an integer"),
    ({"DOMAINBED_ALIGN_JOBS": "0"}, "DOMAINBED_ALIGN_JOBS = '0' is out of range"),
    ({"DOMAINBED_ALIGN_SLURM_MEM_GB": "nan"}, "DOMAINBED_ALIGN_SLURM_MEM_GB = 'nan' is not a finite number"),
    ({"DOMAINBED_ALIGN_SLURM_MEM_GB": "-5"}, "DOMAINBED_ALIGN_SLURM_MEM_GB = '-5' is out of range"),
    ({"DOMAINBED_ALIGN_DETACH": "OFF", "DOMAINBED_ALIGN_SLURM_PARTITON": "gpu"},
     "DOMAINBED_ALIGN_SLURM_PARTITON is not a domainbed-align setting, so it would be ignored (did you mean "
     "DOMAINBED_ALIGN_SLURM_PARTITION?)"),
    ({"DOMAINBED_ALIGN_DETACH": "maybe"}, "DOMAINBED_ALIGN_DETACH = 'maybe' is not a boolean"),
    ({"DOMAINBED_ALIGN_SLURM_ADDITIONAL": "qos=low"}, "DOMAINBED_ALIGN_SLURM_ADDITIONAL = 'qos=low' is not a JSON object"),
])
def test_an_ill_typed_setting_is_named(environ, named):
    with pytest.raises(LauncherConfigError, match=re.escape(named)):
        launchers.settings(environ)


def test_config_file_with_an_unknown_or_ill_typed_key_is_named(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"slurm_partiton": "gpu"}))
    with pytest.raises(LauncherConfigError, match=r"'slurm_partiton' is not a launcher setting .*did you mean "
                                                  r"'slurm_partition'\?"):
        launchers.settings({launchers.CONFIG_VARIABLE: str(config)})
    config.write_text(json.dumps({"slurm_mem_gb": float("nan")}))  # json.load reads NaN
    with pytest.raises(LauncherConfigError, match="slurm_mem_gb = nan is not a finite number"):
        launchers.settings({launchers.CONFIG_VARIABLE: str(config)})
    config.write_text(json.dumps({"slurm_cpus_per_task": "4"}))
    with pytest.raises(LauncherConfigError, match="slurm_cpus_per_task = '4' is not an integer"):
        launchers.settings({launchers.CONFIG_VARIABLE: str(config)})
    with pytest.raises(LauncherConfigError, match="cannot be read as a JSON object"):
        launchers.settings({launchers.CONFIG_VARIABLE: str(tmp_path / "missing.json")})


def test_commands_keep_their_quoting_and_take_this_interpreter(tmp_path):
    command = fake_command(tmp_path / "a run", {"lr": 1e-3, "note": "it's a test"})
    assert launchers.run_dir_of(command) == str(tmp_path / "a run")
    assert shlex.split(launchers.with_this_interpreter(command))[0] == sys.executable


def test_slots_share_gpus_round_robin_and_split_cores():
    two_gpus = launchers.slots(dict(launchers.settings({}), gpus="0,1", jobs_per_gpu=2))
    assert [env["CUDA_VISIBLE_DEVICES"] for env in two_gpus] == ["0", "1", "0", "1"]
    cpu = launchers.slots(dict(launchers.settings({}), gpus="none", jobs=2, threads_per_job=3))
    assert [(e["CUDA_VISIBLE_DEVICES"], e["OMP_NUM_THREADS"]) for e in cpu] == [("", "3"), ("", "3")]


def test_slots_keep_gpu_and_mig_uuids_as_strings(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f" {GPU_UUID} , {MIG_UUID} ")
    envs = launchers.slots(dict(launchers.settings({}), jobs=2))
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == [GPU_UUID, MIG_UUID]


# --- run states -------------------------------------------------------------------------------------------------
def test_states_running_then_killed_then_recovered(tmp_path, fake_env):
    run = tmp_path / "run"
    assert liveness.run_state(str(run)).state == liveness.NOT_LAUNCHED
    process = subprocess.Popen([sys.executable, "-m", "fake_train", "--output_dir", str(run), "--sleep", "60"])
    try:
        deadline = time.time() + 30
        while not liveness.lock_is_held(str(run)) and time.time() < deadline:
            time.sleep(0.1)
        assert liveness.run_state(str(run)).state == liveness.RUNNING
        with pytest.raises(liveness.RunAlreadyTraining, match="being trained right now by pid"):
            liveness.hold_run_lock(str(run))  # a second training of the same run is refused
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    state = liveness.run_state(str(run))
    assert state.state == liveness.FAILED and "killed or crashed" in state.why and state.log.endswith("err.txt")
    # train.py cannot resume: a rerun in the same folder moves the partial results aside (the run counts once)
    rerun = subprocess.run([sys.executable, "-m", "fake_train", "--output_dir", str(run)], capture_output=True,
                           text=True)
    assert rerun.returncode == 0 and "results.jsonl.interrupted1" in rerun.stderr
    assert (run / "results.jsonl").read_text().count("\n") == 1 and (run / "results.jsonl.interrupted1").exists()
    assert liveness.run_state(str(run)).state == liveness.DONE


def test_states_from_the_launch_record(tmp_path):
    queued = tmp_path / "queued"
    queued.mkdir()
    liveness.write_job_record(str(queued), **liveness.launcher_record("local"))  # this process: alive
    assert liveness.run_state(str(queued)).state == liveness.QUEUED
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    liveness.write_job_record(str(orphan), **dict(liveness.launcher_record("local"), launcher_pid=dead.pid))
    assert liveness.run_state(str(orphan)).state == liveness.FAILED
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / liveness.JOB_FILE).write_text('{"launcher": "par')
    assert liveness.run_state(str(damaged)).state == liveness.FAILED  # incomplete, unrecorded: not live
    slurm = tmp_path / "slurm"
    slurm.mkdir()
    liveness.write_job_record(str(slurm), **liveness.launcher_record("slurm", slurm_job_id="7_1"))
    assert liveness.run_state(str(slurm), {"7_1": "PENDING"}).state == liveness.QUEUED
    assert liveness.run_state(str(slurm), {"7_1": "RUNNING"}).state == liveness.RUNNING
    cancelled = liveness.run_state(str(slurm), {"7_1": "CANCELLED"})
    assert cancelled.state == liveness.FAILED and "CANCELLED" in cancelled.why


def _squeue_stand_in(folder: Path, body: str) -> str:
    """A PATH holding only a `squeue` that runs ``body`` (bash; its arguments go to args.txt)."""
    folder.mkdir()
    script = folder / "squeue"
    script.write_text(f"#!/bin/bash\necho \"$@\" > {shlex.quote(str(folder / 'args.txt'))}\n{body}\n")
    script.chmod(0o755)
    return str(folder)


def test_slurm_states_lists_array_tasks_and_never_guesses(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _squeue_stand_in(tmp_path / "ok", "printf '7_0|PENDING\\n7_1|RUNNING\\n'"))
    assert liveness.slurm_states(["7_1", "7_0", None]) == {"7_0": "PENDING", "7_1": "RUNNING"}
    # -r: one line per array task (without it a pending array is one line, 7_[0-1], and no task is found)
    assert "-r" in (tmp_path / "ok" / "args.txt").read_text().split()
    # squeue's answer for a single id it no longer knows: the job has ended
    monkeypatch.setenv("PATH", _squeue_stand_in(
        tmp_path / "gone", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1"))
    assert liveness.slurm_states(["7_1"]) == {}
    # anything else: the states are unknown, and a live run must not be shown failed (delete_incomplete deletes)
    monkeypatch.setenv("PATH", _squeue_stand_in(
        tmp_path / "down", "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1"))
    run = tmp_path / "run"
    run.mkdir()
    liveness.write_job_record(str(run), **liveness.launcher_record("slurm", slurm_job_id="7_1"))
    with pytest.raises(liveness.SlurmUnavailable, match="Unable to contact slurm controller.*nothing was changed"):
        liveness.run_state(str(run))
    from domainbed_align import sweep  # needs no DomainBed for deleting

    job = type("Job", (), {"output_dir": str(run), "train_args": {}})()
    with pytest.raises(liveness.SlurmUnavailable):
        sweep.delete_incomplete(argparse.Namespace(skip_confirmation=True), [job])
    assert run.is_dir()  # nothing deleted
    monkeypatch.setenv("PATH", str(tmp_path / "ok" / "nothing here"))
    with pytest.raises(liveness.SlurmUnavailable, match="squeue is not on PATH"):
        liveness.run_state(str(run))


# --- local launchers --------------------------------------------------------------------------------------------
def test_parallel_launcher_runs_n_at_once_with_quoting_and_reports_exit_codes(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("DOMAINBED_ALIGN_JOBS", "2")
    monkeypatch.setenv("DOMAINBED_ALIGN_THREADS_PER_JOB", "1")
    monkeypatch.setenv("DOMAINBED_ALIGN_GPUS", "none")
    hparams = {"note": "it's \"quoted\" $HOME", "lr": 0.001}
    runs = [tmp_path / f"run {i}" for i in range(4)]
    commands = [fake_command(run, hparams, sleep=1.0, exit_code=3 if i == 3 else 0) for i, run in enumerate(runs)]
    for run in runs:
        run.mkdir()
    launchers.parallel_launcher(commands)
    views = [seen(run) for run in runs]
    assert all(v["hparams"] == hparams and v["python"] == sys.executable and v["threads"] == "1" for v in views)
    assert max_overlap([(v["start"], v["end"]) for v in views]) == 2
    assert [liveness.run_state(str(run)).state for run in runs] == [liveness.DONE] * 3 + [liveness.FAILED]
    failed = liveness.run_state(str(runs[3]))
    assert failed.why == "exit code 3"


def test_submitit_local_caps_concurrency_asks_for_gpus_and_reports_failures(tmp_path, fake_env, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("DOMAINBED_ALIGN_GPUS", "0,1")  # ids only: the stand-in never touches a GPU
    runs = [tmp_path / f"r{i}" for i in range(3)]
    for run in runs:
        run.mkdir()
    commands = [fake_command(run, {"i": i}, sleep=1.0, exit_code=5 if i == 2 else 0) for i, run in enumerate(runs)]
    launchers.submitit_local_launcher(commands)
    views = [seen(run) for run in runs]
    assert sorted(v["gpus"] for v in views[:2]) == ["0", "1"]  # not hidden: each run got its own GPU
    assert max_overlap([(v["start"], v["end"]) for v in views]) <= 2
    assert [liveness.run_state(str(run)).state for run in runs] == [liveness.DONE, liveness.DONE, liveness.FAILED]
    record = liveness.read_job_record(str(runs[2]))
    assert "exited with code 5" in record["error"] and record["log"].endswith(".err")


def test_submitit_local_passes_gpu_and_mig_uuids_through(tmp_path, fake_env, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{GPU_UUID},{MIG_UUID}")  # no DOMAINBED_ALIGN_GPUS: these are used
    runs = [tmp_path / f"u{i}" for i in range(2)]
    for run in runs:
        run.mkdir()
    launchers.submitit_local_launcher([fake_command(run) for run in runs])
    assert sorted(seen(run)["gpus"] for run in runs) == sorted([GPU_UUID, MIG_UUID])
    assert [liveness.run_state(str(run)).state for run in runs] == [liveness.DONE] * 2


# --- a real Slurm cluster ---------------------------------------------------------------------------------------
def test_slurm_array_runs_each_command_whole_and_fails_a_nonzero_exit(tmp_path, fake_env, slurm_cluster):
    hparams = {"note": "it's quoted", "lr": 0.01}
    runs = [tmp_path / f"run {i}" for i in range(3)]
    for run in runs:
        run.mkdir()
    commands = [fake_command(run, hparams, exit_code=4 if i == 2 else 0) for i, run in enumerate(runs)]
    launchers.slurm_launcher(commands)
    records = [liveness.read_job_record(str(run)) for run in runs]
    assert len({r["slurm_job_id"].split("_")[0] for r in records}) == 1  # one job array
    assert [liveness.run_state(str(run)).state for run in runs] == [liveness.DONE, liveness.DONE, liveness.FAILED]
    assert all(seen(run)["hparams"] == hparams and seen(run)["python"] == sys.executable for run in runs)
    failed = liveness.run_state(str(runs[2]))
    assert "FAILED" in failed.why and "exited with code 4" in records[2]["error"]


def test_slurm_pending_array_tasks_are_queued_until_released(tmp_path, fake_env, slurm_cluster, monkeypatch):
    monkeypatch.setenv("DOMAINBED_ALIGN_DETACH", "1")
    monkeypatch.setenv("DOMAINBED_ALIGN_SLURM_ADDITIONAL", '{"hold": true}')  # submitted held: pending
    runs = [tmp_path / f"held {i}" for i in range(3)]
    for run in runs:
        run.mkdir()
    launchers.slurm_launcher([fake_command(run) for run in runs])
    array = liveness.read_job_record(str(runs[0]))["slurm_job_id"].split("_")[0]
    try:  # one squeue call for them all (as sweep's status makes): each task's own state, not the array's
        slurm = liveness.slurm_states(liveness.read_job_record(str(run))["slurm_job_id"] for run in runs)
        assert [liveness.run_state(str(run), slurm).state for run in runs] == [liveness.QUEUED] * 3
    finally:
        subprocess.run(["scontrol", "release", array], check=True)
    deadline = time.time() + 90
    while any(liveness.run_state(str(run)).state != liveness.DONE for run in runs) and time.time() < deadline:
        time.sleep(0.5)
    assert [liveness.run_state(str(run)).state for run in runs] == [liveness.DONE] * 3


def test_slurm_cancelled_job_shows_failed(tmp_path, fake_env, slurm_cluster, monkeypatch):
    monkeypatch.setenv("DOMAINBED_ALIGN_DETACH", "1")
    run = tmp_path / "long"
    run.mkdir()
    launchers.slurm_launcher([fake_command(run, sleep=120)])
    job_id = liveness.read_job_record(str(run))["slurm_job_id"]
    deadline = time.time() + 60
    while liveness.run_state(str(run)).state != liveness.RUNNING and time.time() < deadline:
        time.sleep(0.2)
    assert liveness.run_state(str(run)).state == liveness.RUNNING
    subprocess.run(["scancel", job_id], check=True)
    deadline = time.time() + 60
    while liveness.run_state(str(run)).live and time.time() < deadline:
        time.sleep(0.5)
    state = liveness.run_state(str(run))
    assert state.state == liveness.FAILED and "CANCELLED" in state.why, state
