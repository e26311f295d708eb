"""The GPU check (sweeps/gpu_check.sh, domainbed_align.gpu_check): its dry run on this CPU, the deadline that keeps
every finished stage's outputs, and the limits of what the device tool brings back."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, requires_upstream, upstream_root
from domainbed_align import gpu_check
from domainbed_align.gpu_check import OUTPUT_FILES, Outputs, Runner, Stage

SCRIPT = REPO / "sweeps" / "gpu_check.sh"
STAGES = ["versions", "cuda_tests", "bench", "data", "sweep", "solo", "evaluate", "tables", "figures"]


def _dry_run(out: Path, tmp_path: Path, domainbed: Path | None, deadline: int | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("DOMAINBED_ROOT", "OUT")}
    env.update(PYTHON=sys.executable, TMPDIR=str(tmp_path), HF_HUB_OFFLINE="1")
    if domainbed is not None:
        env["DOMAINBED_ROOT"] = str(domainbed)
    args = ["bash", str(SCRIPT), "--dry-run", *(["--deadline", str(deadline)] if deadline else []), str(out)]
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def _check_limits(out: Path) -> dict:
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= gpu_check.MAX_FILES and set(files) <= set(OUTPUT_FILES), files
    assert all((out / name).stat().st_size <= gpu_check.MAX_FILE_BYTES for name in files)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == files and summary["finished"] is True
    return summary


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_dry_run_without_domainbed_runs_what_it_can_and_says_why_not_the_rest(tmp_path):
    out = tmp_path / "out"
    process = _dry_run(out, tmp_path, domainbed=None)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    summary = _check_limits(out)
    stages = {stage["name"]: stage for stage in summary["stages"]}
    assert [stage["name"] for stage in summary["stages"]] == STAGES and summary["mode"] == "dry-run"
    assert [stages[name]["status"] for name in STAGES[:4]] == ["ok"] * 4, summary["stages"]
    for name in STAGES[4:]:
        assert stages[name]["status"] == "skipped" and "needs upstream DomainBed" in stages[name]["reason"]
        assert "DOMAINBED_ROOT" in stages[name]["reason"]
        assert f"{name}: skipped: needs upstream DomainBed" in process.stdout  # said as it happens too
    # versions and the device's name
    environment = summary["environment"]
    assert environment["torch"] and environment["device_name"] and environment["cuda_available"] is False
    assert environment["domainbed_align"]["hook_active"] is True and "problem" not in environment
    # the CUDA tests are collected and skip here; pytest's closing line is in the summary
    assert "skipped" in stages["cuda_tests"]["pytest"] and "passed" not in stages["cuda_tests"]["pytest"]
    assert "test_cuda_graph_replay_gives_the_eager_maps" in (out / "tests.txt").read_text()
    # the bench: the dry run's two methods, each over TimmERM and over its pass-count floor
    bench = json.loads((out / "bench.json").read_text())
    assert list(bench["methods"]) == ["TimmERM", "ALIGN"] and bench["methods"]["ALIGN"]["pass_floor"] == 3.3
    assert bench["methods"]["ALIGN"]["over_floor"] > 0 and bench["gradcam_over_forward"] > 0
    # every stage's log, bundled
    logs = _tar_names(out / "logs.tar.gz")
    assert {f"logs/{name}.log" for name in STAGES[:4]} <= set(logs) and "logs/versions.json" in logs
    assert set(os.listdir(out)) == {"summary.json", "tests.txt", "bench.json", "logs.tar.gz"}


def _runner(out: Path, work: Path, deadline_s: float) -> tuple[Runner, dict]:
    summary = {"started_at": time.time(), "environment": {}}
    return Runner(Outputs(out), work, time.time() + deadline_s, summary, finish_margin_s=0.5, min_stage_s=1.0), \
        summary


def _gone(pid: int, within: float = 5.0) -> bool:
    """Whether process ``pid`` has ended: no such process, or a zombie (dead; in a container whose PID 1 does not
    reap orphans, a killed orphan stays one)."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.1)
    return False


