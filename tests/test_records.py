"""The sweep-output checker alone (no DomainBed): which lines are damaged, and the message."""

import pytest

from domainbed_align.errors import ResultsFileError
from domainbed_align.runs.records import check_results_files, damaged_lines


def _write(root, run, content: bytes):
    (root / run).mkdir(parents=True, exist_ok=True)
    (root / run / "results.jsonl").write_bytes(content)


def test_finds_each_kind_of_damage_and_nothing_else(tmp_path):
    _write(tmp_path, "ok", b'{"a": 1}\n{"a": 2}\n')
    _write(tmp_path, "partial", b'{"a": 1}\n{"a": ')
    _write(tmp_path, "list", b'[1, 2]\n')
    _write(tmp_path, "binary", b'{"a": 1}\n\xff\xfe\n')
    _write(tmp_path, "no_final_newline", b'{"a": 1}\n{"a": 2}')  # upstream drops each line's last character
    _write(tmp_path, "blank_line", b'{"a": 1}\n\n{"a": 2}\n')
    _write(tmp_path, "crlf", b'{"a": 1}\r\n{"a": 2}\r\n')  # text mode reads these as plain newlines
    (tmp_path / "empty_run").mkdir()  # a run that never wrote a checkpoint is not damaged
    found = {(path.parent.name, number): reason for path, number, reason in damaged_lines(tmp_path)}
    assert set(found) == {("partial", 2), ("list", 1), ("binary", 0), ("no_final_newline", 2), ("blank_line", 2)}
    assert found[("no_final_newline", 2)] == "a complete record without its final newline (add one)"
    assert found[("partial", 2)].startswith("not JSON")
    assert found[("list", 1)] == "a JSON list, not a record"
    assert found[("binary", 0)].startswith("not UTF-8 text")


def test_message_names_files_counts_the_rest_and_says_the_fix(tmp_path):
    for index in range(7):
        _write(tmp_path, f"run{index}", b'{"a": 1}\n{')
    with pytest.raises(ResultsFileError) as raised:
        check_results_files(tmp_path)
    message = str(raised.value)
    assert message.count("line 2: not JSON") == 5 and "(and 2 more)" in message
    assert "delete the damaged line" in message and "Nothing was changed" in message
    assert "\n" not in message


def test_intact_folder_passes_and_missing_folder_is_named(tmp_path):
    _write(tmp_path, "ok", b'{"a": 1}\n')
    check_results_files(tmp_path)  # no error
    with pytest.raises(ResultsFileError, match="'.*nowhere' is not a folder"):
        check_results_files(tmp_path / "nowhere")


# --- what tables and evaluate read: whole reasons, finished runs -------------------------------------------------
import contextlib
import json
import os
import socket
import subprocess
import sys

from domainbed_align.runs import liveness
from domainbed_align.report.sweep_records import default_steps
from domainbed_align.runs.records import read_results, sweep_folder, unfinished_runs, unfinished_summary


@contextlib.contextmanager
def lock_held_elsewhere(lock_file):
    """A trainer's lock on ``lock_file``, held by another process (as train.py holds it) until the block ends: a
    POSIX record lock and a flock both, so any version of liveness' check sees it taken."""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               "handle = open(sys.argv[1], 'a+')\n"
                               "fcntl.lockf(handle, fcntl.LOCK_EX); fcntl.flock(handle, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(600)", str(lock_file)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def _run(root, name, steps, last_step, done=False, steps_arg=None):
    """A run folder with checkpoints 0, 100, ... up to ``last_step`` of a train.py run of ``steps`` steps."""
    folder = root / name
    folder.mkdir(parents=True)
    lines = [json.dumps({"args": {"dataset": "TextureMNIST", "steps": steps_arg if steps_arg is not None else steps},
                         "step": step}) + "\n" for step in [*range(0, last_step, 100), last_step]]
    (folder / "results.jsonl").write_text("".join(lines))
    (folder / "err.txt").write_text("")
    if done:
        (folder / "done").write_text("done")
    return folder


def test_read_results_gives_every_reason_whole(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"args": {}, "step": 0}\n{"args": {}, "step": 1, "env0_in\n[1]\n{"step": 2}\n'
                    '{"args": {}, "step": 3}')
    records, damaged = read_results(path)
    assert [(number, record["step"]) for number, record in records] == [(1, 0)]
    assert damaged == [(2, "not JSON: Unterminated string starting at (column 25)"),
                       (3, "a JSON list, not a record"),
                       (4, "not a train.py checkpoint record (no 'args' or 'step')"),
                       (5, "cut off: no final newline")]
    path.write_bytes(b'\xff\n')
    assert read_results(path) == ([], [(0, "not UTF-8 text (invalid start byte at byte 0)")])


