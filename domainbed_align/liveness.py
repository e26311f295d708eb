"""Whether a run of a sweep is done, running, queued, failed or not launched, for every launcher.

Two pieces of evidence, both files in the run's folder (no DomainBed needed here):

- ``.domainbed_align.lock``: train.py's process holds an exclusive ``flock`` on it from start-up (the hook takes it
  when train.py opens its ``out.txt``) until it exits, however it exits (the kernel drops the lock of a process
  killed with ``kill -9``). Held: the run is training. Present but free: training started and ended without ``done``.
- ``.domainbed_align_job.json``: what launched it (launcher, host and pid of the launching process, Slurm job id,
  log file, exit code), written by our sweep command and our launchers.

A run is *live* (``delete_incomplete`` keeps it) while it trains, or while its launcher can still start it: the
launching process is alive on this host and training has not started, or Slurm lists its job as pending/running.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO, Iterable

from domainbed_align.errors import DomainbedAlignError

LOCK_FILE = ".domainbed_align.lock"
JOB_FILE = ".domainbed_align_job.json"

DONE, RUNNING, QUEUED, FAILED, NOT_LAUNCHED = "done", "running", "queued", "failed", "not launched"
LIVE = (RUNNING, QUEUED)
# squeue's states of a job that is still going to run (or runs): everything else has ended
SLURM_LIVE_STATES = {"PENDING": QUEUED, "CONFIGURING": QUEUED, "REQUEUED": QUEUED, "REQUEUE_HOLD": QUEUED,
                     "REQUEUE_FED": QUEUED, "RESIZING": RUNNING, "RUNNING": RUNNING, "COMPLETING": RUNNING,
                     "SUSPENDED": RUNNING, "STAGE_OUT": RUNNING, "SIGNALING": RUNNING}

_held: dict[str, IO[str]] = {}  # run folder -> the open lock file this process holds (kept open until exit)


class RunAlreadyTraining(DomainbedAlignError):
    pass


def hold_run_lock(run_dir: str) -> None:
    """Take the run's lock for the life of this process (train.py's). Another live process training the same folder
    is an error: two trainings would interleave one results.jsonl. A results.jsonl left by an earlier attempt that
    never finished (killed, preempted, requeued: train.py cannot resume) is moved aside, so the run counts once."""
    run_dir = os.path.abspath(run_dir)
    if run_dir in _held:
        return
    try:
        handle = open(os.path.join(run_dir, LOCK_FILE), "a+")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunAlreadyTraining(f"{run_dir} is being trained right now by {holder}; wait for it, or stop it, "
                                 f"before starting this run again.") from None
    except OSError as error:  # a file system without locks (some network mounts): train anyway, untracked
        sys.stderr.write(f"domainbed-align: warning: no lock in {run_dir} ({error.strerror}): 'sweep status' "
                         f"cannot tell this run is training; delete_incomplete may remove it while it runs\n")
        return
    results = os.path.join(run_dir, "results.jsonl")
    if os.path.exists(results) and not os.path.exists(os.path.join(run_dir, "done")):
        attempt = 1
        while os.path.exists(f"{results}.interrupted{attempt}"):
            attempt += 1
        os.replace(results, f"{results}.interrupted{attempt}")
        sys.stderr.write(f"domainbed-align: an earlier attempt of this run ended without 'done'; its results.jsonl "
                         f"is now results.jsonl.interrupted{attempt} (train.py restarts from step 0)\n")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _held[run_dir] = handle


def lock_is_held(run_dir: str) -> bool:
    """Whether a process holds the run's lock now (``False`` when the lock file does not exist)."""
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        handle = open(path)
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def write_job_record(run_dir: str, **fields: object) -> None:
    """Merge ``fields`` into the run's launch record (atomically: a reader never sees half a file)."""
    record = read_job_record(run_dir) or {}
    record.update(fields)
    path = os.path.join(run_dir, JOB_FILE)
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w") as handle:
        json.dump(record, handle, sort_keys=True)
    os.replace(partial, path)


def read_job_record(run_dir: str) -> dict | None:
    try:
        with open(os.path.join(run_dir, JOB_FILE)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):  # none, or damaged: as if unrecorded (the lock still tells a training run)
        return None
    return record if isinstance(record, dict) else None


def launcher_record(launcher: str, **fields: object) -> dict:
    """The fields every launcher records: who launches, from which process on which host, when."""
    return dict(launcher=launcher, host=socket.gethostname(), launcher_pid=os.getpid(), submitted=time.time(),
                **fields)


