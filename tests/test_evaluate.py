"""``python -m domainbed_align.evaluate``: explanation metrics of saved runs, checked against direct computation (no
DomainBed), and against DomainBed's own accuracies of the same run (real upstream)."""

import importlib.util
import json
import math

import pytest
import torch

from conftest import ENABLE_HINT, hook_active, run_python, save_align_run, upstream_root
from domainbed_align.report import evaluate
from domainbed_align.report import metrics
from domainbed_align.methods.checkpoints import load_algorithm
from domainbed_align.data import TextureMNIST

FAST = ["--steps", "3", "--fractions", "0.1,0.5", "--batch_size", "4"]


def _records(capsys, argv):
    assert evaluate.main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_record_is_the_metrics_of_the_seeded_subset_of_the_test_environment(tmp_path, data_dir, capsys):
    model = save_align_run(tmp_path / "run", data_dir)
    (record,) = _records(capsys, ["--model", str(model), "--max_images", "6", *FAST])
    assert (record["env"], record["env_name"], record["split"], record["n_images"]) == (3, "photos", "test", 6)
    # The same numbers computed directly: the documented subset (randperm seeded 0), images without augmentation,
    # true-class Grad-CAMs, random maps drawn from the same generator after it, batch by batch.
    algorithm = load_algorithm(model)
    environment = TextureMNIST(str(data_dir), [3], {"data_augmentation": False}).datasets[3]
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(environment), generator=generator)[:6].tolist()
    sums = {}
    for batch in (order[:4], order[4:]):
        images = torch.stack([environment[i][0] for i in batch])
        labels = torch.tensor([environment[i][1] for i in batch])
        saliency = algorithm.explain(images, labels)
        random_maps = torch.rand(saliency.shape, generator=generator)
        for prefix, maps in (("", saliency), ("random_", random_maps)):
            values = metrics.explanation_metrics(algorithm.predict, images, maps, labels, (0.1, 0.5), 3)
            for key in ("sufficiency", "comprehensiveness", "insertion_auc"):
                sums[prefix + key] = sums.get(prefix + key, 0.0) + float(values[key].sum())
        with torch.no_grad():
            correct = (algorithm.predict(images).argmax(1) == labels).float().sum()
        sums["accuracy"] = sums.get("accuracy", 0.0) + float(correct)
        digits = torch.cat([environment.mask(i) for i in batch])  # TextureMNIST's ground-truth foreground
        on_digits = metrics.foreground_mass(saliency, digits)
        sums["foreground_mass"] = sums.get("foreground_mass", 0.0) + float(on_digits.sum())
        sums["foreground_share"] = sums.get("foreground_share", 0.0) + float(digits.mean((1, 2)).sum())
        with torch.no_grad():
            kept = algorithm.masker(images).squeeze(1)  # ALIGN's own mask, against the digit, image by image
        for mask, digit in zip(kept, digits):
            hard, truth = mask > 0.5, digit > 0.5
            per_image = {"masker_iou": (hard & truth).sum() / (hard | truth).sum(),
                         "masker_soft_iou": torch.minimum(mask, digit).sum() / torch.maximum(mask, digit).sum(),
                         "all_ones_iou": truth.float().mean(), "mask_mean": mask.mean()}
            for key, value in per_image.items():
                sums[key] = sums.get(key, 0.0) + float(value)
    for key, total in sums.items():
        assert record[key] == pytest.approx(total / 6, abs=1e-6), key
    assert record["comprehensiveness"] != pytest.approx(record["random_comprehensiveness"], abs=1e-4)
    assert 0.02 < record["foreground_share"] < 0.3  # digits cover a minority of the 56x56 image