def test_finished_is_done_or_a_complete_copy_and_every_other_run_says_why(tmp_path):
    sweep = tmp_path / "sweep"
    runs = {
        "done": _run(sweep, "done", 500, 300, done=True),  # `done` is enough, whatever results.jsonl holds
        "copy": _run(sweep, "copy", 500, 499),  # results.jsonl alone, up to train.py's last step (499)
        "default_steps": _run(sweep, "default_steps", 5001, 5000, steps_arg=0),  # no --steps: N_STEPS 5001
        "killed": _run(sweep, "killed", 500, 400),
        "cut_copy": _run(sweep, "cut_copy", 500, 300),
        "running": _run(sweep, "running", 500, 499),  # at its last line, before `done`: still training
        "queued": sweep / "queued",
    }
    (runs["killed"] / liveness.LOCK_FILE).write_text("pid 1\n")  # free: the kernel dropped it at the kill
    (runs["running"] / liveness.LOCK_FILE).write_text("pid 2\n")
    runs["queued"].mkdir()
    liveness.write_job_record(str(runs["queued"]), launcher="local", host=socket.gethostname(),
                              launcher_pid=os.getpid())  # its launcher (this process) is alive
    with lock_held_elsewhere(runs["running"] / liveness.LOCK_FILE):
        assert runs["default_steps"] in unfinished_runs(runs.values())  # runs alone cannot know a dataset's N_STEPS
        why = unfinished_runs(runs.values(), default_steps)  # the report commands' (datasets' N_STEPS)
    assert {folder.name: reason for folder, reason in why.items()} == {
        "killed": "killed or failed", "cut_copy": "killed or failed", "running": "still running", "queued": "queued"}
    line = unfinished_summary(why, len(runs), counted=False, fix="--include_unfinished counts them")
    assert line == ("left out 4 of 7 runs, unfinished (no DomainBed `done` file): 2 killed or failed (cut_copy, "
                    "killed); 1 queued (queued); 1 still running (running); --include_unfinished counts them.")
    assert "\n" not in line


def test_a_results_folder_stands_for_its_runs(tmp_path):
    _run(tmp_path / "results" / "runs", "a", 500, 499)
    (tmp_path / "results" / "README.md").write_text("")
    assert sweep_folder(tmp_path / "results") == tmp_path / "results" / "runs"
    assert sweep_folder(tmp_path / "results" / "runs") == tmp_path / "results" / "runs"
    _run(tmp_path / "sweep", "runs", 500, 499)  # a run folder that happens to be named runs: not a results folder
    _run(tmp_path / "sweep", "b", 500, 499)
    assert sweep_folder(tmp_path / "sweep") == tmp_path / "sweep"


def test_a_run_whose_lock_cannot_be_checked_says_so_in_the_summary(tmp_path, monkeypatch):
    import errno
    import fcntl

    killed = _run(tmp_path, "nfs_run", 500, 300)
    (killed / liveness.LOCK_FILE).write_text("pid 1 on elsewhere\n")

    def no_locks(*args, **kwargs):  # NFS without lockd, some FUSE mounts
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    monkeypatch.setattr(fcntl, "flock", no_locks)
    why = unfinished_runs([killed])
    assert why == {killed: "state unknown (its lock could not be checked)"}  # not a bare "state unknown"
    assert unfinished_summary(why, 1, counted=False, fix="x") == (
        "left out 1 of 1 run, unfinished (no DomainBed `done` file): 1 state unknown (its lock could not be checked) "
        "(nfs_run); x.")


def test_diverged_reads_the_trainers_mean_over_the_interval():
    from domainbed_align.runs.records import diverged

    assert [diverged(r) for r in ({}, {"diverged": 0.0}, {"diverged": None}, {"diverged": "1"})] == [False] * 4
    assert diverged({"diverged": 0.01}) and diverged({"diverged": 1.0})  # fired late in the interval, or before it


def test_a_degenerate_mask_is_an_empty_or_full_mask_mean_past_warm_up():
    from domainbed_align.annotations import EMPTY_MASK, FULL_MASK
    from domainbed_align.runs.records import degenerate_mask

    assert (EMPTY_MASK, FULL_MASK) == (0.02, 0.98)  # the collapse monitor's thresholds (issue 29)
    past = {"in_warmup": 0.0}
    assert degenerate_mask({**past, "mask_mean": 0.0004}) and degenerate_mask({**past, "mask_mean": 0.99})
    healthy = ({**past, "mask_mean": 0.1}, {**past, "mask_mean": 0.031}, {**past, "mask_mean": EMPTY_MASK})
    assert not any(degenerate_mask(r) for r in healthy)
    # in warm-up (ALIGN reports zeros there, and a part of an interval is no collapse), or no mask at all: no
    undecided = ({"in_warmup": 1.0, "mask_mean": 0.0}, {"in_warmup": 0.49, "mask_mean": 0.01}, {"mask_mean": 0.0},
                 {"in_warmup": 0.0}, {}, {"in_warmup": 0.0, "mask_mean": None})
    assert not any(degenerate_mask(r) for r in undecided)
