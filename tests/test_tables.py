"""python -m domainbed_align.tables on synthetic sweep folders with known selections, means and standard errors.

The equality with real upstream collect_results (ties, several hparam draws, leave-one-domain-out pairs) is in
test_upstream.py; here the numbers are computed by hand.
"""

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from domainbed_align.report import tables
from test_records import lock_held_elsewhere

DATASET = "TextureMNIST"  # ours: environment names without DomainBed (textures, medical, space, photos)


def write_run(sweep: Path, name: str, algorithm: str, test_envs, trial: int, hparams_seed: int, steps_accs,
              step_time: float = 0.1, done: bool = True) -> Path:
    """A run folder as train.py leaves it: one line per checkpoint, and ``done`` when it finished. ``steps_accs``:
    {step: {key: value}} where keys are e.g. 'out1' (env1_out_acc) or 'in3'; unspecified accuracies are 0."""
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
    (folder / "err.txt").write_text("")  # train.py tees stderr here from its start
    if done:
        (folder / "done").write_text("done")
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
    assert any(str(sweep / "a" / "results.jsonl") + " line 4: " in w for w in warnings)
    assert any(str(sweep / "c" / "results.jsonl") + " line 1: " in w for w in warnings)
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


# --- finished runs only, marks, --max_step (issues 25 and 26) ------------------------------------------------------
def _shown(markdown: str, cell: str) -> bool:
    """Whether a markdown table row has this cell (padding stripped)."""
    return any(cell in [c.strip() for c in row.split("|")] for row in markdown.splitlines() if row.startswith("|"))


def _killed_and_running(sweep):
    """Two ALIGN runs without `done` (trial 2): 'k' killed (its lock file free, as the kernel leaves it after
    kill -9), 'r' still training (its lock held by another process). Either would pull ALIGN's mean to 20."""
    from domainbed_align.runs import liveness

    for name in ("k", "r"):
        folder = write_run(sweep, name, "ALIGN", [3], 2, 0, {0: {"out0": .9, "in3": .2}}, done=False)
        (folder / liveness.LOCK_FILE).write_text("pid 1 on elsewhere\n")
    return lock_held_elsewhere(sweep / "r" / liveness.LOCK_FILE)


def test_unfinished_runs_are_left_out_in_one_line_or_counted_and_marked(sweep, capsys):
    with _killed_and_running(sweep):
        assert tables.main(["--input_dir", str(sweep), "--layout", "domainbed"]) == 0
        captured = capsys.readouterr()
        (line,) = captured.err.splitlines()
        assert line == ("domainbed-align: note: left out 2 of 9 runs, unfinished (no DomainBed `done` file): 1 "
                        "killed or failed (k); 1 still running (r); --include_unfinished counts them, their cells "
                        "marked †.")
        assert _shown(captured.out, f"65.0 ± {100 * np.std([.6, .7]) / math.sqrt(2):.1f}")  # ALIGN: f and g alone
        assert not any("†" in row for row in captured.out.splitlines() if row.startswith("|"))
        assert "Left out 2 of 9 runs" in captured.out  # under the tables too: tables.md says what it left out
        assert tables.main(["--input_dir", str(sweep), "--layout", "domainbed", "--include_unfinished"]) == 0
        counted = capsys.readouterr()
    assert counted.err.count("\n") == 1 and "counting 2 of 9 runs" in counted.err
    # trial 2 (runs k and r: one hparam draw, whose records DomainBed pools) selects 0.2
    assert _shown(counted.out, f"50.0 ± {100 * np.std([.6, .7, .2]) / math.sqrt(3):.1f} †")
    align = [row for row in counted.out.splitlines() if row.startswith("| ALIGN ")]
    assert align and all("†" in row for row in align if "±" in row)
    assert not any("†" in row for row in counted.out.splitlines() if row.startswith("| TimmERM "))
    assert "†: counts unfinished runs (no DomainBed `done` file; --include_unfinished): 1 killed or failed (k); " \
           "1 still running (r)." in counted.out