def test_table_averages_runs_and_hparams_seed_selects_them(tmp_path, data_dir, capsys):
    sweep = tmp_path / "sweep"
    save_align_run(sweep / "a", data_dir, seed=0)
    save_align_run(sweep / "b", data_dir, seed=1)
    save_align_run(sweep / "c", data_dir, seed=2, hparams_seed=1)
    common = ["--input_dir", str(sweep), "--max_images", "4", *FAST]
    records = _records(capsys, [*common, "--hparams_seed", "0"])
    assert sorted(r["run"].rsplit("/", 1)[-1] for r in records) == ["a", "b"]
    assert evaluate.main([*common, "--hparams_seed", "0", "--format", "table"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if "| ALIGN |" in line]
    assert len(row) == 1
    cells = [cell.strip() for cell in row[0].strip("|").split("|")]
    # model.pkl (the last checkpoint) of runs without results.jsonl: its step is unknown
    assert cells[:6] == ["TextureMNIST", "ALIGN", "photos (test)", "last (step ?)", "2", "8"]
    values = [r["insertion_auc"] for r in records]
    mean, spread = sum(values) / 2, abs(values[0] - values[1]) / 2  # standard error of two values
    assert cells[9] == f"{mean:.3f} ± {spread:.3f}"
    # The same table from the saved JSON lines, without evaluating again.
    saved = tmp_path / "records.jsonl"
    saved.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert evaluate.main(["--records", str(saved)]) == 0
    assert row[0] in capsys.readouterr().out.splitlines()


def test_bad_input_gets_one_message_each(tmp_path, data_dir, capsys, monkeypatch):
    def error_of(argv):
        assert evaluate.main(argv) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        return line

    assert "is not a folder" in error_of(["--input_dir", str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    assert "no */model.pkl in" in error_of(["--input_dir", str(tmp_path / "empty")])
    good = save_align_run(tmp_path / "good", data_dir)
    damaged = tmp_path / "damaged.pkl"
    damaged.write_bytes(good.read_bytes()[:4000])
    assert "damaged.pkl cannot be read as a DomainBed checkpoint" in error_of(["--model", str(damaged)])
    assert "fractions must be numbers in (0, 1]" in error_of(["--model", str(good), "--fractions", "0.1,2"])
    assert "no run has hparams_seed 7" in error_of(["--model", str(good), "--hparams_seed", "7"])
    records = tmp_path / "records.jsonl"
    records.write_text('{"algorithm": "ALIGN"}\n')
    assert "records.jsonl line 1 is not a record of domainbed_align.report.evaluate" in error_of(["--records", str(records)])
    assert "cannot be read" in error_of(["--records", str(tmp_path / "missing.jsonl")])
    monkeypatch.delenv("DOMAINBED_ROOT", raising=False)
    if importlib.util.find_spec("domainbed") is None:  # the messages for runs that need DomainBed
        assert "needs DomainBed" in error_of(["--model", str(good), "--envs", "all"])
        vlcs = save_align_run(tmp_path / "vlcs", data_dir, dataset="VLCS")
        assert "dataset 'VLCS' (one of DomainBed's) needs DomainBed" in error_of(["--model", str(vlcs)])
    with pytest.raises(SystemExit):  # argparse's own message and exit status 2
        evaluate.main(["--model", str(good), "--max_images", "0"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate.main(["--model", str(good), "--device", "gpu0"])
    assert "--device 'gpu0' is not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            evaluate.main(["--model", str(good), "--device", "cuda"])
        assert "this torch sees no CUDA device; use --device cpu" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.skipif(upstream_root() is None, reason=ENABLE_HINT)
@pytest.mark.skipif(not hook_active(), reason="pip install -e . first (the .pth hook is inactive)")
def test_accuracies_equal_domainbeds_own_for_the_same_run(tmp_path, data_dir):
    out = tmp_path / "run"
    trained = run_python(["-m", "domainbed.scripts.train", "--algorithm", "ALIGN", "--dataset", "TextureMNIST",
                          "--data_dir", str(data_dir), "--test_envs", "3", "--steps", "3", "--checkpoint_freq", "5",
                          "--hparams", json.dumps({"batch_size": 8, "warmup_steps": 1, "masker_warmup_steps": 0}),
                          "--output_dir", str(out)],
                         upstream_root(), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    last = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    result = run_python(["-m", "domainbed_align.evaluate", "--model", str(out / "model.pkl"), "--envs", "all",
                         "--max_images", "1000", "--steps", "1", "--fractions", "0.5"], upstream_root(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {r["env"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert [(records[e]["split"], records[e]["n_images"]) for e in range(4)] == [("out", 200)] * 3 + [("test", 1000)]
    # DomainBed evaluated the same model on the same held-out images; another batch size may flip one argmax.
    for env in range(3):
        assert math.isclose(records[env]["accuracy"], last[f"env{env}_out_acc"], abs_tol=1 / 200 + 1e-9)
    whole_test_env = (800 * last["env3_in_acc"] + 200 * last["env3_out_acc"]) / 1000
    assert math.isclose(records[3]["accuracy"], whole_test_env, abs_tol=1 / 1000 + 1e-9)
    assert all(0 <= records[e][k] <= 1 for e in range(4) for k in ("insertion_auc", "random_insertion_auc"))


def test_a_damaged_model_costs_only_its_own_records(tmp_path, data_dir, capsys):
    sweep = tmp_path / "sweep"
    for name, seed in (("a", 0), ("b", 1)):
        save_align_run(sweep / name, data_dir, seed=seed)
    (sweep / "b" / "model.pkl").write_bytes((sweep / "b" / "model.pkl").read_bytes()[:4000])  # killed while saving
    assert evaluate.main(["--input_dir", str(sweep), "--max_images", "4", *FAST, "--include_unfinished"]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line)["run"].rsplit("/", 1)[-1] for line in out.splitlines()] == ["a"]
    errors = [line for line in err.splitlines() if line.startswith("domainbed-align evaluate: error:")]
    assert len(errors) == 2 and "b/model.pkl cannot be read as a DomainBed checkpoint" in errors[0]
    assert errors[1] == ("domainbed-align evaluate: error: 1 of 2 models could not be evaluated (named above); the output "
                         "holds the other 1.")


@pytest.mark.integration
@pytest.mark.skipif(upstream_root() is None, reason=ENABLE_HINT)
@pytest.mark.skipif(not hook_active(), reason="pip install -e . first (the .pth hook is inactive)")
def test_a_domainbed_dataset_missing_from_data_dir_gets_one_message(tmp_path, data_dir):
    vlcs = save_align_run(tmp_path / "run", data_dir, dataset="VLCS")  # DomainBed's VLCS: not in our data_dir
    result = run_python(["-m", "domainbed_align.evaluate", "--model", str(vlcs)], upstream_root(), cwd=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert "DomainBed could not load the run's dataset 'VLCS'" in line and "pass --data_dir" in line
    assert "Traceback" not in result.stderr


def test_table_shows_a_dash_where_a_dataset_has_no_foreground_masks():
    record = {"dataset": "VLCSMini", "algorithm": "ALIGN", "env_name": "C", "split": "test", "n_images": 3,
              **{key: 0.5 for key in evaluate.REPORTED}, "foreground_mass": None, "foreground_share": None}
    older = {key: value for key, value in record.items() if key not in evaluate.FOREGROUND}  # saved before the columns
    for records in ([record], [older]):
        row = evaluate.markdown_table(records).splitlines()[-1]
        assert row.endswith("| 0.500 | - | - | - | - | - | - |")  # foreground and masker columns


def test_input_dir_evaluates_finished_runs_only_unless_asked(tmp_path, data_dir, capsys):
    from pathlib import Path

    from domainbed_align.runs import liveness

    sweep = tmp_path / "results" / "runs"  # a results folder: --input_dir may name it or its runs/
    for name in ("finished", "killed"):
        save_align_run(sweep / name, data_dir)
        (sweep / name / "err.txt").write_text("")  # train.py's, from its start
    (sweep / "finished" / "done").write_text("done")
    (sweep / "killed" / liveness.LOCK_FILE).write_text("pid 1\n")  # free: its process was killed
    save_align_run(sweep / "copied", data_dir, seed=1)  # a model file alone: nothing tells how its run ended
    common = ["--input_dir", str(tmp_path / "results"), "--max_images", "2", *FAST]
    assert evaluate.main(common) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert sorted((Path(r["run"]).name, r["finished"]) for r in records) == [("copied", None), ("finished", True)]
    (note,) = [line for line in captured.err.splitlines() if "note:" in line]
    assert note == ('domainbed-align: note: left out 1 of 3 runs, unfinished (no DomainBed `done` file): 1 killed or '
                    'failed (killed); --include_unfinished evaluates them (their records then say "finished": false).')
    assert evaluate.main([*common, "--include_unfinished", "--format", "table"]) == 0
    table = capsys.readouterr().out
    (row,) = [line for line in table.splitlines() if "| ALIGN |" in line]
    assert "| last (step ?) † | 3 |" in row  # three runs in the row, one unfinished
    assert "†: counts unfinished runs (no DomainBed `done` file; --include_unfinished): killed." in table
    (sweep / "finished" / "done").unlink()
    (sweep / "copied" / "err.txt").write_text("")
    (sweep / "copied" / liveness.LOCK_FILE).write_text("pid 1\n")
    assert evaluate.main(common) == 1
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"domainbed-align evaluate: error: no finished run under {tmp_path / 'results'}: left out 3 of 3")
    assert "--include_unfinished evaluates them" in error


def test_records_say_whether_the_run_diverged_and_the_table_marks_it(tmp_path, data_dir, capsys):
    from pathlib import Path

    sweep = tmp_path / "sweep"
    # 0.4: fired within the last interval; blew_up's mask collapsed too (issue 29: its last mask_mean past warm-up)
    for name, flags, mask in (("calm", [0.0, 0.0], 0.1), ("blew_up", [0.0, 0.4], 0.0004)):
        model = save_align_run(sweep / name, data_dir)
        args = torch.load(model, weights_only=False)["args"]
        lines = [json.dumps({"args": args, "step": 100 * i, "diverged": flag, "in_warmup": float(i == 0),
                             "mask_mean": mask if i else 0.0}) for i, flag in enumerate(flags)]
        (sweep / name / "results.jsonl").write_text("\n".join(lines) + "\n")
        (sweep / name / "done").write_text("done")
    save_align_run(sweep / "copied", data_dir, seed=1)  # a model file alone: no results.jsonl to tell
    records = _records(capsys, ["--model", *(str(sweep / n / "model.pkl") for n in ("calm", "blew_up", "copied")),
                                "--max_images", "2", *FAST])
    assert {Path(r["run"]).name: r["diverged"] for r in records} == {"calm": False, "blew_up": True, "copied": None}
    assert {Path(r["run"]).name: r["degenerate_mask"] for r in records} == {"calm": False, "blew_up": True,
                                                                             "copied": None}
    table = evaluate.markdown_table(records)
    (row,) = [line for line in table.splitlines() if "| ALIGN |" in line]
    assert "| last (step 100, ?) §¶ | 3 |" in row, row  # three runs, one diverged with a degenerate final mask
    assert "¶: counts runs whose final mask is degenerate (their results.jsonl's last record has a `mask_mean` past " \
           "warm-up under 2% or over 98%; see each run's err.txt): blew_up." in table
    assert "§: counts runs that diverged (their results.jsonl's last record says `diverged` > 0; see each run's " \
           "err.txt): blew_up." in table
    calm = evaluate.markdown_table([r for r in records if Path(r["run"]).name == "calm"])
    assert "§" not in calm and "¶" not in calm


class _MapsGiven(torch.nn.Module):
    """A stand-in algorithm whose explanation is ``maps(images)`` and whose prediction is class 0."""

    def __init__(self, maps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.maps = maps

    def predict(self, images):
        return torch.zeros(images.shape[0], 10) + torch.arange(10).flip(0)

    def explain(self, images, classes):
        return self.maps(images)


def test_decoy_mass_is_the_grad_cams_share_on_the_patch_and_only_decoy_mnist_shows_it(data_dir):
    from domainbed_align.data import DecoyMNIST

    environment = DecoyMNIST(str(data_dir), [2], {}).datasets[2]
    indices = list(range(40))
    # evaluate_environment draws a seeded subset (seed 0, one batch): a map that is each drawn image's patch
    order = evaluate.seeded_subset(indices, 40, torch.Generator().manual_seed(0))
    on_patch = _MapsGiven(lambda images: torch.stack([environment.decoy(i)[0] for i in order[:len(images)]]))
    uniform = _MapsGiven(lambda images: torch.ones(images.shape[0], 7, 7))
    measured = evaluate.evaluate_environment(on_patch, environment, indices, 40, 40, "label", 4, (0.1,))
    assert measured["decoy_mass"] == pytest.approx(1.0) and measured["decoy_share"] == pytest.approx(16 / 784)
    assert measured["mask_decoy_mass"] is None  # no masker
    spread = evaluate.evaluate_environment(uniform, environment, indices, 40, 40, "label", 4, (0.1,))
    assert spread["decoy_mass"] == pytest.approx(1 / 49)  # a 7x7 map cell covers exactly one 4x4 patch
    table = evaluate.markdown_table([{**spread, "run": "r", "dataset": "DecoyMNIST", "algorithm": "X",
                                      "env_name": "randomized", "split": "test"}])
    assert "decoy_mass" in table.splitlines()[0]
    texture = evaluate.markdown_table([{"run": "r", "dataset": "TextureMNIST", "algorithm": "X", "env_name": "photos",
                                        "split": "test", "n_images": 1, "accuracy": 0.5}])
    assert "decoy_mass" not in texture
