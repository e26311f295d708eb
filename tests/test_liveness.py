"""Run states that survive file systems: a lock that cannot be checked is unknown (never failed, never deleted),
node-local locks are backed by a heartbeat, the lock dies with the trainer (not with its forked workers), a
finished folder is never trained into again, and delete_incomplete judges each run again under its lock."""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from domainbed_align import sweep
from domainbed_align.runs import liveness


@pytest.fixture
def own_lock_cleanup():
    """Runs whose lock this test process takes (hold_run_lock keeps it until exit): given back after the test."""
    held: list[str] = []
    yield held
    for run_dir in held:
        getattr(liveness, "release_run_lock", lambda _: None)(run_dir)  # (absent before it existed)


def _no_locks(monkeypatch) -> None:
    """A file system whose lock calls fail (ENOLCK: NFS without lockd, some FUSE mounts)."""
    def refuse(*args, **kwargs):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "lockf", refuse)
    monkeypatch.setattr(fcntl, "flock", refuse)


def _killed_run(root: Path, name: str = "run") -> Path:
    """A run that trained (its lock file is there, free) and stopped without `done`."""
    run = root / name
    run.mkdir()
    (run / liveness.LOCK_FILE).write_text("pid 1 on elsewhere\n")
    (run / "results.jsonl").write_text('{"step": 0}\n')
    return run


def _job(run: Path):
    return type("Job", (), {"output_dir": str(run), "train_args": {
        "dataset": "D", "algorithm": "A", "test_envs": [0], "hparams_seed": 0, "trial_seed": 0}})()


def _heartbeat(run: Path, host: str, pid: int, age: float = 0.0) -> None:
    path = run / liveness.HEARTBEAT_FILE
    path.write_text(json.dumps({"host": host, "pid": pid, "since": time.time() - age}))
    os.utime(path, (time.time() - age, time.time() - age))


# --- a lock call that fails ---------------------------------------------------------------------------------------
def test_a_lock_that_cannot_be_checked_is_unknown_never_failed_nor_deleted(tmp_path, monkeypatch, capsys):
    run = _killed_run(tmp_path)
    _no_locks(monkeypatch)
    state = liveness.run_state(str(run))  # before: OSError [Errno 37] out of status
    assert state.state == liveness.UNKNOWN and "ENOLCK" in state.why and "not deleted" in state.why
    assert not state.live
    sweep.print_status([_job(run)], [state])
    out = capsys.readouterr().out
    assert "1 runs: 0 done, 0 running, 0 queued, 0 failed, 0 not launched, 1 unknown" in out
    assert "runs in an unknown state (1; delete_incomplete keeps them)" in out
    options = argparse.Namespace(skip_confirmation=True)
    assert sweep.delete_incomplete(options, [_job(run)]) == 0
    assert "About to delete 0 jobs" in capsys.readouterr().out and run.is_dir()
    assert liveness.delete_if_failed(str(run)).state == liveness.UNKNOWN and run.is_dir()