def test_a_truncated_line_marks_every_cell_that_reads_its_run_and_the_warning_is_whole(sweep):
    with open(sweep / "f" / "results.jsonl", "a") as handle:  # ALIGN trial 0: killed while writing step 3
        handle.write('{"step": 3, "env0_in')
    warnings = []
    records = tables.load_records(sweep, warn=warnings.append)
    (warning,) = warnings
    path = sweep / "f" / "results.jsonl"
    assert warning == (f"{path} line 2: not JSON: Unterminated string starting at (column 13); skipped, every cell "
                       f"that reads this run is marked ‡.")
    explanations = [_explanation(run, 2) for run in "fg"]
    built = tables.build(records, ["domainbed", "explanations"], explanations)
    iid = _cells(built, f"{DATASET}, model selection method: {tables.IID}", "ALIGN")
    assert iid["photos"]["marks"] == "‡"
    assert _cells(built, f"{DATASET}, model selection method: {tables.IID}", "TimmERM")["photos"]["marks"] == ""
    averages = _cells(built, "Averages, model selection method: " + tables.ORACLE, "ALIGN")
    assert averages[DATASET]["marks"] == "‡" and averages["Avg"]["marks"] == "‡"
    align = _cells(built, "explanations of the checkpoint", "ALIGN")
    assert align["accuracy"]["marks"] == "‡" and align["insertion AUC"]["marks"] == "‡"
    markdown = tables.render(built, "markdown")
    assert _shown(markdown, "65.0 ± 3.5 ‡")  # np.std([.6, .7]) / sqrt(2)
    assert f"‡: reads a run with a damaged results.jsonl line, skipped: {path} line 2: not JSON: Unterminated " \
           f"string starting at (column 13)." in markdown
    latex = tables.render(built, "latex")
    assert "65.0 $\\pm$ 3.5 $^\\ddagger$" in latex and "‡" not in latex
    tidy = pd.read_csv(io.StringIO(tables.render(built, "csv")), keep_default_na=False)
    assert set(tidy[(tidy.Algorithm == "ALIGN") & (tidy["mean"] != "")].marks) == {"‡"}


def test_the_same_accuracy_reads_the_same_in_every_layout(tmp_path):
    # results/texturemnist_all_methods' DRE: a mean of exactly 62.75 % in decimal; the mean of the percentages
    # lands above it and the percentage of the mean below, so the two rounded differently (62.8 against 62.7)
    fractions = [0.5925, 0.64875, 0.64125]
    assert f"{np.mean([100 * f for f in fractions]):.1f}" != f"{100 * np.mean(fractions):.1f}"  # the trap
    upstream = f"{100 * np.mean(fractions):.1f}"  # collect_results' format_mean
    sweep = tmp_path / "s"
    for trial, accuracy in enumerate(fractions):
        write_run(sweep, f"r{trial}", "DRE", [3], trial, 0, {499: {"out0": .5, "in3": accuracy}})
    explanations = [_explanation(f"r{trial}", 499) for trial in range(3)]
    records = sorted(tables.load_records(sweep), key=lambda r: r["_run"])  # summed in this order, as listed
    built = tables.build(records, ["domainbed", "explanations"], explanations)
    shown = {table.title: table.frame("markdown") for table in built}
    iid = shown[f"Dataset: {DATASET}, model selection method: {tables.IID}"].set_index("Algorithm").loc["DRE"]
    explained = next(frame for title, frame in shown.items() if "explanations" in title).set_index("Algorithm")
    assert iid["photos"].split(" ± ")[0] == upstream
    assert explained.loc["DRE", "accuracy"].split(" ± ")[0] == upstream
    assert "standard error uses ddof 1 where DomainBed's uses ddof 0" in " ".join(built[-1].notes)


