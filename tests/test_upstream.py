"""Integration with real upstream DomainBed (b93c22a): its train.py, sweep, collect_results and own tests.

Skipped unless DOMAINBED_ROOT points at an upstream checkout (or ``domainbed`` is importable).
"""

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import ENABLE_HINT, hook_active, run_python, upstream_root
from domainbed_align.methods import registry
from domainbed_align.methods.checkpoints import load_algorithm

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(upstream_root() is None, reason=ENABLE_HINT),
              pytest.mark.skipif(not hook_active(), reason="pip install -e . first (the .pth hook is inactive)")]

TESTS_DIR = Path(__file__).resolve().parent


def _train(tmp_path, dataset, algorithm="ALIGN", steps=4, extra=None):
    out = tmp_path / f"{algorithm}-{dataset}"
    hparams = {"batch_size": 8, "pretrained": False, "warmup_steps": 2, "masker_warmup_steps": 0, **(extra or {})}
    if algorithm != "ALIGN":
        hparams.pop("warmup_steps")
        hparams.pop("masker_warmup_steps")
    result = run_python(["-m", "domainbed.scripts.train", "--algorithm", algorithm, "--dataset", dataset,
                         "--data_dir", str(tmp_path), "--steps", str(steps), "--checkpoint_freq", "2",
                         "--hparams", json.dumps(hparams), "--output_dir", str(out)],
                        upstream_root(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("dataset", ["Debug28", "Debug224"])
def test_train_align_through_upstream_train_py(tmp_path, dataset):
    out, records = _train(tmp_path, dataset)
    assert (out / "done").exists() and (out / "model.pkl").exists()
    assert [r["step"] for r in records] == [0, 2, 3]
    last = records[-1]
    assert last["hparams"]["lambda_align"] == 1.0 and last["args"]["algorithm"] == "ALIGN"
    assert last["in_warmup"] == 0.0 and records[0]["in_warmup"] == 1.0
    assert 0.0 < last["mask_mean"] < 1.0 and last["align_bce"] > 0
    assert all(0.0 <= last[f"env{i}_out_acc"] <= 1.0 for i in range(3))
    # upstream's own model.pkl, read back without DomainBed: the trained ALIGN, its progress and hparams
    algorithm = load_algorithm(out / "model.pkl")
    assert type(algorithm).__name__ == "ALIGN" and algorithm.steps_done == 4 and not algorithm.training
    assert algorithm.hparams["lambda_align"] == last["hparams"]["lambda_align"]
    assert algorithm.hparams["batch_size"] == 8
    side = algorithm.classifier.cam_side
    maps = algorithm.explain(torch.randn(2, 3, *([224] * 2 if dataset == "Debug224" else [28] * 2)))
    assert maps.shape == (2, side, side) and torch.allclose(maps.flatten(1).amax(1), torch.ones(2), atol=1e-3)


def test_a_batch_larger_than_a_training_split_is_refused_instead_of_hanging(tmp_path):
    # Debug28's splits hold about 13 examples and the default batch is 64: upstream's loader would wait forever
    result = run_python(["-m", "domainbed.scripts.train", "--algorithm", "ALIGN", "--dataset", "Debug28",
                         "--steps", "2", "--hparams", '{"warmup_steps": 0, "masker_warmup_steps": 0}',
                         "--output_dir", str(tmp_path / "o")], upstream_root(), cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    output = result.stdout + result.stderr  # train.py tees stderr into stdout (and into err.txt)
    assert "Traceback" not in output
    assert output.count("domainbed-align: error: batch_size 64 is larger than a training split of 13 examples") == 1
    assert "would never yield one and the run would hang" in (tmp_path / "o" / "err.txt").read_text()


@pytest.mark.parametrize("arguments, message", [
    (["--algorithm", "ALIGNN", "--dataset", "Debug28"], "unknown algorithm 'ALIGNN' (did you mean 'ALIGN'?)"),
    (["--dataset", "TextureMNISt"], "unknown dataset 'TextureMNISt' (did you mean 'TextureMNIST'?)"),
    (["--dataset", "Debug28", "--hparams", '{"batch_size": 8,}'], "--hparams is not valid JSON (Expecting"),
    (["--dataset", "Debug28", "--hparams", '{"lambda_align": "high"}'], "hparam 'lambda_align' of ALIGN must be"),
    (["--dataset", "Debug28", "--hparams", '{"lambda_algin": 3}'],
     "unknown hparam 'lambda_algin' (did you mean 'lambda_align'?)"),
    (["--dataset", "TextureMNIST"], "--data_dir is missing: give the folder TextureMNIST is in"),
    (["--dataset", "Debug28", "--test_envs", "3"], "--test_envs 3: Debug28 has environments 0-2"),
    (["--dataset", "Debug28", "--steps", "300"], "ALIGN aligns from update 1100 (warmup_steps 1000 + masker_warmup_steps "
                                                 "100), but the run has 300 steps: it would never align"),
], ids=["algorithm", "dataset", "json", "type", "name", "data_dir", "test_envs", "never aligns"])
def test_train_py_names_a_bad_argument_before_loading_any_data(tmp_path, arguments, message):
    if "--algorithm" not in arguments:
        arguments = ["--algorithm", "ALIGN", *arguments]
    result = run_python(["-m", "domainbed.scripts.train", *arguments, "--output_dir", str(tmp_path / "o")],
                        upstream_root(), cwd=tmp_path, timeout=120)
    output = result.stdout + result.stderr  # train.py tees stderr into stdout
    assert result.returncode == 1 and "Traceback" not in output, output[-2000:]
    assert output.count(f"domainbed-align: error: {message}") == 1, output[-2000:]
    assert "HParams:" not in result.stdout  # refused before train.py lists the hparams or loads data


def test_typo_in_hparams_stops_train_py_with_one_message(tmp_path):
    result = run_python(["-m", "domainbed.scripts.train", "--algorithm", "ALIGN", "--dataset", "Debug28",
                         "--hparams", '{"lambda_algin": 3, "batch_size": 8}', "--output_dir", str(tmp_path / "o")],
                        upstream_root(), cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    # train.py tees stderr into stdout (and into <output_dir>/err.txt)
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert output.count("domainbed-align: error: unknown hparam 'lambda_algin' (did you mean 'lambda_align'?)") == 1
    assert "lambda_algin" in (tmp_path / "o" / "err.txt").read_text()


def test_sweep_launch_then_collect_results_shows_every_method(tmp_path):
    sweep = tmp_path / "sweep"
    names = list(registry.algorithm_names())
    launch = run_python(["-m", "domainbed.scripts.sweep", "launch", "--datasets", "Debug28",
                         "--algorithms", *names, "--n_hparams", "1", "--n_trials", "1",
                         "--single_test_envs", "--steps", "3", "--hparams",
                         '{"batch_size": 8, "warmup_steps": 1, "masker_warmup_steps": 0}',
                         "--command_launcher", "local",
                         "--data_dir", str(tmp_path), "--output_dir", str(sweep), "--skip_confirmation"],
                        upstream_root(), cwd=tmp_path, timeout=2400)  # 10 methods x 3 test envs, one after another
    assert launch.returncode == 0, launch.stderr[-3000:]
    runs = [p for p in sweep.iterdir() if p.is_dir()]
    assert len(runs) == 3 * len(names) and all((p / "done").exists() for p in runs)
    collect = run_python(["-m", "domainbed.scripts.collect_results", "--input_dir", str(sweep)],
                         upstream_root(), cwd=tmp_path)
    assert collect.returncode == 0, collect.stderr[-3000:]
    print(collect.stdout)
    shown = {line.split()[0] for line in collect.stdout.splitlines() if line.split()}
    assert set(names) <= shown, sorted(set(names) - shown)
    assert "Debug28" in collect.stdout

    # A run killed while writing leaves a partial line: collect_results names that file, with no traceback.
    damaged = runs[0] / "results.jsonl"
    with damaged.open("a") as results:
        results.write('{"step": 9, "env0_in')
    collect = run_python(["-m", "domainbed.scripts.collect_results", "--input_dir", str(sweep)],
                         upstream_root(), cwd=tmp_path)
    assert collect.returncode == 1 and "Traceback" not in collect.stderr + collect.stdout
    assert f"damaged results file: {damaged} line " in collect.stderr, collect.stderr[-3000:]


def test_collect_results_with_a_mistyped_input_dir_says_so_in_one_line(tmp_path):
    result = run_python(["-m", "domainbed.scripts.collect_results", "--input_dir", str(tmp_path / "sweeep")],
                        upstream_root(), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{str(tmp_path / 'sweeep')!r} is not a folder" in result.stderr, result.stderr[-3000:]


def _upstream_pytest(tmp_path, test_file, *selection):
    env_tests = os.pathsep.join([str(upstream_root()), str(TESTS_DIR)])
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "upstream_cpu_shim",
            str(upstream_root() / "domainbed" / "test" / test_file), *selection]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env_tests
    try:
        return run_python(args, None, cwd=tmp_path, timeout=1800)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def test_upstream_hparams_registry_tests_include_every_method(tmp_path):
    result = _upstream_pytest(tmp_path, "test_hparams_registry.py")
    assert result.returncode == 0, result.stdout[-3000:]
    # upstream parametrises over ALGORITHMS x DATASETS: ours are in both lists now
    count = run_python("import domainbed.algorithms as a, domainbed.datasets as d; "
                       "print(len(a.ALGORITHMS) * len(d.DATASETS))", upstream_root(), cwd=tmp_path)
    assert f"{int(count.stdout)} passed" in result.stdout


def test_upstream_model_tests_on_cpu_with_every_method(tmp_path):
    """Upstream's test_models on Debug28 (no masks: the annotation methods train as plain ERM there, saying so)."""
    ours = list(registry.algorithm_names())
    names = run_python(f"import domainbed.algorithms as a; print(*[a.ALGORITHMS.index(n) for n in {ours!r}])",
                       upstream_root(), cwd=tmp_path)
    indices = names.stdout.split()
    assert len(indices) == len(ours), names.stderr[-2000:]
    # parameterized names are test_init_update_predict_<index>_<dataset>; Debug28 comes first
    selection = " or ".join(f"test_init_update_predict_{i}_Debug28" for i in indices)
    result = _upstream_pytest(tmp_path, "test_models.py", "-k", selection)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"{len(ours)} passed" in result.stdout


def test_model_selected_is_upstreams_training_domain_validation_checkpoint(tmp_path):
    """train.py's own per-checkpoint files (--save_model_every_checkpoint) are the oracle for model_selected.pkl."""
    out = tmp_path / "run"
    result = run_python(["-m", "domainbed.scripts.train", "--algorithm", "TimmERM", "--dataset", "Debug28",
                         "--data_dir", str(tmp_path), "--steps", "9", "--checkpoint_freq", "1",
                         "--save_model_every_checkpoint", "--hparams",
                         json.dumps({"batch_size": 8, "pretrained": False, "lr": 1e-2}), "--output_dir", str(out)],
                        upstream_root(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    code = ("import json, sys; from domainbed.model_selection import IIDAccuracySelectionMethod as M\n"
            f"records = [json.loads(l) for l in open({str(out / 'results.jsonl')!r})]\n"
            "accs = [M._step_acc(r) for r in records]\n"
            "best = max(range(len(accs)), key=lambda i: accs[i]['val_acc'])  # Q.argmax: the first maximum\n"
            "print(json.dumps({'step': records[best]['step'], 'val_acc': float(accs[best]['val_acc'])}))")
    upstream = run_python(code, upstream_root(), cwd=tmp_path)
    assert upstream.returncode == 0, upstream.stderr[-2000:]
    chosen = json.loads(upstream.stdout.splitlines()[-1])
    selected = torch.load(out / "model_selected.pkl", weights_only=False)
    assert selected["selection"]["step"] == chosen["step"]
    assert selected["selection"]["val_acc"] == chosen["val_acc"]
    saved_by_upstream = torch.load(out / f"model_step{chosen['step']}.pkl", weights_only=False)
    assert selected.keys() - {"selection"} == saved_by_upstream.keys()
    assert selected["args"] == saved_by_upstream["args"] and selected["model_hparams"] == saved_by_upstream["model_hparams"]
    for key, value in saved_by_upstream["model_dict"].items():
        mine = selected["model_dict"][key]
        assert torch.equal(mine, value) if torch.is_tensor(value) else mine == value, key  # _extra_state: a dict
    assert load_algorithm(out / "model_selected.pkl").steps_done == chosen["step"] + 1


def _synthetic_debug28_sweep(sweep, seed=0):
    """Run folders as train.py writes them, with accuracies in eighths (many ties), several hparam draws, and
    the pairs of held-out domains leave-one-domain-out needs; domain 2 is held out only in pairs."""
    import random

    rng = random.Random(seed)
    test_env_sets = [[0], [1], [0, 1], [0, 2], [1, 2]]
    count = 0
    for algorithm in ("ERM", "ALIGN"):
        for trial in (0, 1, 2):
            for hparams_seed in (0, 1, 2):
                for test_envs in test_env_sets:
                    folder = sweep / f"run{count:03d}"
                    folder.mkdir(parents=True)
                    count += 1
                    lines = []
                    for step in (0, 2, 4):
                        record = {"args": {"algorithm": algorithm, "dataset": "Debug28", "test_envs": test_envs,
                                           "trial_seed": trial, "hparams_seed": hparams_seed,
                                           "holdout_fraction": 0.2},
                                  "hparams": {}, "step": step, "step_time": 0.01}
                        for env in range(3):
                            for split in ("in", "out"):
                                record[f"env{env}_{split}_acc"] = rng.randint(0, 8) / 8
                        lines.append(json.dumps(record, sort_keys=True) + "\n")
                    (folder / "results.jsonl").write_text("".join(lines))
                    (folder / "done").write_text("done")  # finished, as train.py marks it (tables count only those)


def _collect_results_cells(text):
    """{(table title, row, column): cell} from collect_results' plain-text tables (fixed-width columns)."""
    cells, title, header, width = {}, None, None, 22
    for line in text.splitlines():
        if line.startswith("-------- "):
            title, header = line[len("-------- "):].strip(), None
            width = 27 if title.startswith("Averages") else 22
            continue
        if title is None or not line.strip():
            continue
        row = [line[i:i + width].strip() for i in range(0, len(line), width)]
        if header is None:
            header = row
            continue
        for column, cell in zip(header[1:], row[1:]):
            cells[(title, row[0], column)] = cell
    return cells


def test_tables_domainbed_layout_equals_collect_results(tmp_path):
    import io

    import pandas as pd

    sweep = tmp_path / "sweep"
    _synthetic_debug28_sweep(sweep)
    collect = run_python(["-m", "domainbed.scripts.collect_results", "--input_dir", str(sweep)], upstream_root(),
                         cwd=tmp_path)
    assert collect.returncode == 0, collect.stderr[-3000:]
    theirs = _collect_results_cells(collect.stdout)
    ours_run = run_python(["-m", "domainbed_align.tables", "--input_dir", str(sweep), "--layout", "domainbed",
                           "--format", "csv"], upstream_root(), cwd=tmp_path)
    assert ours_run.returncode == 0, ours_run.stderr[-3000:]
    tidy = pd.read_csv(io.StringIO(ours_run.stdout), keep_default_na=False)
    ours = {}
    for row in tidy.itertuples():
        if row.mean == "":
            cell = "X"
        elif row.se == "":
            cell = f"{float(row.mean):.1f}"
        else:
            cell = f"{float(row.mean):.1f} +/- {float(row.se):.1f}"
        ours[(row.table, row.Algorithm, str(row.column))] = cell
    assert len(theirs) == 2 * 3 * (4 + 2)  # 2 methods x 3 selections x (3 domains + Avg, then Debug28 + Avg)
    assert {key: ours.get(key) for key in theirs} == theirs
    numbers = [cell for cell in theirs.values() if cell != "X"]
    assert len(numbers) > 12 and any(k[0].endswith("cross-validation") and v != "X" for k, v in theirs.items())


def test_single_source_protocol_runs_through_upstream_launcher_and_tabulates(tmp_path):
    sweep = tmp_path / "single"
    launch = run_python([str(TESTS_DIR.parent / "sweeps" / "paper_protocols.py"), "single_source", "--datasets",
                         "Debug28", "--algorithms", "TimmERM", "--n_hparams", "1", "--n_trials", "1", "--steps", "2",
                         "--hparams", '{"batch_size": 8}', "--data_dir", str(tmp_path), "--output_dir", str(sweep)],
                        upstream_root(), cwd=tmp_path, timeout=1200)
    assert launch.returncode == 0, launch.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(runs) == 3 and all((p / "done").exists() for p in runs)
    firsts = [json.loads((p / "results.jsonl").read_text().splitlines()[0])["args"] for p in runs]
    assert sorted(tuple(a["test_envs"]) for a in firsts) == [(0, 1), (0, 2), (1, 2)]
    check = run_python("import json, sys; from domainbed.lib import misc\n"
                       f"args = {firsts!r}\n"
                       "print(all(a['seed'] == misc.seed_hash(a['dataset'], a['algorithm'], a['test_envs'], "
                       "a['hparams_seed'], a['trial_seed']) for a in args))", upstream_root(), cwd=tmp_path)
    assert check.stdout.strip() == "True", check.stderr[-2000:]
    # relaunching launches nothing (every job is done)
    again = run_python([str(TESTS_DIR.parent / "sweeps" / "paper_protocols.py"), "single_source", "--datasets",
                        "Debug28", "--algorithms", "TimmERM", "--n_hparams", "1", "--n_trials", "1", "--steps", "2",
                        "--hparams", '{"batch_size": 8}', "--data_dir", str(tmp_path), "--output_dir", str(sweep)],
                       upstream_root(), cwd=tmp_path)
    assert "3 runs (3 done)" in again.stdout and "About to launch 0 jobs" in again.stdout
    shown = run_python(["-m", "domainbed_align.tables", "--input_dir", str(sweep), "--layout", "single_source",
                        "in_domain"], upstream_root(), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "Dataset: Debug28, single source, last checkpoint" in shown.stdout
    assert "in-domain accuracy per domain" in shown.stdout
    assert shown.stdout.count("| TimmERM     |") >= 3 + 3 + 1  # three sources in each matrix, one in-domain row