def test_a_stage_cut_by_the_deadline_leaves_the_earlier_outputs_and_no_process(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    runner, summary = _runner(out, work, deadline_s=5.0)
    pid_file = tmp_path / "grandchild.pid"
    stages = [
        Stage("first", [sys.executable, "-c", "print('first stage output')"], 30,
              collect=lambda stage, result: runner.outputs.put_file("tests.txt", work / "logs" / "first.log")),
        # a launcher-like stage: its child runs on after the stage's own process would be killed alone
        Stage("slow", ["bash", "-c", f"sleep 300 & echo $! > {pid_file}; echo started; wait"], 300,
              collect=lambda stage, result: runner.outputs.put_file("bench.json", work / "logs" / "slow.log")),
        Stage("last", [sys.executable, "-c", "print('never')"], 30, reserve_s=1.0),
    ]
    started = time.time()
    runner.run(stages)
    assert time.time() - started < 25  # 5 s deadline, 10 s of grace for SIGTERM at most
    statuses = [(stage["name"], stage["status"]) for stage in summary["stages"]]
    assert statuses == [("first", "ok"), ("slow", "timeout"), ("last", "skipped")]
    assert "deadline" in summary["stages"][2]["reason"] and "stopped by the deadline" in summary["stages"][1]["reason"]
    assert (out / "tests.txt").read_text() == "first stage output\n"  # the finished stage's output survived
    assert (out / "bench.json").read_text() == "started\n"  # and the cut one's output so far
    assert _gone(int(pid_file.read_text()))  # the whole process group went with the stage
    _check_limits(out)
    logs = _tar_names(out / "logs.tar.gz")
    assert logs == ["logs/first.log", "logs/slow.log"]


def test_sigterm_stops_the_stage_and_still_writes_the_summary(tmp_path):
    out, work, pid_file = tmp_path / "out", tmp_path / "work", tmp_path / "child.pid"
    code = textwrap.dedent(f"""
        import sys, time
        from domainbed_align.gpu_check import Outputs, Runner, Stage
        from pathlib import Path
        summary = {{"started_at": time.time(), "environment": {{}}}}
        runner = Runner(Outputs(Path({str(out)!r})), Path({str(work)!r}), time.time() + 300, summary)
        runner.run([Stage("long", ["bash", "-c", "sleep 300 & echo $! > {pid_file}; wait"], 300),
                    Stage("after", [sys.executable, "-c", "pass"], 30)])
    """)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    for _ in range(200):
        if pid_file.is_file() and pid_file.read_text().strip():
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # what the device tool does at its own limit
    stdout, _ = process.communicate(timeout=60)
    summary = _check_limits(out)
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [("long", "interrupted"), ("after", "interrupted")]
    assert summary["interrupted"].startswith("SIGTERM")
    assert _gone(int(pid_file.read_text()))
    assert "long: interrupted" in stdout


def test_outputs_keep_to_the_device_tools_limits(tmp_path):
    outputs = Outputs(tmp_path / "out", max_file_bytes=1000)
    with pytest.raises(ValueError, match="'notes.txt' is not one of the check's output files"):
        outputs.put_bytes("notes.txt", b"x")
    assert outputs.put_bytes("bench.json", b"x" * 1001) is False and not (tmp_path / "out" / "bench.json").exists()
    assert outputs.left_out == ["bench.json (1001 bytes, over the 1000-byte limit)"]
    base = tmp_path / "work"
    (base / "runs").mkdir(parents=True)
    (base / "runs" / "big.bin").write_bytes(os.urandom(5000))  # incompressible
    (base / "runs" / "results.jsonl").write_text('{"step": 0}\n')
    outputs.put_tar("runs.tar.gz", base, list((base / "runs").iterdir()))
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as tar:
        assert tar.getnames() == ["runs/results.jsonl"]  # the largest member went, the rest came back
    assert "runs.tar.gz: runs/big.bin (5000 bytes; the bundle would exceed 1000 bytes)" in outputs.left_out
    (tmp_path / "out" / "stray.txt").write_text("")
    with pytest.raises(SystemExit, match="already holds stray.txt: give the check an empty folder"):
        Outputs(tmp_path / "out")


def test_outputs_are_written_whole_and_durably_and_a_killed_writes_leftover_goes(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = out / f".bench.json.partial-{socket.gethostname()}-{dead.pid}-abc"  # an earlier check, kill -9-ed
    leftover.write_bytes(b'{"half')
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    outputs = Outputs(out)  # the leftover is no stranger: removed, not refused
    assert not leftover.exists()
    assert outputs.put_bytes("summary.json", b"{}\n") is True
    assert (out / "summary.json").read_bytes() == b"{}\n" and sorted(p.name for p in out.iterdir()) == ["summary.json"]
    assert synced  # on disk before the rename: a crash leaves the old file or the new one


def test_carry_replaces_the_previous_one_in_one_rename_or_keeps_it(tmp_path, monkeypatch, capsys):
    target = tmp_path / "carry"
    (target / "wheels").mkdir(parents=True)
    (target / "wheels" / "old.whl").write_bytes(b"old")
    monkeypatch.setattr(gpu_check, "subprocess", type("Git", (), {  # the DomainBed commit is there
        "run": staticmethod(lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, "", ""))}))

    def build(repo, target_, partial, wheels, git):
        (wheels / "new.whl").write_bytes(b"new")
        (partial / "MANIFEST.json").write_text(json.dumps({"bytes": 3, "tree_bytes": 1}))

    monkeypatch.setattr(gpu_check, "_build_carry", build)
    real_replace = os.replace

    def full_disk(src, dst):  # the new carry cannot be moved into place
        if Path(dst) == target and Path(src).name != "previous":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    args = ["carry", "--repo", str(REPO), "--out", str(target), "--domainbed_git", str(tmp_path)]
    monkeypatch.setattr(os, "replace", full_disk)
    assert gpu_check.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "previous carry, if any, is unchanged" in err
    assert [p.name for p in (target / "wheels").iterdir()] == ["old.whl"]  # never a moment without a carry
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carry"]  # nothing half-built left beside it
    monkeypatch.setattr(os, "replace", real_replace)
    assert gpu_check.main(args) == 0
    assert [p.name for p in (target / "wheels").iterdir()] == ["new.whl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carry"]


def _fake_run(folder: Path, algorithm: str, step_times: list, submitted: float, done_at: float | None) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps({"args": {"algorithm": algorithm}, "step": 100 * i, "step_time": t})
             for i, t in enumerate(step_times)]
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n" + '{"args": {"algor')  # + a line cut by a kill
    (folder / ".domainbed_align_job.json").write_text(json.dumps({"submitted": submitted}))
    if done_at is not None:
        (folder / "done").write_text("done")
        os.utime(folder / "done", (done_at, done_at))