def test_max_step_selects_among_the_checkpoints_up_to_it(sweep, tmp_path, capsys):
    built = tables.build(tables.load_records(sweep, max_step=0), ["domainbed"])
    iid = _cells(built, f"{DATASET}, model selection method: {tables.IID}", "TimmERM")
    # step 0 only: trial 0 has runs a (val .3, in3 .9) and b (val .5, in3 .1): b; trials 1, 2 have no step 0
    assert iid["photos"]["mean"] == pytest.approx(10.0) and iid["photos"]["n"] == 1
    assert not any(row["Algorithm"] == "ALIGN" for table in built for row in table.rows)  # no step 0
    assert tables.main(["--input_dir", str(sweep), "--max_step", "1", "--layout", "domainbed"]) == 0
    out = capsys.readouterr().out
    assert _shown(out, "50.0 ± 0.0")  # trial 0 alone: a at step 1 (val .6 beats b's .5): .5
    assert "Only checkpoints at or before step 1 (--max_step 1)" in out
    single = tmp_path / "single"
    write_run(single, "t", "ALIGN", [1, 2, 3], 0, 0, {0: {"out0": 0.1}, 5: {"out0": 0.9}})
    last = next(t for t in tables.build(tables.load_records(single, max_step=4), ["single_source"])
                if "no selection" in t.title)
    assert last.rows[0]["cells"]["textures"]["mean"] == pytest.approx(10.0)  # the last checkpoint up to step 4
    for bad in ("-1", "1.5", "all"):
        with pytest.raises(SystemExit):
            tables.main(["--input_dir", str(sweep), "--max_step", bad])
        assert f"'{bad}' is not a step: give a whole number >= 0" in capsys.readouterr().err
    assert tables.main(["--input_dir", str(sweep), "--max_step", "0", "--layout", "explanations"]) == 1


def test_input_dir_may_be_a_results_folder_with_its_runs_in_runs(sweep, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    sweep.rename(results / "runs")
    (results / "README.md").write_text("what these runs are\n")
    assert tables.main(["--input_dir", str(results / "runs"), "--layout", "domainbed"]) == 0
    from_runs = capsys.readouterr().out
    assert tables.main(["--input_dir", str(results), "--layout", "domainbed"]) == 0
    assert capsys.readouterr().out == from_runs and _shown(from_runs, "53.3 ± 11.9")


def test_only_unfinished_runs_is_one_error_saying_how_to_count_them(tmp_path, capsys):
    write_run(tmp_path / "s", "k", "ALIGN", [3], 0, 0, {0: {"out0": .9, "in3": .2}}, done=False)
    assert tables.main(["--input_dir", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "(1 unfinished run left out: --include_unfinished counts them)" in err and "Traceback" not in err


@pytest.mark.integration
@pytest.mark.parametrize("folder, step, extra", [("texturemnist_all_methods", 200, []),
                                                 ("h200_texturemnist", 1400, ["--include_unfinished"])])
def test_max_step_equals_collect_results_on_a_copy_cut_at_that_step(tmp_path, folder, step, extra):
    """Our --max_step N on a committed sweep, against upstream's collect_results on a copy whose results.jsonl files
    were cut at step N (upstream counts every run, finished or not: hence --include_unfinished for the cut runs)."""
    from conftest import REPO, hook_active, run_python, upstream_root
    from test_upstream import _collect_results_cells

    if upstream_root() is None or not hook_active():
        pytest.skip("needs upstream DomainBed (DOMAINBED_ROOT) and the package installed (its hook)")
    runs = REPO / "results" / folder / "runs"
    cut, whole, shortened = tmp_path / "cut", tmp_path / "whole", 0  # copies: collect_results writes results.txt
    for run in sorted(path for path in runs.iterdir() if path.is_dir()):
        lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        assert kept  # every run has checkpoints up to the cut
        shortened += len(kept) < len(lines)
        for copy, text in ((cut, "".join(kept)), (whole, "".join(lines))):
            (copy / run.name).mkdir(parents=True)
            (copy / run.name / "results.jsonl").write_text(text)
    assert shortened >= len(list(cut.iterdir())) // 2

    def collect_results(folder):
        collect = run_python(["-m", "domainbed.scripts.collect_results", "--input_dir", str(folder)], upstream_root(),
                             cwd=tmp_path)
        assert collect.returncode == 0, collect.stderr[-3000:]
        return _collect_results_cells(collect.stdout)

    theirs = collect_results(cut)

    def ours(*options):
        shown = run_python(["-m", "domainbed_align.tables", "--input_dir", str(runs), "--layout", "domainbed",
                            "--format", "csv", *extra, *options], upstream_root(), cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr[-3000:]
        cells = {}
        for row in pd.read_csv(io.StringIO(shown.stdout), keep_default_na=False).itertuples():
            cells[(row.table, row.Algorithm, str(row.column))] = (
                "X" if row.mean == "" else f"{float(row.mean):.1f}" if row.se == "" else
                f"{float(row.mean):.1f} +/- {float(row.se):.1f}")
        return cells

    at_step = ours("--max_step", str(step))
    assert len(theirs) >= 3 * 2 * 5 and {key: at_step.get(key) for key in theirs} == theirs
    assert sum(cell != "X" for cell in theirs.values()) >= 3 * 5  # numbers, not only empty cells
    everything = ours()
    assert {key: everything.get(key) for key in theirs} == collect_results(whole)  # without --max_step: every record
    assert any(everything[key] != cell for key, cell in theirs.items())  # the cut changes the tables


# --- diverged runs (issue 26 item 12), --output --------------------------------------------------------------------
def _diverge(folder: Path, flags: dict) -> None:
    """Add train.py's `diverged` (its mean over each checkpoint interval) to the records of these steps."""
    path = folder / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "diverged": flags.get(r["step"], 0.0)}) + "\n" for r in records))


