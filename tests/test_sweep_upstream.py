"""``python -m domainbed_align.sweep`` and our launchers against real upstream DomainBed (b93c22a): the same run
folders as upstream's sweep, nothing lost after ``kill -9`` or ``scancel``, collect_results counting each run once.
Skipped unless DOMAINBED_ROOT points at upstream; the Slurm ones also need the opt-in test cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ENABLE_HINT, hook_active, run_python, upstream_root
from domainbed_align.runs import liveness

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(upstream_root() is None, reason=ENABLE_HINT),
              pytest.mark.skipif(not hook_active(), reason="pip install -e . first (the .pth hook is inactive)")]

HPARAMS = '{"batch_size": 8}'


def sweep_args(tmp_path: Path, *extra: str, algorithms=("ERM",), steps: int = 3, hparams: str = HPARAMS) -> list[str]:
    return ["--datasets", "Debug28", "--algorithms", *algorithms, "--n_hparams", "1", "--n_trials", "1",
            "--single_test_envs", "--steps", str(steps), "--hparams", hparams, "--data_dir", str(tmp_path / "data"),
            "--output_dir", str(tmp_path / "sweep"), *extra]


def ours(command: str, args: list[str], timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    os.environ.update(env)
    try:
        return run_python(["-m", "domainbed_align.sweep", command, *args], upstream_root(), timeout=timeout)
    finally:
        for key in env:
            os.environ.pop(key)


def records_per_run(sweep: Path) -> dict[str, list[int]]:
    """What collect_results reads (upstream's own reader), as each run's list of steps."""
    code = (f"import json; from domainbed.lib import reporting; "
            f"print(json.dumps([[r['args']['output_dir'], r['step']] for r in reporting.load_records({str(sweep)!r})]))")
    result = run_python(code, upstream_root())
    assert result.returncode == 0, result.stderr[-2000:]
    steps: dict[str, list[int]] = {}
    for run, step in json.loads(result.stdout.strip().splitlines()[-1]):
        steps.setdefault(os.path.basename(run), []).append(step)
    return steps


def test_launchers_join_upstreams_registry_and_runs_land_where_upstreams_sweep_puts_them(tmp_path):
    listed = run_python("from domainbed import command_launchers; print(sorted(command_launchers.REGISTRY))",
                        upstream_root())
    assert {"slurm", "submitit_local", "parallel", "local"} <= set(eval(listed.stdout.strip()))
    upstream = run_python(["-m", "domainbed.scripts.sweep", "launch", *sweep_args(tmp_path, "--command_launcher",
                                                                                  "dummy", "--skip_confirmation")],
                          upstream_root())
    assert upstream.returncode == 0, upstream.stderr[-2000:]
    upstream_runs = sorted(p.name for p in (tmp_path / "sweep").iterdir())
    status = ours("status", sweep_args(tmp_path))
    assert status.returncode == 0, status.stderr[-2000:]
    listed_runs = sorted(os.path.basename(line.split()[1]) for line in status.stdout.splitlines()
                         if "Debug28" in line and "test_envs=" in line and not line.startswith(" "))
    assert listed_runs == upstream_runs and len(upstream_runs) == 3
    # upstream's dummy launcher made the folders and ran nothing: not live, so failed (nothing will finish them)
    assert "3 runs: 0 done, 0 running, 0 queued, 3 failed, 0 not launched" in status.stdout
    single = ours("status", sweep_args(tmp_path, "--protocol", "single_source"))
    assert "3 runs: 0 done, 0 running, 0 queued, 0 failed, 3 not launched" in single.stdout
    assert {line.split("test_envs=")[1].split(" hparams")[0] for line in single.stdout.splitlines()
            if "test_envs=" in line} == {"[1, 2]", "[0, 2]", "[0, 1]"}


def test_source_envs_keeps_the_single_source_runs_of_those_domains_and_refuses_what_cannot_work(tmp_path):
    every = ours("status", sweep_args(tmp_path, "--protocol", "single_source"))
    one = ours("status", sweep_args(tmp_path, "--protocol", "single_source", "--source_envs", "1"))
    assert one.returncode == 0, one.stderr[-2000:]
    kept = [line for line in one.stdout.splitlines() if "test_envs=" in line]
    assert len(kept) == 1 and "test_envs=[0, 2]" in kept[0]
    assert kept[0] in every.stdout  # the same run (folder, seed) as in the whole protocol
    for extra, named in [(("--protocol", "single_source", "--source_envs", "3"), "--source_envs [3]: Debug28 has "
                          "environments 0-2"), (("--source_envs", "1"), "add --protocol single_source")]:
        refused = ours("status", sweep_args(tmp_path, *extra))
        assert refused.returncode == 2 and named in refused.stderr and "Traceback" not in refused.stderr


def test_held_out_envs_keeps_the_runs_that_never_train_on_them_pairs_included(tmp_path):
    def listed(*extra):
        args = sweep_args(tmp_path, *extra)
        args.remove("--single_test_envs")  # sweep_args' own; an extra one stays
        done = ours("status", args)
        assert done.returncode == 0, done.stderr[-2000:]
        return sorted(line.split("test_envs=")[1].split(" hparams")[0] for line in done.stdout.splitlines()
                      if "test_envs=" in line)

    assert listed("--held_out_envs", "2") == ["[0, 2]", "[1, 2]", "[2]"]  # leave-one-domain-out's pairs stay
    assert listed("--held_out_envs", "2", "--single_test_envs") == ["[2]"]
    refused = ours("status", sweep_args(tmp_path, "--protocol", "single_source", "--held_out_envs", "2"))
    assert refused.returncode == 2 and "use --source_envs" in refused.stderr and "Traceback" not in refused.stderr


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _trained_a_checkpoint(sweep: Path) -> Path | None:
    for run in sweep.iterdir() if sweep.exists() else []:
        if liveness.lock_is_held(str(run)) and (run / "results.jsonl").exists():
            return run
    return None


def test_parallel_sweep_killed_run_is_reported_recovered_and_counted_once(tmp_path):
    args = sweep_args(tmp_path, steps=60)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(upstream_root()), os.environ.get("PYTHONPATH", "")]),
               DOMAINBED_ALIGN_JOBS="2", DOMAINBED_ALIGN_THREADS_PER_JOB="1", HF_HUB_OFFLINE="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    launch = subprocess.Popen([sys.executable, "-m", "domainbed_align.sweep", "launch", *args, "--command_launcher",
                               "parallel", "--skip_confirmation", "--poll_seconds", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep = tmp_path / "sweep"
    _wait_until(lambda: _trained_a_checkpoint(sweep) is not None, 600, "a run to write its first checkpoint")
    victim = _trained_a_checkpoint(sweep)
    pid = int((victim / liveness.LOCK_FILE).read_text().split()[1])
    os.kill(pid, signal.SIGKILL)  # at once: the run has seconds left
    out, err = launch.communicate(timeout=900)
    assert launch.returncode == 1, err[-2000:]
    assert "failed runs (1)" in out and str(victim) in out and "exit code -9" in out, out
    status = ours("status", args)
    assert f"failed       {victim}" in status.stdout and "1 failed" in status.stdout, status.stdout
    deleted = ours("delete_incomplete", [*args, "--skip_confirmation"])
    assert "Deleted 1 jobs!" in deleted.stdout, deleted.stdout
    relaunch = ours("launch", [*args, "--command_launcher", "parallel", "--skip_confirmation"], DOMAINBED_ALIGN_JOBS="2")
    assert relaunch.returncode == 0, relaunch.stdout[-2000:] + relaunch.stderr[-2000:]
    steps = records_per_run(sweep)
    assert len(steps) == 3 and all(s == [0, 59] for s in steps.values()), steps  # each run once
    collect = run_python(["-m", "domainbed.scripts.collect_results", "--input_dir", str(sweep)], upstream_root())
    assert collect.returncode == 0 and "ERM" in collect.stdout, collect.stderr[-2000:]


def test_slurm_sweep_failures_scancel_recovery_then_collect_results(tmp_path, slurm_cluster):
    # ALIGN's runs fail at their first step (our non-finite guard; upstream's ERM trains on with NaNs), and are
    # reported with their logs (a misspelt hparam no longer gets this far: check_names refuses it before launch)
    failing = sweep_args(tmp_path, algorithms=("ERM", "ALIGN"),
                         hparams='{"batch_size": 8, "lr": 1e30, "warmup_steps": 0, "masker_warmup_steps": 0}')
    launch = ours("launch", [*failing, "--command_launcher", "slurm", "--skip_confirmation", "--poll_seconds", "1"])
    assert launch.returncode == 1 and "failed runs (3)" in launch.stdout, launch.stdout[-3000:]
    failed_lines = [line for line in launch.stdout.splitlines() if line.startswith("  ") and "log:" in line]
    assert len(failed_lines) == 3 and all("ALIGN" in line for line in failed_lines)
    log = Path(failed_lines[0].rsplit("log: ", 1)[1])
    assert "non-finite" in log.read_text()

    # scancel mid-run: status shows it failed; delete_incomplete + launch recover it; each run counted once
    (tmp_path / "sweep").rename(tmp_path / "first")
    args = sweep_args(tmp_path, steps=60)
    detached = ours("launch", [*args, "--command_launcher", "slurm", "--skip_confirmation", "--detach"])
    assert detached.returncode == 0 and "still queued or running (detached)" in detached.stdout, detached.stdout
    sweep = tmp_path / "sweep"
    kept = ours("delete_incomplete", [*args, "--skip_confirmation"])  # every run queued or running: none deleted
    assert "About to delete 0 jobs" in kept.stdout and len(list(sweep.iterdir())) == 4, kept.stdout  # + .submitit
    _wait_until(lambda: _trained_a_checkpoint(sweep) is not None, 600, "a Slurm run to write its first checkpoint")
    victim = _trained_a_checkpoint(sweep)
    subprocess.run(["scancel", liveness.read_job_record(str(victim))["slurm_job_id"]], check=True)
    _wait_until(lambda: "running" not in ours("status", args).stdout.split("runs:")[-1].replace("0 running", ""),
                600, "the other runs to end")
    status = ours("status", args)
    assert "2 done, 0 running, 0 queued, 1 failed" in status.stdout and "CANCELLED" in status.stdout, status.stdout
    assert "Deleted 1 jobs!" in ours("delete_incomplete", [*args, "--skip_confirmation"]).stdout
    relaunch = ours("launch", [*args, "--command_launcher", "slurm", "--skip_confirmation"])
    assert relaunch.returncode == 0, relaunch.stdout[-2000:]
    steps = records_per_run(sweep)
    assert len(steps) == 3 and all(s == [0, 59] for s in steps.values()), steps
    collect = run_python(["-m", "domainbed.scripts.collect_results", "--input_dir", str(sweep)], upstream_root())
    assert collect.returncode == 0 and "ERM" in collect.stdout


@pytest.mark.parametrize("change, message", [
    ({"algorithms": ("ERM", "ALIGNN")}, "unknown algorithm 'ALIGNN' (did you mean 'ALIGN'?)"),
    ({"hparams": '{"batch_size": 8'}, "--hparams is not valid JSON"),
    ({"hparams": '{"batch_size": 8, "lambda_algin": 1}', "algorithms": ("ERM", "ALIGN")},
     "unknown hparam 'lambda_algin' (did you mean 'lambda_align'?)"),
    ({"algorithms": ("ERM", "ALIGN"), "steps": 500},
     "ALIGN aligns from update 1100 (warmup_steps 1000 + masker_warmup_steps 100), but the run has 500 steps"),
], ids=["algorithm", "json", "hparam", "never aligns"])
def test_sweep_launch_refuses_a_bad_name_before_making_any_job(tmp_path, change, message):
    result = ours("launch", [*sweep_args(tmp_path, **change), "--command_launcher", "parallel",
                             "--skip_confirmation"])
    assert result.returncode == 2 and result.stderr.strip().startswith(f"domainbed-align sweep: error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "sweep").exists()  # nothing launched, nothing made


def test_our_sweep_declares_upstreams_arguments_names_defaults_and_required_flags():
    """Upstream's parser sits under __main__: read its add_argument calls from the source and compare."""
    import ast

    from domainbed_align import sweep as ours_module

    tree = ast.parse((upstream_root() / "domainbed" / "scripts" / "sweep.py").read_text())
    upstream = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            name = node.args[0].value
            keywords = {k.arg: k.value for k in node.keywords}
            upstream[name] = {"required": isinstance(keywords.get("required"), ast.Constant)
                              and keywords["required"].value,
                              "default": keywords["default"].value if isinstance(keywords.get("default"),
                                                                               ast.Constant) else "<expr>",
                              "type": getattr(keywords.get("type"), "id", None),
                              "store_true": isinstance(keywords.get("action"), ast.Constant)}
    parser = ours_module.parser(["D"], ["A"])
    declared = {(a.option_strings or [a.dest])[0]: a for a in parser._actions if a.dest != "help"}
    for name, expected in upstream.items():
        action = declared[name]
        if name == "command":
            assert {"launch", "delete_incomplete"} <= set(action.choices)
            continue
        if name == "--command_launcher":  # required by upstream for launch; status needs none: checked in launch
            continue
        assert action.required == expected["required"], name
        if expected["default"] != "<expr>":
            assert action.default == expected["default"], name
        if expected["type"]:
            assert action.type.__name__ == expected["type"], name
        assert (action.nargs == 0) == expected["store_true"], name
    assert declared["--datasets"].default == ["D"] and declared["--algorithms"].default == ["A"]


def test_runs_upstreams_own_sweep_has_yet_to_start_are_live_and_never_deleted(tmp_path):
    """Upstream's sweep + its serial local launcher: the queued runs' folders exist before they start."""
    args = sweep_args(tmp_path, steps=30)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(upstream_root()), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    launch = subprocess.Popen([sys.executable, "-m", "domainbed.scripts.sweep", "launch", *args,
                               "--command_launcher", "local", "--skip_confirmation"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sweep = tmp_path / "sweep"
    _wait_until(lambda: _trained_a_checkpoint(sweep) is not None, 600, "the first run to train")
    status = ours("status", args)
    assert " 0 failed" in status.stdout and " queued" in status.stdout, status.stdout  # running, or queued: live
    kept = ours("delete_incomplete", [*args, "--skip_confirmation"])
    assert "About to delete 0 jobs" in kept.stdout and len(list(sweep.iterdir())) == 3, kept.stdout
    assert launch.wait(timeout=900) == 0, launch.stderr[-2000:]
    assert "3 runs: 3 done" in ours("status", args).stdout


def test_train_py_refuses_a_finished_folder_with_the_command_to_rerun_it(tmp_path):
    """Upstream's train.py appends: a second training in a finished folder would give steps 0 1 2 0 1 2, keep `done`
    (status says done while it trains) and be tabulated twice."""
    run = tmp_path / "run"
    train = ["-m", "domainbed.scripts.train", "--dataset", "Debug28", "--algorithm", "ERM", "--hparams", HPARAMS,
             "--steps", "3", "--checkpoint_freq", "1", "--data_dir", str(tmp_path / "data"), "--output_dir", str(run)]
    first = run_python(train, upstream_root())
    assert first.returncode == 0 and (run / "done").exists(), first.stderr[-2000:]
    again = run_python(train, upstream_root())
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-2000:]
    (line,) = [line for line in again.stderr.splitlines() if "domainbed-align" in line]
    assert line.startswith("domainbed-align: error: ") and "finished run ('done' is there)" in line
    assert f"mv {run} {run}.old && python -m domainbed.scripts.train --dataset Debug28" in line
    steps = [json.loads(text)["step"] for text in (run / "results.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