def test_throughput_counts_runs_per_hour_from_launch_to_done(tmp_path):
    t0 = 1_000_000.0
    _fake_run(tmp_path / "sweep" / "a", "TimmERM", [0.2, 0.4], submitted=t0, done_at=t0 + 100)
    _fake_run(tmp_path / "sweep" / "b", "ALIGN", [0.9], submitted=t0, done_at=t0 + 200)
    _fake_run(tmp_path / "sweep" / "c", "ALIGN", [1.1], submitted=t0, done_at=None)  # cut by the deadline
    _fake_run(tmp_path / "solo" / "a", "TimmERM", [0.1], submitted=t0 + 300, done_at=t0 + 350)
    flow = gpu_check.throughput(tmp_path, sweep_seconds=210.0, solo_seconds=55.0)
    assert flow["sweep_runs_done"] == 2 and flow["sweep_span_s"] == 200 and flow["sweep_runs_per_hour"] == 36.0
    assert flow["solo_runs_done"] == 1 and flow["solo_span_s"] == 50 and flow["solo_runs_per_hour"] == 72.0
    assert flow["sweep_over_solo_runs_per_hour"] == 0.5 and flow["sweep_stage_s"] == 210.0
    assert flow["sweep"]["ALIGN"] == {"runs": 2, "done": 1, "mean_step_time_s": 1.0, "last_steps": [0, 0]}
    assert flow["sweep"]["TimmERM"]["mean_step_time_s"] == 0.3 and flow["sweep"]["TimmERM"]["last_steps"] == [100]
    assert flow["timmerm_step_time_sweep_over_solo"] == 3.0


def test_a_stale_install_is_named_by_its_files(tmp_path):
    tree, installed = tmp_path / "tree", tmp_path / "installed"
    for folder in (tree, installed):
        (folder / "data").mkdir(parents=True)
        (folder / "__init__.py").write_text("x = 1\n")
        (folder / "data" / "prepare.py").write_text("y = 2\n")
    assert gpu_check.stale_files(installed, tree) == []
    (tree / "data" / "prepare.py").write_text("y = 3\n")
    (tree / "gpu_check.py").write_text("")
    assert gpu_check.stale_files(installed, tree) == ["data/prepare.py", "gpu_check.py"]


