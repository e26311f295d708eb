"""``python -m domainbed_align.figures``: colours by hand, the image rows against the dataset's own un-normalised
images, and the layout and messages of the command."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_align_run
from domainbed_align import figures
from domainbed_align.data import TextureMNIST


def test_jet_by_hand():
    colours = figures.jet(torch.tensor([[0.0, 0.375, 0.5, 1.0]]))  # [1, 4] -> [3, 1, 4]
    assert colours[:, 0].T.tolist() == [[0.0, 0.0, 0.5], [0.0, 1.0, 1.0], [0.5, 1.0, 0.5], [0.5, 0.0, 0.0]]


def test_overlay_leaves_a_zero_map_untouched_and_tints_by_the_map():
    images = torch.rand(2, 3, 4, 4)
    maps = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])
    overlaid = figures.heat_overlay(images, maps)
    assert torch.equal(overlaid[0], images[0])
    expected = 0.5 * images[1] + 0.5 * torch.tensor([0.5, 0.0, 0.0]).view(3, 1, 1)  # jet(1) is dark red
    torch.testing.assert_close(overlaid[1], expected)


def test_unnormalize_gives_back_the_datasets_own_images(data_dir):
    environment = TextureMNIST(str(data_dir), [3], {}).datasets[0]
    from domainbed_align.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    normalised = torch.stack([environment[i][0] for i in range(3)])
    torch.testing.assert_close(figures.unnormalize(normalised, IMAGENET_MEAN, IMAGENET_STD),
                               torch.stack([environment.image(i) for i in range(3)]), atol=1e-6, rtol=0)


def test_figure_of_two_runs(tmp_path, data_dir, capsys):
    runs = [save_align_run(tmp_path / name, data_dir, seed=seed) for seed, name in enumerate(("a", "b"))]
    out = tmp_path / "figure.png"
    assert figures.main(["--model", *map(str, runs), "--out", str(out), "--images", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    first = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:3].tolist()  # evaluate's first images
    assert f"environment 3 (photos), images {first}" in printed
    assert "rows: image; ALIGN a Grad-CAM; ALIGN a image x mask; ALIGN b Grad-CAM; ALIGN b image x mask" in printed
    tile = figures.MIN_TILE  # 56-px images are enlarged
    picture = np.asarray(Image.open(out))
    assert picture.shape == (5 * (tile + figures.GAP), figures.LABEL_WIDTH + 3 * (tile + figures.GAP), 3)
    # The first image tile is that image, un-normalised by the dataset itself, enlarged.
    environment = TextureMNIST(str(data_dir), [3], {}).datasets[3]
    enlarged = torch.nn.functional.interpolate(environment.image(first[0])[None], size=(tile, tile), mode="bilinear",
                                               align_corners=False)[0]
    expected = (enlarged.permute(1, 2, 0) * 255).round().numpy()
    tile_pixels = picture[:tile, figures.LABEL_WIDTH:figures.LABEL_WIDTH + tile].astype(float)
    assert np.abs(tile_pixels - expected).max() <= 1
    # Rows differ: the Grad-CAM rows are not copies of the image row.
    assert np.abs(picture[tile + figures.GAP:2 * tile + figures.GAP, figures.LABEL_WIDTH:].astype(float)
                  - picture[:tile, figures.LABEL_WIDTH:].astype(float)).mean() > 1


def test_bad_requests_get_one_message(tmp_path, data_dir, capsys):
    texture = save_align_run(tmp_path / "texture", data_dir)
    other = save_align_run(tmp_path / "other", data_dir, dataset="SpuriousTextureMNIST")
    out = str(tmp_path / "f.png")
    assert figures.main(["--model", str(texture), str(other), "--out", out]) == 1
    assert "must share one dataset" in capsys.readouterr().err
    assert figures.main(["--model", str(texture), "--out", out, "--env", "7"]) == 1
    assert "--env 7 is not an environment of TextureMNIST (0 to 3: textures, medical, space, photos)" in \
        capsys.readouterr().err
    assert figures.main(["--model", str(tmp_path / "missing.pkl"), "--out", out]) == 1
    assert "missing.pkl is not a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        figures.main(["--model", str(texture), "--out", out, "--images", "0"])
