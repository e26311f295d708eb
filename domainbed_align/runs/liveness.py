"""Whether a run of a sweep is done, running, queued, failed, not launched or unknown, for every launcher.

Three pieces of evidence, all files in the run's folder (no DomainBed needed here):

- ``.domainbed_align.lock``: train.py's process holds an exclusive POSIX record lock (``fcntl.lockf``) on it from
  start-up (the hook takes it when train.py opens its ``out.txt``) until it exits, however it exits (the kernel drops
  it with the process, ``kill -9`` included). Record locks, not ``flock``: the DataLoader workers train.py forks do not
  inherit them, so a worker that outlives its trainer, or hangs on a slow file system, does not keep a dead run
  "running". Held: the run is training. Present but free: training started and ended without ``done``.
- ``.domainbed_align_heartbeat.json``: which process trains (host, pid); train.py touches it every
  :data:`HEARTBEAT_SECONDS`. Where locks are node-local (BeeGFS by default, Lustre ``localflock``) the lock of a run
  training on another host looks free: a heartbeat younger than :data:`STALE_SECONDS` still says running. On the
  trainer's own host the lock is trusted and a heartbeat whose process is gone counts for nothing.
- ``.domainbed_align_job.json``: what launched it (launcher, host and pid of the launching process, Slurm job id,
  log file, exit code), written by our sweep command and our launchers.

A lock call that fails (ENOLCK: some NFS set-ups) makes the lock *unknown*, never free: without other proof that the
run ended (its Slurm job or launcher ended, its trainer's process is gone from this host), the run is
:data:`UNKNOWN`, and nothing is deleted. A run is *live* (``delete_incomplete`` keeps it) while it trains, or while
its launcher can still start it: the launching process is alive on this host and training has not started, or Slurm
lists its job as pending/running. :func:`delete_if_failed` judges a run again under its lock and deletes it only if
it is still failed.

A finished folder (``done``) is never trained into again: train.py is refused there, with the command to rerun it
in a fresh folder (train.py appends, so a second attempt would be counted with the first).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

from domainbed_align import atomic
from domainbed_align.errors import DomainbedAlignError

LOCK_FILE = ".domainbed_align.lock"
JOB_FILE = ".domainbed_align_job.json"
HEARTBEAT_FILE = ".domainbed_align_heartbeat.json"
HEARTBEAT_SECONDS = 30.0  # how often the trainer touches its heartbeat
STALE_SECONDS = 180.0  # a heartbeat older than this says nothing (six missed beats: slack for clock skew, slow I/O)
LOCK_WAIT_SECONDS = 2.0  # a trainer waits this long for a lock that `status` or `delete_incomplete` holds briefly

DONE, RUNNING, QUEUED, FAILED, NOT_LAUNCHED, UNKNOWN = "done", "running", "queued", "failed", "not launched", "unknown"
STATES = (DONE, RUNNING, QUEUED, FAILED, NOT_LAUNCHED, UNKNOWN)
LIVE = (RUNNING, QUEUED)
# squeue's states of a job that is still going to run (or runs): everything else has ended
SLURM_LIVE_STATES = {"PENDING": QUEUED, "CONFIGURING": QUEUED, "REQUEUED": QUEUED, "REQUEUE_HOLD": QUEUED,
                     "REQUEUE_FED": QUEUED, "RESIZING": RUNNING, "RUNNING": RUNNING, "COMPLETING": RUNNING,
                     "SUSPENDED": RUNNING, "STAGE_OUT": RUNNING, "SIGNALING": RUNNING}

_HELD_ERRNOS = (errno.EACCES, errno.EAGAIN)  # lockf's "another process holds it" (POSIX allows either)
_LOCK_HELD, _LOCK_FREE, _LOCK_ABSENT, _LOCK_UNKNOWN = "held", "free", "absent", "unknown"


class RunAlreadyTraining(DomainbedAlignError):
    pass


class RunFinished(DomainbedAlignError):
    """train.py started in a folder whose run is done."""


class RunFolderGone(DomainbedAlignError):
    pass


@dataclass
class _Holder:
    handle: IO[str] | None  # the open lock file (None: the file system refused the lock)
    stop: threading.Event
    pid: int


_held: dict[str, _Holder] = {}  # run folder -> what this process holds for it (until exit)


def _this_command() -> str:
    """This process's command line, as the user would type it again."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return shlex.join(["python", "-m", spec.name, *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def _same_file(handle: IO[str], path: str) -> bool:
    """Whether ``handle`` is still the file at ``path`` (a deleter may have removed it while we waited)."""
    try:
        mine, there = os.fstat(handle.fileno()), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _lock_exclusive(run_dir: str) -> tuple[IO[str] | None, OSError | None]:
    """Open the run's lock file and take it exclusively: (handle, None), or (None, the error) when the file system
    refuses locks. Raises :class:`RunAlreadyTraining` when a live process holds it, :class:`RunFolderGone` when the
    folder disappears meanwhile."""
    path = os.path.join(run_dir, LOCK_FILE)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            handle = open(path, "a+")
        except FileNotFoundError:
            raise RunFolderGone(f"{run_dir} was removed while train.py started (by delete_incomplete?); launch the "
                                f"run again.") from None
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in _HELD_ERRNOS:
                handle.close()
                return None, error
            if time.monotonic() < deadline:  # `status` or `delete_incomplete` probing it: a moment
                handle.close()
                time.sleep(0.1)
                continue
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunAlreadyTraining(f"{run_dir} is being trained right now by {holder}; wait for it, or stop it, "
                                     f"before starting this run again.") from None
        if _same_file(handle, path):
            return handle, None
        handle.close()  # we locked a file a deleter had just removed: start over on the one there now