def test_bad_invocations_get_one_message(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "OUT"}
    no_out = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert no_out.returncode == 2 and no_out.stderr.strip() == (
        "error: no output folder: set OUT or pass one (bash sweeps/gpu_check.sh OUT_DIR)")
    unknown = subprocess.run(["bash", str(SCRIPT), "--fast"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown option --fast" in unknown.stderr
    # the GPU run without its carry folder: set-up fails, every stage is skipped saying why, the summary comes back
    out = tmp_path / "out"
    repo = tmp_path / "repo"
    (repo / "sweeps").mkdir(parents=True)
    (repo / "sweeps" / "gpu_check.sh").write_bytes(SCRIPT.read_bytes())
    env.update(PYTHON=sys.executable, TMPDIR=str(tmp_path), OUT=str(out),
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    no_carry = subprocess.run(["bash", str(repo / "sweeps" / "gpu_check.sh"), "--deadline", "60"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
    assert no_carry.returncode == 1, no_carry.stderr
    summary = _check_limits(out)
    assert summary["setup"]["rc"] == 3 and summary["mode"] == "gpu"
    assert "setting up the carried packages failed (exit code 3" in summary["environment"]["problem"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        setup_log = tar.extractfile("logs/setup.log").read().decode()
    assert "no .gpu_carry/MANIFEST.json: run 'python -m domainbed_align.gpu_check carry'" in setup_log


def test_carry_needs_a_domainbed_git_repository(tmp_path, capsys):
    env_before = os.environ.pop("DOMAINBED_GIT", None)
    try:
        assert gpu_check.main(["carry", "--repo", str(REPO), "--out", str(tmp_path / "carry")]) == 2
        assert "no DomainBed git repository: pass --domainbed_git PATH" in capsys.readouterr().err
        assert gpu_check.main(["carry", "--repo", str(REPO), "--out", str(tmp_path / "carry"),
                               "--domainbed_git", str(tmp_path)]) == 2
        assert "is not a git repository holding DomainBed's commit b93c22a" in capsys.readouterr().err
    finally:
        if env_before is not None:
            os.environ["DOMAINBED_GIT"] = env_before
    assert not (tmp_path / "carry").exists()


@pytest.mark.integration
@requires_upstream
def test_dry_run_with_domainbed_runs_every_stage(tmp_path):
    out = tmp_path / "out"
    process = _dry_run(out, tmp_path, domainbed=upstream_root(), deadline=900)  # a loaded 2-core CPU: no cut-off
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    summary = _check_limits(out)
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [(name, "ok") for name in STAGES]
    assert sorted(os.listdir(out)) == sorted(OUTPUT_FILES)
    runs = _tar_names(out / "runs.tar.gz")
    assert sum(name.startswith("sweep/") and name.endswith("/results.jsonl") for name in runs) == 2  # TimmERM, ALIGN
    assert sum(name.startswith("solo/") and name.endswith("/done") for name in runs) == 1
    assert "explanations.jsonl" in runs and not any(name.endswith(".pkl") for name in runs)
    with tarfile.open(out / "runs.tar.gz") as tar:
        explanations = [json.loads(line) for line in io.TextIOWrapper(tar.extractfile("explanations.jsonl"))]
    assert sorted(record["algorithm"] for record in explanations) == ["ALIGN", "TimmERM"]
    tables = (out / "tables.md").read_text()
    assert "| ALIGN" in tables and "| TimmERM" in tables
    assert all((out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in ("maps.png", "curves.png"))
    flow = summary["throughput"]
    assert flow["sweep_runs_done"] == 2 and flow["solo_runs_done"] == 1
    assert flow["sweep_runs_per_hour"] > 0 and flow["solo_runs_per_hour"] > 0
    assert 0 < flow["sweep_span_s"] <= flow["sweep_stage_s"] and 0 < flow["solo_span_s"] <= flow["solo_stage_s"]
    assert flow["sweep"]["ALIGN"]["last_steps"] == [0] and flow["solo"]["TimmERM"]["done"] == 1
