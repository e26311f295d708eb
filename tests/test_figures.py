"""``python -m domainbed_align.figures``: what each panel shows is checked against the data it claims to show (the
dataset's own images and masks, the model's own explanations and masks, results.jsonl's values)."""

import json

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection

from conftest import save_align_run
from domainbed_align.report import figures
from domainbed_align.report import tables
from domainbed_align.methods.checkpoints import load_algorithm
from domainbed_align.data import TextureMNIST
from test_tables import write_run


def test_unnormalize_gives_back_the_datasets_own_images(data_dir):
    environment = TextureMNIST(str(data_dir), [3], {}).datasets[0]
    from domainbed_align.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    normalised = torch.stack([environment[i][0] for i in range(3)])
    torch.testing.assert_close(figures.unnormalize(normalised, IMAGENET_MEAN, IMAGENET_STD),
                               torch.stack([environment.image(i) for i in range(3)]), atol=1e-6, rtol=0)


def test_each_maps_panel_shows_what_its_row_says(tmp_path, data_dir):
    algorithm = load_algorithm(save_align_run(tmp_path / "a", data_dir))
    environment = TextureMNIST(str(data_dir), [3], {"data_augmentation": False}).datasets[3]
    indices = [5, 17]
    rows = figures.environment_rows([("ALIGN", algorithm)], environment, indices, "cpu")
    assert [label for label, *_ in rows] == ["image", "ground truth", "ALIGN\nGrad-CAM", "ALIGN\nmask"]
    figure = figures.maps_figure([("photos", rows)])
    axes = np.array(figure.axes).reshape(4, 2)
    images = torch.stack([environment[i][0] for i in indices])
    cams = figures.upsample(algorithm.explain(images, torch.tensor([environment[i][1] for i in indices])),
                            (56, 56))
    with torch.no_grad():
        masks = algorithm.masker(algorithm.prepare_images(images)).float()[:, 0]
    for c, i in enumerate(indices):
        shown = [np.asarray(im.get_array()) for im in axes[0, c].images]
        np.testing.assert_allclose(shown[0], environment.image(i).permute(1, 2, 0).numpy(), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(axes[1, c].images[0].get_array()), environment.mask(i)[0].numpy())
        cam_layer = axes[2, c].images[1]
        np.testing.assert_allclose(np.asarray(cam_layer.get_array()), cams[c].numpy(), atol=1e-6)
        np.testing.assert_allclose(cam_layer.get_alpha(), figures.CAM_OPACITY * cams[c].numpy(), atol=1e-6)
        assert cam_layer.get_cmap().name == "jet"
        np.testing.assert_allclose(np.asarray(axes[3, c].images[0].get_array()), masks[c].numpy(), atol=1e-6)
    assert figure.subfigs[0]._suptitle.get_text() == "photos"
    matplotlib.pyplot.close(figure)