def test_without_locks_a_trainer_whose_process_is_gone_from_this_host_is_failed(tmp_path, monkeypatch):
    run = _killed_run(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _heartbeat(run, socket.gethostname(), dead.pid)  # written by the trainer, whose process is gone: proof
    _no_locks(monkeypatch)
    assert liveness.run_state(str(run)).state == liveness.FAILED


def test_a_trainer_on_a_file_system_without_locks_still_moves_the_earlier_attempt_aside(tmp_path, monkeypatch, capsys,
                                                                                        own_lock_cleanup):
    run = _killed_run(tmp_path)
    _no_locks(monkeypatch)
    liveness.hold_run_lock(str(run))
    own_lock_cleanup.append(str(run))
    err = capsys.readouterr().err
    assert "no lock in" in err and "results.jsonl.interrupted1" in err
    assert not (run / "results.jsonl").exists() and (run / "results.jsonl.interrupted1").read_text() == '{"step": 0}\n'
    beat = json.loads((run / liveness.HEARTBEAT_FILE).read_text())
    assert beat["pid"] == os.getpid()


# --- node-local locks: the heartbeat ------------------------------------------------------------------------------
def test_a_fresh_heartbeat_from_another_host_is_running_and_kept_until_both_are_stale(tmp_path, capsys):
    run = _killed_run(tmp_path)  # its lock looks free here: node-local locks (BeeGFS, Lustre localflock)
    _heartbeat(run, "node-17", 4242, age=20)
    state = liveness.run_state(str(run))
    assert state.state == liveness.RUNNING and "node-17" in state.why, state
    assert sweep.delete_incomplete(argparse.Namespace(skip_confirmation=True), [_job(run)]) == 0
    assert "About to delete 0 jobs" in capsys.readouterr().out and run.is_dir()
    assert liveness.delete_if_failed(str(run)).state == liveness.RUNNING and run.is_dir()
    _heartbeat(run, "node-17", 4242, age=liveness.STALE_SECONDS + 5)  # both stale now
    assert liveness.run_state(str(run)).state == liveness.FAILED
    assert liveness.delete_if_failed(str(run)).state == liveness.FAILED and not run.exists()
    assert not list(tmp_path.iterdir())  # no tombstone left behind


def test_the_trainer_touches_its_heartbeat_and_removes_it_when_it_ends(tmp_path, monkeypatch, own_lock_cleanup):
    monkeypatch.setattr(liveness, "HEARTBEAT_SECONDS", 0.05)
    run = tmp_path / "run"
    run.mkdir()
    liveness.hold_run_lock(str(run))
    own_lock_cleanup.append(str(run))
    beat = run / liveness.HEARTBEAT_FILE
    os.utime(beat, (time.time() - 1000, time.time() - 1000))
    deadline = time.time() + 10
    while time.time() - beat.stat().st_mtime > 100 and time.time() < deadline:
        time.sleep(0.05)
    assert time.time() - beat.stat().st_mtime < 100  # touched again
    liveness.release_run_lock(str(run))
    assert not beat.exists()


def test_a_trainer_that_crashes_takes_its_heartbeat_along(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    crashed = subprocess.run([sys.executable, "-c", "import sys\nfrom domainbed_align.runs import liveness\n"
                              "liveness.hold_run_lock(sys.argv[1]); raise RuntimeError('diverged')", str(run)],
                             capture_output=True, text=True)
    assert crashed.returncode == 1 and "diverged" in crashed.stderr
    assert not (run / liveness.HEARTBEAT_FILE).exists()  # another host sees it stopped at once, not in 3 minutes
    assert liveness.run_state(str(run)).state == liveness.FAILED


# --- the lock dies with the trainer, not with its forked workers ----------------------------------------------------
TRAINER_WITH_A_WORKER = """
import os, sys, time
from domainbed_align.runs import liveness
liveness.hold_run_lock(sys.argv[1])
worker = os.fork()  # as a DataLoader worker is forked
if worker == 0:
    time.sleep(60)
    os._exit(0)
print(worker, flush=True)
time.sleep(60)
"""


def test_killing_the_trainer_ends_running_at_once_though_its_forked_worker_lives(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER_WITH_A_WORKER, str(run)], stdout=subprocess.PIPE,
                               text=True)
    worker = int(trainer.stdout.readline())
    try:
        assert liveness.run_state(str(run)).state == liveness.RUNNING
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
        killed = time.monotonic()
        while liveness.run_state(str(run)).state == liveness.RUNNING and time.monotonic() - killed < 10:
            time.sleep(0.05)
        seconds = time.monotonic() - killed
        os.kill(worker, 0)  # the worker still lives (it would hold a flock, shared with it at fork)
        state = liveness.run_state(str(run))
        assert state.state == liveness.FAILED and seconds < 2, (state, seconds)
    finally:
        os.kill(worker, signal.SIGKILL)


# --- a finished folder is never trained into again ------------------------------------------------------------------
def test_a_finished_folder_is_refused_with_the_command_that_reruns_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    (run / "done").write_text("done")
    with pytest.raises(liveness.RunFinished) as refused:
        liveness.hold_run_lock(str(run))
    message = str(refused.value)
    assert "finished run ('done' is there)" in message and f"mv {run} {run}.old && python" in message
    assert (run / "results.jsonl").read_text() == '{"step": 0}\n{"step": 1}\n'
    assert str(run) not in liveness._held and not (run / liveness.HEARTBEAT_FILE).exists()


def test_an_earlier_attempts_selected_checkpoint_goes_aside_with_its_results(tmp_path, own_lock_cleanup):
    run = _killed_run(tmp_path)
    (run / "model_selected.pkl").write_bytes(b"attempt 1")
    liveness.hold_run_lock(str(run))
    own_lock_cleanup.append(str(run))
    assert (run / "model_selected.pkl.interrupted1").read_bytes() == b"attempt 1"
    assert not (run / "model_selected.pkl").exists()


# --- delete_incomplete judges again, under the lock, right before deleting -----------------------------------------
def test_delete_incomplete_keeps_a_run_that_started_while_it_asked(tmp_path, monkeypatch, capsys):
    started, dead = _killed_run(tmp_path, "started"), _killed_run(tmp_path, "dead")
    holder = None

    def answer(prompt: str) -> str:  # minutes pass at the prompt: one of the runs is launched again meanwhile
        nonlocal holder
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom domainbed_align.runs import liveness\n"
                                   "liveness.hold_run_lock(sys.argv[1]); print('held', flush=True); time.sleep(60)",
                                   str(started)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        return "y"

    monkeypatch.setattr("builtins.input", answer)
    try:
        assert sweep.delete_incomplete(argparse.Namespace(skip_confirmation=False), [_job(started), _job(dead)]) == 0
        out = capsys.readouterr().out
        assert "About to delete 2 jobs" in out and "Deleted 1 jobs!" in out and f"kept {started}: it is running" in out
        assert started.is_dir() and not dead.exists()
        assert (started / "results.jsonl.interrupted1").exists()  # the new attempt's, nothing lost
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()


def test_a_run_never_started_is_judged_without_leaving_a_lock_file(tmp_path):
    queued = tmp_path / "queued"
    queued.mkdir()
    liveness.write_job_record(str(queued), **liveness.launcher_record("local"))  # this process: alive, queued
    assert liveness.delete_if_failed(str(queued)).state == liveness.QUEUED
    assert not (queued / liveness.LOCK_FILE).exists()  # its presence would say training had started
    assert liveness.run_state(str(queued)).state == liveness.QUEUED


def test_a_trainer_waits_out_a_brief_check_instead_of_failing(tmp_path, own_lock_cleanup):
    run = tmp_path / "run"
    run.mkdir()
    (run / liveness.LOCK_FILE).write_text("")
    checker = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\nh = open(sys.argv[1])\n"
                                "fcntl.lockf(h, fcntl.LOCK_SH); print('held', flush=True); time.sleep(0.5)",
                                str(run / liveness.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    assert checker.stdout.readline().strip() == "held"
    liveness.hold_run_lock(str(run))  # `status` held a shared lock for a moment: no "being trained" error
    own_lock_cleanup.append(str(run))
    checker.wait()
    assert (run / liveness.LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")


def test_a_launch_whose_run_states_break_keeps_launching(tmp_path, monkeypatch, capsys):
    """The progress bar is a view: an error reading run states must not end launch's loop (and its launcher)."""
    import types

    ran = []

    def slow_launcher(commands):
        time.sleep(0.3)
        ran.extend(commands)

    standin = types.ModuleType("domainbed")
    standin.command_launchers = types.SimpleNamespace(REGISTRY={"slow": slow_launcher})
    standin_sweep = types.SimpleNamespace(Job=types.SimpleNamespace(
        launch=lambda jobs, launcher: launcher([job.output_dir for job in jobs])))
    standin.scripts = types.SimpleNamespace(sweep=standin_sweep)
    monkeypatch.setitem(sys.modules, "domainbed", standin)
    monkeypatch.setitem(sys.modules, "domainbed.command_launchers", standin.command_launchers)
    monkeypatch.setitem(sys.modules, "domainbed.scripts", standin.scripts)
    monkeypatch.setitem(sys.modules, "domainbed.scripts.sweep", standin_sweep)
    jobs = [_job(tmp_path / "a"), _job(tmp_path / "b")]
    calls = []
    real = sweep.run_states

    def flaky(jobs_):
        calls.append(1)
        if len(calls) > 1 and not ran:  # before launching, and after, it works; the progress loop's calls fail
            raise OSError(errno.ENOLCK, "No locks available")
        return real(jobs_)

    monkeypatch.setattr(sweep, "run_states", flaky)
    options = argparse.Namespace(command_launcher="slow", skip_confirmation=True, detach=False, poll_seconds=0.05)
    sweep.launch(options, jobs)
    assert ran == [str(tmp_path / "a"), str(tmp_path / "b")] and len(calls) > 2
    assert "progress cannot be read" in capsys.readouterr().err
