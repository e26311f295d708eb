"""python -m domainbed_align.tables on synthetic sweep folders with known selections, means and standard errors.

The equality with real upstream collect_results (ties, several hparam draws, leave-one-domain-out pairs) is in
test_upstream.py; here the numbers are computed by hand.
"""

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from domainbed_align import tables

DATASET = "TextureMNIST"  # ours: environment names without DomainBed (textures, medical, space, photos)


def write_run(sweep: Path, name: str, algorithm: str, test_envs, trial: int, hparams_seed: int, steps_accs,
              step_time: float = 0.1) -> Path:
    """A run folder as train.py leaves it: one line per checkpoint. ``steps_accs``: {step: {key: value}} where
    keys are e.g. 'out1' (env1_out_acc) or 'in3'; unspecified accuracies are 0."""
    folder = sweep / name
    folder.mkdir(parents=True)
    lines = []
    for step, accs in steps_accs.items():
        record = {"args": {"algorithm": algorithm, "dataset": DATASET, "test_envs": list(test_envs),
                           "trial_seed": trial, "hparams_seed": hparams_seed},
                  "hparams": {}, "step": step, "step_time": step_time}
        for env in range(4):
            for split in ("in", "out"):
                record[f"env{env}_{split}_acc"] = accs.get(f"{split}{env}", 0.0)
        lines.append(json.dumps(record) + "\n")
    (folder / "results.jsonl").write_text("".join(lines))
    return folder


def _cells(table_list, title_part, row):
    table = next(t for t in table_list if title_part in t.title)
    return next(r["cells"] for r in table.rows if r["Algorithm"] == row)


@pytest.fixture
def sweep(tmp_path):
    """photos (3) held out. TimmERM: 3 trials, 2 hparam draws; ALIGN: 2 trials, 1 draw."""
    sweep = tmp_path / "sweep"
    # trial 0, draw 0: validation (mean out0..2) best at step 1 (0.6), where photos in = 0.50
    write_run(sweep, "a", "TimmERM", [3], 0, 0, {0: {"out0": .3, "out1": .3, "out2": .3, "in3": .9, "out3": .9},
                                                 1: {"out0": .6, "out1": .6, "out2": .6, "in3": .5, "out3": .2},
                                                 2: {"out0": .6, "out1": .6, "out2": .6, "in3": .7, "out3": .8}})
    # trial 0, draw 1: validation 0.5 < 0.6: not selected; its last checkpoint has the better out3 (oracle: 0.4)
    write_run(sweep, "b", "TimmERM", [3], 0, 1, {0: {"out0": .5, "out1": .5, "out2": .5, "in3": .1, "out3": .1},
                                                 2: {"out0": .4, "out1": .4, "out2": .4, "in3": .4, "out3": .95}})
    # trial 1 and 2: one draw; draw 1 ties draw 0 on validation in trial 1: the higher hparams_seed wins (0.8)
    write_run(sweep, "c", "TimmERM", [3], 1, 0, {2: {"out0": .7, "out1": .7, "out2": .7, "in3": .6}})
    write_run(sweep, "d", "TimmERM", [3], 1, 1, {2: {"out0": .7, "out1": .7, "out2": .7, "in3": .8}})
    write_run(sweep, "e", "TimmERM", [3], 2, 0, {2: {"out0": .2, "out1": .2, "out2": .2, "in3": .3}})
    write_run(sweep, "f", "ALIGN", [3], 0, 0, {2: {"out0": .9, "in3": .6}}, step_time=0.3)
    write_run(sweep, "g", "ALIGN", [3], 1, 0, {2: {"out0": .9, "in3": .7}}, step_time=0.3)
    return sweep


