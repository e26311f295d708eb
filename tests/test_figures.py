"""``python -m domainbed_align.figures``: what each panel shows is checked against the data it claims to show (the
dataset's own images and masks, the model's own explanations and masks, results.jsonl's values)."""

import json

import matplotlib
import numpy as np
import pytest
import torch

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


def test_curves_plot_the_mean_over_trials_of_what_results_jsonl_holds(tmp_path):
    sweep = tmp_path / "s"
    for trial, offset in ((0, 0.0), (1, 0.2)):
        folder = write_run(sweep, f"align{trial}", "ALIGN", [3], trial, 0,
                           {0: {"out0": 0.1 + offset, "in3": 0.3}, 100: {"out0": 0.5 + offset, "in3": 0.4}})
        lines = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
        for record, mask_mean in zip(lines, (0.9, 0.3 + offset)):
            record.update(mask_mean=mask_mean, align_bce=0.5)
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    write_run(sweep, "erm", "TimmERM", [3], 0, 0, {0: {"out0": 0.2}, 100: {"out0": 0.6}})
    records = tables.load_records(sweep)
    figure = figures.curves_figure(records, tables.Names(records))
    by_title = {ax.get_title(): ax for ax in figure.axes}
    textures = by_title["textures (training, out split)"]
    lines = {line.get_label(): line for line in textures.get_lines()}
    np.testing.assert_allclose(lines["ALIGN"].get_ydata(), [0.2, 0.6])  # mean of trials 0 and 1
    np.testing.assert_allclose(lines["TimmERM"].get_ydata(), [0.2, 0.6])
    photos = {line.get_label(): line for line in by_title["photos (held out, in split)"].get_lines()}
    np.testing.assert_allclose(photos["ALIGN"].get_ydata(), [0.3, 0.4])
    masks = {line.get_label(): line for line in by_title["ALIGN's mask_mean"].get_lines()}
    assert set(masks) == {"ALIGN"} and np.allclose(masks["ALIGN"].get_ydata(), [0.9, 0.4])
    blank = by_title["zero_cams (blank Grad-CAM share)"]
    assert not blank.get_lines() and blank.texts[0].get_text() == "no run reports it"
    matplotlib.pyplot.close(figure)


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