def _process_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:  # os.kill(-1, 0) would ask about every process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class SlurmUnavailable(DomainbedAlignError):
    """squeue could not say which jobs Slurm still has: their runs' states are unknown, so none may be judged."""


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Slurm's state of each job id (``123_4`` for an array task) that squeue still lists.

    Raises :class:`SlurmUnavailable` when squeue cannot answer: guessing "no longer listed" would show live runs
    as failed, and ``delete_incomplete`` would delete them."""
    ids = sorted({str(i) for i in job_ids if i})
    if not ids:
        return {}
    # -r: one line per array task; without it a pending array is one compressed line, 123_[0-2]
    command = ["squeue", "-h", "-r", "--states=all", "-j", ",".join(ids), "-o", "%i|%T"]
    jobs = f"{len(ids)} Slurm job{'s' if len(ids) > 1 else ''} ({ids[0]}{', ...' if len(ids) > 1 else ''})"
    try:
        listing = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SlurmUnavailable(f"runs here were submitted as {jobs}, but squeue is not on PATH: run this where "
                               f"Slurm's commands are (the states of those runs are unknown; nothing was changed)")
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SlurmUnavailable(f"squeue did not answer about {jobs} ({error}): their runs' states are unknown and "
                               f"nothing was changed; try again when Slurm answers")
    if listing.returncode != 0:
        if "Invalid job id" in listing.stderr:  # squeue's answer when it knows none of them any more
            return {}
        message = listing.stderr.strip() or listing.stdout.strip() or "no message"
        raise SlurmUnavailable(f"squeue failed (exit code {listing.returncode}: {message}) about {jobs}: their "
                               f"runs' states are unknown and nothing was changed; try again when Slurm answers")
    states = {}
    for line in listing.stdout.splitlines():
        job_id, _, state = line.partition("|")
        states[job_id.strip()] = state.strip()
    return states


@dataclass(frozen=True)
class RunState:
    state: str  # DONE, RUNNING, QUEUED, FAILED, NOT_LAUNCHED
    log: str | None = None  # where to look when it failed
    why: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE


def _log_of(run_dir: str, record: dict | None) -> str:
    """The file that tells why: the launcher's log when train.py never started, else train.py's own err.txt."""
    err = os.path.join(run_dir, "err.txt")
    launcher_log = (record or {}).get("log")
    if launcher_log and (not os.path.exists(err) or not os.path.exists(os.path.join(run_dir, LOCK_FILE))):
        return str(launcher_log)
    return err


def run_state(run_dir: str, slurm: dict[str, str] | None = None) -> RunState:
    """The state of one run folder; ``slurm``: :func:`slurm_states` of the recorded job ids (one squeue call for a
    whole sweep)."""
    if os.path.exists(os.path.join(run_dir, "done")):
        return RunState(DONE)
    if not os.path.isdir(run_dir):
        return RunState(NOT_LAUNCHED)
    if lock_is_held(run_dir):
        return RunState(RUNNING)
    record = read_job_record(run_dir)
    started = os.path.exists(os.path.join(run_dir, LOCK_FILE))
    job_id = (record or {}).get("slurm_job_id")
    if job_id:
        slurm_state = (slurm if slurm is not None else slurm_states([job_id])).get(str(job_id))
        if slurm_state in SLURM_LIVE_STATES:  # a requeued job is queued again even after it started
            return RunState(SLURM_LIVE_STATES[slurm_state])
        if slurm_state:
            return RunState(FAILED, _log_of(run_dir, record), f"Slurm job {job_id} ended {slurm_state} without 'done'")
    if record and "exit_code" in record:
        return RunState(FAILED, _log_of(run_dir, record), f"exit code {record['exit_code']}")
    if started:
        return RunState(FAILED, _log_of(run_dir, record), "training stopped without 'done' (killed or crashed)")
    if job_id:
        return RunState(FAILED, _log_of(run_dir, record), f"Slurm no longer lists job {job_id} and it never trained")
    if record and record.get("host") == socket.gethostname() and _process_alive(record.get("launcher_pid")):
        return RunState(QUEUED)  # its launcher, alive here, has not started it yet
    if record:
        return RunState(FAILED, _log_of(run_dir, record), "its launcher ended without starting it")
    return RunState(FAILED, os.path.join(run_dir, "err.txt"),
                    "incomplete, with no launch record (launched by another tool, or killed)")