def test_a_run_that_diverged_marks_every_cell_that_counts_it_in_every_layout(sweep, tmp_path):
    _diverge(sweep / "f", {2: 1.0})  # ALIGN trial 0: diverged by its last checkpoint
    _diverge(sweep / "a", {0: 0.0, 1: 0.0, 2: 0.3})  # TimmERM: diverged during the last interval only
    _diverge(sweep / "c", {2: 0.0})  # reports the key and never diverged
    records = tables.load_records(sweep)
    explanations = [_explanation(run, 2) for run in "fg"]
    built = tables.build(records, ["domainbed", "explanations"], explanations)
    iid = f"{DATASET}, model selection method: {tables.IID}"
    assert _cells(built, iid, "ALIGN")["photos"]["marks"] == "§"
    assert _cells(built, iid, "TimmERM")["photos"]["marks"] == "§"  # run a is among the draws its cell selects from
    assert _cells(built, "Averages, model selection method: " + tables.ORACLE, "ALIGN")[DATASET]["marks"] == "§"
    assert _cells(built, "explanations of the checkpoint", "ALIGN")["accuracy"]["marks"] == "§"
    markdown = tables.render(built, "markdown")
    assert _shown(markdown, "65.0 ± 3.5 §")
    assert "§: counts runs that diverged (their last record says `diverged` > 0: the loss blew up, see each run's " \
           "err.txt; their accuracies mean nothing): a (step 2), f (step 2)." in markdown
    latex = tables.render(built, "latex")
    assert "65.0 $\\pm$ 3.5 $^\\S$" in latex and "§" not in latex
    tidy = pd.read_csv(io.StringIO(tables.render(built, "csv")), keep_default_na=False)
    assert set(tidy[(tidy.Algorithm == "ALIGN") & (tidy["mean"] != "")].marks) == {"§"}
    # up to step 1, run a had not diverged yet: nothing is marked
    early = tables.build(tables.load_records(sweep, max_step=1), ["domainbed"])
    assert _cells(early, iid, "TimmERM")["photos"]["marks"] == ""
    assert "§" not in tables.render(early, "markdown")
    # single-source layouts: the source row reading the diverged run, and the in-domain diagonal
    single = tmp_path / "single"
    for trial in (0, 1):
        write_run(single, f"t{trial}", "ALIGN", [1, 2, 3], trial, 0, {5: {"out0": 0.9, "in1": 0.5}})
    _diverge(single / "t1", {5: 1.0})
    matrices = tables.build(tables.load_records(single), ["single_source", "in_domain"])
    for table in matrices:
        assert table.rows[0]["cells"]["textures"]["marks"] == "§", table.title
        assert any("§: counts runs that diverged" in note and "t1 (step 5)" in note for note in table.notes)