def test_domainbed_layout_selects_as_documented_and_uses_domainbeds_standard_error(sweep):
    records = tables.load_records(sweep)
    built = tables.build(records, ["domainbed"])
    iid = _cells(built, f"{DATASET}, model selection method: {tables.IID}", "TimmERM")
    expected = [0.5, 0.8, 0.3]  # trial 0: draw 0 step 1; trial 1: draw 1 (tie); trial 2
    assert iid["photos"]["mean"] == pytest.approx(100 * np.mean(expected))
    assert iid["photos"]["se"] == pytest.approx(100 * np.std(expected) / math.sqrt(3))  # ddof 0
    assert iid["photos"]["n"] == 3
    assert iid["medical"] == "no run with this held-out domain"
    assert iid["Avg"] == "needs every domain held out"
    oracle = _cells(built, f"{DATASET}, model selection method: {tables.ORACLE}", "TimmERM")
    assert oracle["photos"]["mean"] == pytest.approx(100 * np.mean([0.4, 0.8, 0.3]))  # last step, best out3
    lodo = _cells(built, f"{DATASET}, model selection method: {tables.LODO}", "TimmERM")
    assert lodo["photos"] == "needs runs holding out this domain with each other one"
    align = _cells(built, f"{DATASET}, model selection method: {tables.IID}", "ALIGN")
    assert align["photos"]["mean"] == pytest.approx(65.0) and align["photos"]["n"] == 2
    averages = _cells(built, f"Averages, model selection method: {tables.IID}", "TimmERM")
    assert averages[DATASET]["mean"] == pytest.approx(100 * np.mean(expected))
    selected = tables.select(records, tables.IID)
    assert selected[selected.algorithm == "TimmERM"][["run", "step"]].values.tolist() == [["a", 1], ["d", 2], ["e", 2]]


def test_a_damaged_line_is_skipped_with_one_warning_naming_file_and_line(sweep):
    with open(sweep / "a" / "results.jsonl", "a") as handle:
        handle.write('{"step": 3, "env0_in')  # a kill while writing
    (sweep / "c" / "results.jsonl").write_text('[1, 2]\n' + (sweep / "c" / "results.jsonl").read_text())
    warnings = []
    records = tables.load_records(sweep, warn=warnings.append)
    assert len(warnings) == 2
    assert any(str(sweep / "a" / "results.jsonl") + " line 4 " in w for w in warnings)
    assert any(str(sweep / "c" / "results.jsonl") + " line 1 " in w for w in warnings)
    assert len(records) == 3 + 2 + 1 + 1 + 1 + 1 + 1  # every other line is still read


def test_every_format_renders_the_same_numbers(sweep):
    built = tables.build(tables.load_records(sweep), ["domainbed"])
    markdown = tables.render(built, "markdown")
    assert f"### Dataset: {DATASET}, model selection method: {tables.IID}" in markdown
    assert "| 53.3 ± 11.9 |" in markdown  # np.std([.5, .8, .3]) = 0.2055 (ddof 0), / sqrt(3) = 0.1186
    latex = tables.render(built, "latex")
    assert "\\begin{tabular}" in latex and "53.3 $\\pm$" in latex and "±" not in latex
    tidy = pd.read_csv(io.StringIO(tables.render(built, "csv")))
    row = tidy[(tidy.table == f"Dataset: {DATASET}, model selection method: {tables.IID}")
               & (tidy.Algorithm == "TimmERM") & (tidy.column == "photos")]
    assert row["mean"].item() == pytest.approx(100 * np.mean([0.5, 0.8, 0.3])) and row["n"].item() == 3
    empty = tidy[(tidy.Algorithm == "TimmERM") & (tidy.column == "medical")]
    assert set(empty.note) == {"no run with this held-out domain"}


def test_latex_escapes_method_names(tmp_path):
    write_run(tmp_path / "s", "r", "RES_G", [3], 0, 0, {0: {"out0": .5, "in3": .5}})
    latex = tables.render(tables.build(tables.load_records(tmp_path / "s"), ["domainbed"]), "latex")
    assert "RES\\_G" in latex and "RES_G" not in latex.replace("RES\\_G", "")