def hold_run_lock(run_dir: str) -> None:
    """Take the run's lock for the life of this process (train.py's) and start its heartbeat.

    Refused (:class:`RunFinished`) in a finished folder: train.py appends, so a second attempt would be counted with
    the first. Another live process training the same folder is an error too: two trainings would interleave one
    results.jsonl. A results.jsonl left by an earlier attempt that never finished (killed, preempted, requeued:
    train.py cannot resume) is moved aside, whatever the lock did, so the run counts once."""
    run_dir = os.path.abspath(run_dir)
    if run_dir in _held:
        return
    if os.path.exists(os.path.join(run_dir, "done")):
        moved = shlex.quote(run_dir + ".old")
        raise RunFinished(
            f"{run_dir} holds a finished run ('done' is there); training into it again would append a second attempt "
            f"to its results.jsonl, counted with the first. To train it again, move it aside first: "
            f"mv {shlex.quote(run_dir)} {moved} && {_this_command()}")
    handle, error = _lock_exclusive(run_dir)
    if handle is None:  # a file system without locks (some network mounts): train anyway, on the heartbeat alone
        beat, trainer = _heartbeat_of(run_dir)
        if beat == _BEAT_FRESH and trainer.get("host") == socket.gethostname() and trainer.get("pid") != os.getpid():
            # alive on this host: certain (another host's heartbeat may be a preempted run's, requeued here)
            raise RunAlreadyTraining(f"{run_dir} is being trained right now by pid {trainer.get('pid')} on this "
                                     f"host; wait for it, or stop it, before starting this run again.")
        sys.stderr.write(f"domainbed-align: warning: no lock in {run_dir} ({error.strerror}): 'sweep status' tells "
                         f"this run is training from its heartbeat only, and shows it unknown once it stops\n")
    _move_earlier_attempt_aside(run_dir)
    if handle is not None:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
    holder = _Holder(handle, threading.Event(), os.getpid())
    _held[run_dir] = holder
    _start_heartbeat(run_dir, holder)


def _move_earlier_attempt_aside(run_dir: str) -> None:
    results = os.path.join(run_dir, "results.jsonl")
    if not os.path.exists(results):
        return
    attempt = 1
    while os.path.exists(f"{results}.interrupted{attempt}"):
        attempt += 1
    os.replace(results, f"{results}.interrupted{attempt}")
    moved = f"results.jsonl.interrupted{attempt}"
    selected = os.path.join(run_dir, "model_selected.pkl")  # that attempt's: it is not this one's selection
    if os.path.exists(selected):
        os.replace(selected, f"{selected}.interrupted{attempt}")
        moved += f" (and its model_selected.pkl, model_selected.pkl.interrupted{attempt})"
    sys.stderr.write(f"domainbed-align: an earlier attempt of this run ended without 'done'; its results.jsonl is "
                     f"now {moved} (train.py restarts from step 0)\n")


def release_run_lock(run_dir: str) -> None:
    """Give up what :func:`hold_run_lock` took (train.py never needs it: process exit does the same)."""
    holder = _held.pop(os.path.abspath(run_dir), None)
    if holder is None:
        return
    _stop_heartbeat(os.path.abspath(run_dir), holder)
    if holder.handle is not None:
        holder.handle.close()


# --- heartbeat --------------------------------------------------------------------------------------------------
_BEAT_FRESH, _BEAT_STALE, _BEAT_GONE, _BEAT_NONE = "fresh", "stale", "gone", "none"