def _sweep_with_two_trials(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    for trial in (0, 1):
        model = save_align_run(sweep / f"run{trial}", data_dir, seed=trial)
        (model.parent / "model_selected.pkl").write_bytes(model.read_bytes())
        record = {"args": {"algorithm": "ALIGN", "dataset": "TextureMNIST", "test_envs": [3], "trial_seed": trial,
                           "hparams_seed": 0}, "step": 0}
        (model.parent / "results.jsonl").write_text(json.dumps(record) + "\n")
        (model.parent / "done").write_text("done")
    return sweep


def test_maps_of_a_sweep_take_one_run_per_algorithm_of_the_chosen_trial(tmp_path, data_dir, capsys):
    sweep = _sweep_with_two_trials(tmp_path, data_dir)
    assert figures.runs_of_sweep(sweep, "selected", 1) == [sweep / "run1" / "model_selected.pkl"]
    out = tmp_path / "maps.png"
    assert figures.main(["maps", "--input_dir", str(sweep), "--out", str(out), "--images", "3",
                         "--envs", "all", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    first = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:3].tolist()  # evaluate's subset
    assert f"photos (held out), images {first}" in printed and "textures (training domain)" in printed
    assert "rows: image; ground truth; ALIGN Grad-CAM; ALIGN mask" in printed
    assert out.stat().st_size > 10_000
    # the earlier form of the command still works
    assert figures.main(["--model", str(sweep / "run0" / "model.pkl"), "--out", str(out), "--images", "2"]) == 0


def _with(folder, extras):
    """Add ``extras`` ({step: {key: value}}) to the records of a run folder write_run made."""
    lines = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    for record in lines:
        record.update(extras.get(record["step"], {}))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_curves_plot_the_mean_over_trials_of_what_results_jsonl_holds(tmp_path):
    sweep = tmp_path / "s"
    for trial, offset in ((0, 0.0), (1, 0.2)):
        folder = write_run(sweep, f"align{trial}", "ALIGN", [3], trial, 0,
                           {0: {"out0": 0.1 + offset, "in3": 0.3}, 100: {"out0": 0.5 + offset, "in3": 0.4}})
        _with(folder, {0: {"mask_mean": 0.9, "align_bce": 0.5}, 100: {"mask_mean": 0.3 + offset, "align_bce": 0.5}})
    write_run(sweep, "erm", "TimmERM", [3], 0, 0, {0: {"out0": 0.2}, 100: {"out0": 0.6}})
    records = tables.load_records(sweep)
    figure = figures.curves_figure(records, tables.Names(records))
    by_title = {ax.get_title(): ax for ax in figure.axes}
    textures = by_title["textures (training)"]
    assert textures.get_ylabel() == "accuracy, out split (%)"
    lines = {line.get_label(): line for line in textures.get_lines()}
    np.testing.assert_allclose(lines["ALIGN"].get_ydata(), [20, 60])  # mean of trials 0 and 1, in percent
    np.testing.assert_allclose(lines["TimmERM"].get_ydata(), [20, 60])
    photos = by_title["photos (held out)"]
    assert photos.get_ylabel() == "accuracy, in split (%)"
    np.testing.assert_allclose({line.get_label(): line for line in photos.get_lines()}["ALIGN"].get_ydata(), [30, 40])
    masks = {line.get_label(): line for line in by_title["ALIGN's mask"].get_lines()}
    assert set(masks) == {"ALIGN"} and np.allclose(masks["ALIGN"].get_ydata(), [0.9, 0.4])
    blank = by_title["blank Grad-CAMs"]
    assert [line.get_label() for line in blank.get_lines()] == ["TimmERM logs no zero_cams\nin training"]
    assert not len(blank.get_lines()[0].get_xdata())  # a legend entry, not an invented value
    assert blank.texts[0].get_text() == "no run reports it"
    matplotlib.pyplot.close(figure)


TERMS = {"ALIGN": "align_bce", "DRE": "reg", "RRR": "rrr_penalty"}


def _comparison_sweep(root):
    """TimmERM (3 trials), ALIGN (3), DRE (2), RRR (1) on TextureMNIST, photos held out, checkpoints at 0, 100, 200.
    ALIGN logs DRE's term ``reg`` too (as the real ALIGN does): it must still stay out of DRE's panel."""
    rng = np.random.default_rng(0)
    for algorithm, trials in (("TimmERM", 3), ("ALIGN", 3), ("DRE", 2), ("RRR", 1)):
        for trial in range(trials):
            steps = {step: {f"{split}{env}": float(rng.uniform(0.05, 0.9))
                            for env in range(4) for split in ("in", "out")} for step in (0, 100, 200)}
            folder = write_run(root, f"{algorithm}{trial}", algorithm, [3], trial, 0, steps)
            extras = {}
            for step in steps:
                extras[step] = {"ce": float(rng.uniform(0.5, 2.3))}
                if algorithm != "TimmERM":
                    extras[step].update({"zero_cams": float(rng.uniform(0, 0.1)), TERMS[algorithm]:
                                         float(rng.uniform(0.1, 1.0))})
                if algorithm == "ALIGN":
                    extras[step].update({"reg": 5.0, "mask_mean": float(rng.uniform(0, 1))})
            _with(folder, extras)
    return root


def _values(root, algorithm, step, key):
    """The trials' values straight from the files (not through the figure's reader)."""
    values = []
    for path in sorted(root.glob(f"{algorithm}*/results.jsonl")):
        for record in map(json.loads, path.read_text().splitlines()):
            if record["step"] == step and key in record:
                values.append(record[key])
    return np.array(values, dtype=float)


def _band(ax, algorithm):
    bands = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == algorithm]
    assert len(bands) <= 1
    return bands[0] if bands else None


def test_curves_read_at_a_glance(tmp_path):
    sweep = _comparison_sweep(tmp_path / "s")
    records = tables.load_records(sweep)
    explanations = [{"run": f"sweeps/out/x/TimmERM{trial}", "algorithm": "TimmERM", "checkpoint": "selected",
                     "split": "test", "env": 3, "step": 100 * trial, "zero_maps": 0.01 * (trial + 1)}
                    for trial in range(3)]
    figure = figures.curves_figure(records, tables.Names(records), explanations)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    page = figure.bbox
    shown = [ax for ax in figure.axes if ax.axison]
    for ax in shown:  # every panel says what its axes are, and its title fits its panel and the page
        assert ax.get_xlabel() == "step" and ax.get_ylabel(), ax.get_title()
        title, box = ax.title.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert title.width <= box.width and box.x0 - 1 <= title.x0 and title.x1 <= box.x1 + 1, ax.get_title()
        for text in (ax.title, ax.yaxis.label, ax.xaxis.label):
            extent = text.get_window_extent(renderer)
            assert page.x0 <= extent.x0 and extent.x1 <= page.x1 and page.y0 <= extent.y0 and extent.y1 <= page.y1
    for part in figure.subfigs:
        extent = part._suptitle.get_window_extent(renderer)
        assert page.x0 <= extent.x0 and extent.x1 <= page.x1 and extent.y1 <= page.y1, part._suptitle.get_text()
    by_title = {ax.get_title(): ax for ax in shown}

    # one method's own explanation loss per panel (no TimmERM: it has no explanation term), never two methods'
    for algorithm, term in TERMS.items():
        ax = by_title[algorithm]
        assert [line.get_label() for line in ax.get_lines()] == [algorithm] and term in ax.get_ylabel()
        np.testing.assert_allclose(ax.get_lines()[0].get_ydata(),
                                   [_values(sweep, algorithm, step, term).mean() for step in (0, 100, 200)])
    assert "TimmERM" not in by_title

    # the reference in every panel whose quantity it logs
    for title in ("textures (training)", "medical (training)", "space (training)", "photos (held out)",
                  "training loss"):
        labels = [line.get_label() for line in by_title[title].get_lines()]
        assert sorted(labels) == ["ALIGN", "DRE", "RRR", "TimmERM"], title
        reference = next(line for line in by_title[title].get_lines() if line.get_label() == "TimmERM")
        assert reference.get_linestyle() == "--" and reference.get_color() == "black"
    blank = by_title["blank Grad-CAMs"]
    stars = [line for line in blank.get_lines() if line.get_label().startswith("TimmERM")]
    assert len(stars) == 1 and stars[0].get_marker() == "*" and "evaluate's zero_maps" in stars[0].get_label()
    np.testing.assert_allclose(stars[0].get_xdata(), [0, 100, 200])
    np.testing.assert_allclose(stars[0].get_ydata(), [0.01, 0.02, 0.03])
    assert "selected checkpoints" in blank.get_legend().get_texts()[0].get_text()

    # bands: mean ± DomainBed's standard error (std over trials, ddof 0, / sqrt(n)) where there are >= 2 trials
    for title, key, scale in (("photos (held out)", "env3_in_acc", 100), ("textures (training)", "env0_out_acc", 100),
                              ("training loss", "ce", 1), ("blank Grad-CAMs", "zero_cams", 1), ("DRE", "reg", 1)):
        ax = by_title[title]
        for algorithm in [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("TimmERM:")]:
            band = _band(ax, algorithm)
            if algorithm == "RRR":
                assert band is None, title  # one trial: no spread to draw
                continue
            assert band is not None, (title, algorithm)
            vertices = band.get_paths()[0].vertices
            for step in (0, 100, 200):
                values = _values(sweep, algorithm, step, key) * scale
                mean, se = values.mean(), values.std() / np.sqrt(len(values))
                at = vertices[np.isclose(vertices[:, 0], step), 1]
                np.testing.assert_allclose([at.min(), at.max()], [mean - se, mean + se], rtol=1e-9, atol=1e-12,
                                           err_msg=f"{title} {algorithm} {step}")
                line = next(line for line in ax.get_lines() if line.get_label() == algorithm)
                np.testing.assert_allclose(line.get_ydata()[list(line.get_xdata()).index(step)], mean, rtol=1e-9)
    matplotlib.pyplot.close(figure)


def test_a_results_folder_is_read_as_its_runs(tmp_path, data_dir, capsys):
    """Every report command takes a results folder (tables.md, README, runs/) as it takes its runs/ folder."""
    results = tmp_path / "results"
    runs = _comparison_sweep(results / "runs")
    (results / "README.md").write_text("a results folder")
    assert tables.main(["--input_dir", str(runs)]) == 0
    from_runs = capsys.readouterr().out
    assert tables.main(["--input_dir", str(results)]) == 0
    assert capsys.readouterr().out == from_runs
    for folder in (runs, results):
        assert figures.main(["curves", "--input_dir", str(folder), "--out", str(tmp_path / "c.png")]) == 0
        assert "training curves of 9 runs" in capsys.readouterr().out
    sweep = _sweep_with_two_trials(tmp_path / "copy", data_dir)
    sweep.rename(tmp_path / "copy" / "runs")
    assert figures.runs_of_sweep(tmp_path / "copy", "selected", 0) == [tmp_path / "copy" / "runs" / "run0" /
                                                                      "model_selected.pkl"]
    matplotlib.pyplot.close("all")


def test_bad_requests_get_one_message(tmp_path, data_dir, capsys):
    texture = save_align_run(tmp_path / "texture", data_dir)
    other = save_align_run(tmp_path / "other", data_dir, dataset="SpuriousTextureMNIST")
    out = str(tmp_path / "f.png")
    assert figures.main(["maps", "--model", str(texture), str(other), "--out", out]) == 1
    assert "must share one dataset" in capsys.readouterr().err
    assert figures.main(["maps", "--model", str(tmp_path / "missing.pkl"), "--out", out]) == 1
    assert "missing.pkl is not a file" in capsys.readouterr().err
    assert figures.main(["maps", "--input_dir", str(tmp_path), "--out", out]) == 1
    assert "no */model_selected.pkl" in capsys.readouterr().err
    assert figures.main(["curves", "--input_dir", str(tmp_path / "nowhere"), "--out", out]) == 1
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        figures.main(["maps", "--model", str(texture), "--out", out, "--images", "0"])


def test_a_figure_replaces_the_previous_one_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "s"
    write_run(sweep, "erm", "TimmERM", [3], 0, 0, {0: {"out0": 0.2}, 100: {"out0": 0.6}})
    out = tmp_path / "curves.png"
    out.write_bytes(b"an earlier figure")
    real_savefig = matplotlib.figure.Figure.savefig

    def dies_half_way(self, fname, **kwargs):  # e.g. a full disk, or a kill, in the middle of the PNG
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG half")
        else:
            with open(fname, "wb") as handle:
                handle.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        figures.main(["curves", "--input_dir", str(sweep), "--out", str(out)])
    assert out.read_bytes() == b"an earlier figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "s"]  # no temporary left beside it
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real_savefig)
    for name, magic in (("curves.png", b"\x89PNG"), ("curves.pdf", b"%PDF"), ("curves.SVG", b"<?xml")):
        assert figures.main(["curves", "--input_dir", str(sweep), "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes().startswith(magic), name  # the format the suffix names
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        figures.main(["curves", "--input_dir", str(sweep), "--out", str(tmp_path / "curves.txt")])
    assert raised.value.code == 2
    assert "--out " + str(tmp_path / "curves.txt") + ": matplotlib cannot write .txt files; use one of" in \
        capsys.readouterr().err
    assert not (tmp_path / "curves.txt").exists()
    matplotlib.pyplot.close("all")