def test_single_source_matrix_diagonal_is_in_domain_and_oracle_picks_by_target_out(tmp_path):
    sweep = tmp_path / "s"
    for trial, (in_domain, ood) in enumerate([(0.9, 0.4), (0.8, 0.6)]):
        write_run(sweep, f"t{trial}", "ALIGN", [1, 2, 3], trial, 0,
                  {0: {"out0": 0.1}, 5: {"out0": in_domain, "in1": ood, "out1": 0.1, "in2": 0.3}})
        write_run(sweep, f"h{trial}", "ALIGN", [1, 2, 3], trial, 1,  # a second draw, better on out1
                  {5: {"out0": 0.2, "in1": 0.99, "out1": 0.9, "in2": 0.0}})
    built = tables.build(tables.load_records(sweep), ["single_source", "in_domain"])
    last = next(t for t in built if "no selection" in t.title)
    row = next(r for r in last.rows if r["trained on"] == "textures")["cells"]
    assert row["textures"]["mean"] == pytest.approx(85.0)  # the source's out split, last step, draw 0
    assert row["textures"]["se"] == pytest.approx(np.std([90, 80], ddof=1) / math.sqrt(2))
    assert row["medical"]["mean"] == pytest.approx(50.0)  # the target's in split
    oracle = next(t for t in built if "oracle" in t.title)
    row = next(r for r in oracle.rows if r["trained on"] == "textures")["cells"]
    assert row["medical"]["mean"] == pytest.approx(99.0)  # draw 1 is best on out1
    assert row["space"]["mean"] == pytest.approx(0.0)  # out2 ties (0 and 0): the higher hparams_seed, as DomainBed
    in_domain = next(t for t in built if "in-domain accuracy" in t.title)
    assert in_domain.rows[0]["cells"]["textures"]["mean"] == pytest.approx(85.0)
    assert in_domain.rows[0]["cells"]["medical"] == "no run trained on this domain alone"


def _explanation(run, step, checkpoint="selected", **metrics):
    base = {"run": f"some/where/{run}", "algorithm": "x", "env_name": "photos", "env": 3, "split": "test",
            "checkpoint": checkpoint, "step": step}
    for key in ("accuracy", "sufficiency", "comprehensiveness", "insertion_auc", "random_sufficiency",
                "random_comprehensiveness", "random_insertion_auc", "zero_maps", "foreground_mass",
                "foreground_share", "masker_iou"):
        base[key] = metrics.get(key, 0.5)
    return base


def test_explanations_are_those_of_the_selected_checkpoint_or_the_cell_says_why(sweep):
    records = tables.load_records(sweep)
    explanations = [_explanation("a", 1, insertion_auc=0.2), _explanation("d", 2, insertion_auc=0.4),
                    _explanation("e", 2, insertion_auc=0.9),
                    _explanation("f", 2, insertion_auc=0.7), _explanation("g", 1, insertion_auc=0.1)]
    built = tables.build(records, ["explanations"], explanations)
    assert len(built) == 1 and "held out: photos" in built[0].title
    erm = next(r for r in built[0].rows if r["Algorithm"] == "TimmERM")["cells"]
    assert erm["insertion AUC"]["mean"] == pytest.approx(0.5)  # runs a (step 1), d and e: the selected ones
    assert erm["insertion AUC"]["se"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1) / math.sqrt(3))
    assert erm["selected step"]["mean"] == pytest.approx(np.mean([1, 2, 2]))
    align = next(r for r in built[0].rows if r["Algorithm"] == "ALIGN")["cells"]
    assert align["insertion AUC"] == "evaluated the selected checkpoint (step 1), not the selected step 2"
    assert align["x TimmERM"]["mean"] == pytest.approx(3.0)  # step_time 0.3 s vs 0.1 s
    assert erm["step time (s)"]["mean"] == pytest.approx(0.1)
    missing = tables.build(records, ["explanations"], explanations[1:])[0]
    erm = next(r for r in missing.rows if r["Algorithm"] == "TimmERM")["cells"]
    assert erm["insertion AUC"].startswith("not evaluated")


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert tables.main(["--input_dir", str(tmp_path / "nowhere")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert tables.main(["--input_dir", str(tmp_path / "empty")]) == 1
    assert "no readable results.jsonl line" in capsys.readouterr().err