def _start_heartbeat(run_dir: str, holder: _Holder) -> None:
    path = os.path.join(run_dir, HEARTBEAT_FILE)
    content = {"host": socket.gethostname(), "pid": holder.pid, "since": time.time()}
    try:
        atomic.write_json(path, content, sort_keys=True)
    except OSError as error:  # the run trains all the same; only another host's view of it suffers
        sys.stderr.write(f"domainbed-align: warning: cannot write {path} ({error.strerror}): from another host this "
                         f"run may look stopped while it trains\n")

    def beat() -> None:
        while not holder.stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(path)
            except FileNotFoundError:
                if holder.stop.is_set():  # removed by _stop_heartbeat meanwhile: it stays removed
                    return
                with contextlib.suppress(OSError):  # removed: write it again (not if the folder itself is gone)
                    atomic.write_json(path, content, sort_keys=True)
            except OSError:  # a file-system hiccup: the next beat tries again
                pass

    # a thread: forked DataLoader workers do not inherit it, so they never keep a dead run's heartbeat going
    threading.Thread(target=beat, name="domainbed-align-heartbeat", daemon=True).start()
    atexit.register(_stop_heartbeat, run_dir, holder)


def _stop_heartbeat(run_dir: str, holder: _Holder) -> None:
    """At exit, crash included: the run stops looking alive from other hosts at once."""
    if os.getpid() != holder.pid:  # a forked child running atexit handlers is not the trainer
        return
    holder.stop.set()
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(run_dir, HEARTBEAT_FILE))


def _heartbeat_of(run_dir: str) -> tuple[str, dict]:
    """(fresh/stale/gone/none, what the heartbeat file says): gone = its process is no longer alive on this host."""
    path = os.path.join(run_dir, HEARTBEAT_FILE)
    try:
        modified = os.stat(path).st_mtime
        with open(path) as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return _BEAT_NONE, {}
    if not isinstance(content, dict):
        content = {}
    if content.get("host") == socket.gethostname() and not atomic.process_alive(content.get("pid")):
        return _BEAT_GONE, content
    content["age"] = time.time() - modified
    return (_BEAT_FRESH if content["age"] < STALE_SECONDS else _BEAT_STALE), content


def _heartbeat_words(beat: str, trainer: dict) -> str:
    who = f"pid {trainer.get('pid')} on {trainer.get('host')}"
    if beat == _BEAT_NONE:
        return "no heartbeat"
    if beat == _BEAT_GONE:
        return f"its trainer ({who}) is gone"
    return f"its heartbeat ({who}) is {trainer['age']:.0f} s old"


# --- the lock, seen from outside --------------------------------------------------------------------------------
@contextlib.contextmanager
def _shared_lock(run_dir: str, create: bool = False) -> Iterator[tuple[str, str]]:
    """(held/free/absent/unknown, why unknown) of the run's lock; while the block runs, a free lock stays taken here
    (shared), so no trainer can start meanwhile. Shared locks both ways (``lockf`` for trainers of this version,
    ``flock`` for earlier ones): two checkers never block each other, and both conflict with a trainer's.
    ``create``: make the lock file when there is none (then never "absent")."""
    if os.path.abspath(run_dir) in _held:  # ours: probing would drop it (closing any handle on the file drops it)
        yield _LOCK_HELD, ""
        return
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        handle = open(path, "a+" if create else "r")
    except FileNotFoundError:
        yield _LOCK_ABSENT, ""
        return
    except OSError as error:
        yield _LOCK_UNKNOWN, f"its lock file cannot be opened ({error.strerror})"
        return
    with handle:  # closing releases both locks
        yield _probe(handle)