# --- a degenerate final mask (issue 29) -------------------------------------------------------------------------------
def _mask(folder: Path, means: dict, in_warmup: float = 0.0) -> None:
    """Add ALIGN's `mask_mean` and `in_warmup` (their means over each checkpoint interval) to these steps' records."""
    path = folder / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "mask_mean": means.get(r["step"], 0.1), "in_warmup": in_warmup}) + "\n"
                            for r in records))


def test_a_run_whose_final_mask_is_degenerate_marks_every_cell_that_counts_it(sweep, tmp_path):
    _mask(sweep / "f", {2: 0.0004})  # ALIGN trial 0: its mask collapsed
    _mask(sweep / "g", {2: 0.031})  # trial 1: low, not degenerate
    records = tables.load_records(sweep)
    built = tables.build(records, ["domainbed", "explanations"], [_explanation(run, 2) for run in "fg"])
    iid = f"{DATASET}, model selection method: {tables.IID}"
    assert _cells(built, iid, "ALIGN")["photos"]["marks"] == "¶"
    assert _cells(built, iid, "TimmERM")["photos"]["marks"] == ""
    assert _cells(built, "explanations of the checkpoint", "ALIGN")["accuracy"]["marks"] == "¶"
    markdown = tables.render(built, "markdown")
    assert _shown(markdown, "65.0 ± 3.5 ¶")
    assert "¶: counts runs whose final mask is degenerate (their last record's `mask_mean` past warm-up is under 2% " \
           "or over 98%: the masker's mask selects nothing; see each run's err.txt for the collapse warning and the " \
           "hparams to look at): f (mask mean 0.0004 at step 2)." in markdown
    latex = tables.render(built, "latex")
    assert "65.0 $\\pm$ 3.5 $^\\P$" in latex and "¶" not in latex
    # a mean taken partly in warm-up says nothing yet: no mark
    _mask(sweep / "f", {2: 0.0004}, in_warmup=0.49)
    assert "¶" not in tables.render(tables.build(tables.load_records(sweep), ["domainbed"]), "markdown")
    # single-source layouts, and the marks' order when a run also diverged
    single = tmp_path / "single"
    for trial in (0, 1):
        write_run(single, f"t{trial}", "ALIGN", [0, 2, 3], trial, 0, {5: {"out1": 0.9, "in0": 0.5}})
    _mask(single / "t0", {5: 0.99})
    _diverge(single / "t0", {5: 1.0})
    matrices = tables.build(tables.load_records(single), ["single_source", "in_domain"])
    for table in matrices:
        assert table.rows[0]["cells"]["medical"]["marks"] == "§¶", table.title
        assert any(note.startswith("¶") and "t0 (mask mean 0.99 at step 5)" in note for note in table.notes)


def test_output_is_written_whole_and_a_folder_that_is_not_there_is_one_line(sweep, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere" / "tables.md"
    assert tables.main(["--input_dir", str(sweep), "--layout", "domainbed", "--output", str(missing)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"domainbed-align tables: error: cannot write --output {missing} (No such file or directory)")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    target = tmp_path / "tables.md"
    assert tables.main(["--input_dir", str(sweep), "--layout", "domainbed", "--output", str(target)]) == 0
    assert target.read_text().startswith("### Dataset: TextureMNIST") and synced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep", "tables.md"]  # no temporary file left
