"""`masks export` writes its folder atomically (a killed export leaves nothing that could pass for the user's own
masks) and only into a new or empty --output_dir. The run, masker and dataset are small stand-ins: what is checked is
how the folder is written, not the masks (tests/test_mask_folder.py exports a real ALIGN run)."""

from __future__ import annotations

import json

import pytest
import torch

from domainbed_align import atomic
from domainbed_align.report import evaluate
from domainbed_align.report import mask_export
from domainbed_align.annotations.folder import MaskFolderError, check_provenance


class _Environment:
    def __init__(self, name: str, count: int, fail_at: int | None = None) -> None:
        self.mask_keys = [f"{name}/{i:05d}" for i in range(count)]
        self.fail_at = fail_at

    def __len__(self) -> int:
        return len(self.mask_keys)

    def __getitem__(self, index: int):
        if index == self.fail_at:
            raise KeyboardInterrupt  # the export is stopped half-way (Ctrl-C; a kill leaves the same on disk)
        return torch.zeros(3, 6, 6), 0


class _Algorithm:
    steps_done = 7
    in_channels = 3  # the images' channels: the export splits off a mask channel by the annotations protocol

    def masker(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full((len(images), 1, 6, 6), 0.5)


@pytest.fixture
def stand_in_run(monkeypatch):
    """An ALIGN run on a two-environment dataset (environment 1 held out); ``fail[0] = index`` stops the export at
    that image of environment 1."""
    fail: list[int | None] = [None]
    checkpoint = {"args": {"algorithm": "ALIGN", "dataset": "TextureMNIST", "test_envs": [1]}}
    monkeypatch.setattr(mask_export, "read_checkpoint", lambda path, device: checkpoint)
    monkeypatch.setattr(mask_export, "algorithm_from_checkpoint", lambda checkpoint, device: _Algorithm())

    def dataset_of_run(checkpoint, data_dir):
        dataset = type("Dataset", (), {"ENVIRONMENTS": ["first", "second"]})()
        dataset.datasets = [_Environment("first", 5), _Environment("second", 5, fail[0])]
        return dataset

    monkeypatch.setattr(evaluate, "dataset_of_run", dataset_of_run)
    return fail


def test_a_stopped_export_leaves_no_folder_that_passes_for_the_users_own_masks(tmp_path, stand_in_run):
    out = tmp_path / "exported"
    stand_in_run[0] = 3
    with pytest.raises(KeyboardInterrupt):
        mask_export.export(tmp_path / "model.pkl", out, progress=False, batch_size=2)
    # before: the first environment's masks, and no manifest.json, which check_provenance takes for the user's own
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
    stand_in_run[0] = None
    manifest = mask_export.export(tmp_path / "model.pkl", out, progress=False, batch_size=2)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert len(list(out.glob("*/*.png"))) == 10 and [p.name for p in tmp_path.iterdir()] == ["exported"]
    with pytest.raises(MaskFolderError, match="trained on environment"):
        check_provenance(out, "TextureMNIST", [0])  # the manifest is there: the leak check runs


def test_a_killed_exports_temporary_folder_is_removed_by_the_next_export(tmp_path, stand_in_run):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".exported{atomic.PARTIAL}{socket.gethostname()}-{dead.pid}-x"
    (leftover / "first").mkdir(parents=True)
    mask_export.export(tmp_path / "model.pkl", tmp_path / "exported", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]


@pytest.mark.parametrize("existing", ["images", "earlier_export", "file"])
def test_an_existing_output_dir_is_refused_before_the_model_is_read(tmp_path, capsys, existing):
    out = tmp_path / "out"
    if existing == "file":
        out.write_text("x")
    else:
        out.mkdir()
        (out / ("photo.jpg" if existing == "images" else "manifest.json")).write_text("x")
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    # the model does not even exist: the refusal comes first, and costs nothing
    assert mask_export.main(["export", "--model", str(tmp_path / "missing.pkl"), "--output_dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output_dir '{out}'" in err and "Give a new --output_dir" in err
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before


def test_an_empty_output_dir_is_used(tmp_path, stand_in_run):
    out = tmp_path / "out"
    out.mkdir()
    mask_export.export(tmp_path / "model.pkl", out, progress=False)
    assert (out / "manifest.json").is_file() and len(list(out.glob("*/*.png"))) == 10