def _probe(handle: IO[str]) -> tuple[str, str]:
    """Take shared locks on the open lock file: held (by a trainer), free (now shared-locked here) or unknown."""
    failure = ""
    try:
        fcntl.lockf(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in _HELD_ERRNOS:
            return _LOCK_HELD, ""
        failure = (f"the file system refuses locks here ({errno.errorcode.get(error.errno, error.errno)}: "
                   f"{error.strerror})")
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _LOCK_HELD, ""
    except OSError:  # only earlier versions' trainers used flock: lockf's answer stands
        pass
    return (_LOCK_UNKNOWN, failure) if failure else (_LOCK_FREE, "")


def lock_is_held(run_dir: str) -> bool:
    """Whether a process holds the run's lock now (``False`` when the lock file does not exist or cannot be
    checked: :func:`run_state` tells those apart)."""
    with _shared_lock(run_dir) as (lock, _):
        return lock == _LOCK_HELD


def write_job_record(run_dir: str, **fields: object) -> None:
    """Merge ``fields`` into the run's launch record (atomically: a reader never sees half a file)."""
    record = read_job_record(run_dir) or {}
    record.update(fields)
    atomic.write_json(os.path.join(run_dir, JOB_FILE), record, sort_keys=True)


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
    state: str  # one of STATES
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


def _judge(run_dir: str, slurm: dict[str, str] | None, lock: str, lock_why: str, started: bool) -> RunState:
    """The state from the evidence: the lock's (probed by the caller), the heartbeat, done, the launch record."""
    if os.path.exists(os.path.join(run_dir, "done")):
        return RunState(DONE)
    if lock == _LOCK_HELD:
        return RunState(RUNNING)
    beat, trainer = _heartbeat_of(run_dir)
    if beat == _BEAT_FRESH:  # node-local locks: a run training on another host has a lock that looks free here
        return RunState(RUNNING, why=f"its lock looks free from here, but {_heartbeat_words(beat, trainer)}")
    record = read_job_record(run_dir)
    job_id = (record or {}).get("slurm_job_id")
    slurm_state = (slurm if slurm is not None else slurm_states([job_id])).get(str(job_id)) if job_id else None
    if slurm_state in SLURM_LIVE_STATES:  # a requeued job is queued again even after it started
        return RunState(SLURM_LIVE_STATES[slurm_state])
    if lock == _LOCK_UNKNOWN and beat != _BEAT_GONE:  # never "failed" on a lock that could not be checked
        return RunState(UNKNOWN, _log_of(run_dir, record),
                        f"{lock_why}, and nothing proves it ended ({_heartbeat_words(beat, trainer)}); it is not "
                        f"deleted: check it on its host, and remove it by hand if it is dead")
    if slurm_state:
        return RunState(FAILED, _log_of(run_dir, record), f"Slurm job {job_id} ended {slurm_state} without 'done'")
    if record and "exit_code" in record:
        return RunState(FAILED, _log_of(run_dir, record), f"exit code {record['exit_code']}")
    if started:
        return RunState(FAILED, _log_of(run_dir, record), "training stopped without 'done' (killed or crashed)")
    if job_id:
        return RunState(FAILED, _log_of(run_dir, record), f"Slurm no longer lists job {job_id} and it never trained")
    if record and record.get("host") == socket.gethostname() and atomic.process_alive(record.get("launcher_pid")):
        return RunState(QUEUED)  # its launcher, alive here, has not started it yet
    if record:
        return RunState(FAILED, _log_of(run_dir, record), "its launcher ended without starting it")
    return RunState(FAILED, os.path.join(run_dir, "err.txt"),
                    "incomplete, with no launch record (launched by another tool, or killed)")


def _slurm_for(run_dir: str, slurm: dict[str, str] | None) -> dict[str, str] | None:
    """``slurm``, or squeue's answer for this run's job (asked before any lock is taken: squeue may be slow)."""
    if slurm is not None:
        return slurm
    job_id = (read_job_record(run_dir) or {}).get("slurm_job_id")
    return slurm_states([job_id]) if job_id else {}


def run_state(run_dir: str, slurm: dict[str, str] | None = None) -> RunState:
    """The state of one run folder; ``slurm``: :func:`slurm_states` of the recorded job ids (one squeue call for a
    whole sweep)."""
    if os.path.exists(os.path.join(run_dir, "done")):
        return RunState(DONE)
    if not os.path.isdir(run_dir):
        return RunState(NOT_LAUNCHED)
    slurm = _slurm_for(run_dir, slurm)
    with _shared_lock(run_dir) as (lock, lock_why):
        pass  # released at once: a trainer starting now must not wait on us
    return _judge(run_dir, slurm, lock, lock_why, started=lock != _LOCK_ABSENT)


def delete_if_failed(run_dir: str, slurm: dict[str, str] | None = None) -> RunState:
    """Judge the run again under its lock, immediately before removing it, and remove it only if it is failed
    (``delete_incomplete`` asks for confirmation between judging and deleting: the run may have started since).
    Returns the state it was judged in; the folder is gone exactly when that is :data:`FAILED`. While the lock is
    taken here, a trainer starting in the folder waits. Raises :class:`SlurmUnavailable` when squeue cannot answer
    about its job, ``OSError`` when the folder cannot be removed (nothing is removed then)."""
    if not os.path.isdir(run_dir):
        return RunState(NOT_LAUNCHED)
    slurm = _slurm_for(run_dir, slurm)
    lock_path = os.path.join(run_dir, LOCK_FILE)
    started = os.path.exists(lock_path)
    tombstone = None
    with _shared_lock(run_dir, create=True) as (lock, lock_why):  # created: a trainer opening it now waits for us
        state = _judge(run_dir, slurm, lock, lock_why, started)
        if state.state == FAILED:
            # renamed under the lock (atomic: no trainer can start in it any more), removed once the lock file is
            # closed (NFS cannot remove a folder holding an open file)
            parent, name = os.path.split(os.path.abspath(run_dir))
            tombstone = os.path.join(parent, f".{name}.deleting-{socket.gethostname()}-{os.getpid()}")
            os.rename(run_dir, tombstone)
        elif not started:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)  # ours: its presence would say training had started
    if tombstone is not None:
        shutil.rmtree(tombstone)
    return state
