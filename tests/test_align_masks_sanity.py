"""sweeps/align_masks_sanity.py: what it writes for later readers (masks.md, summary.md, runs.csv) is written
whole, through domainbed_align.atomic."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("align_masks_sanity", REPO / "sweeps" / "align_masks_sanity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_masks_md_is_written_durably_in_one_rename(tmp_path, monkeypatch, capsys):
    runs, out = tmp_path / "align", tmp_path / "out"
    for trial, iou in ((0, 0.5), (1, 0.7)):
        run = runs / f"run{trial}"
        run.mkdir(parents=True)
        args = {"algorithm": "ALIGN", "hparams_seed": 0, "trial_seed": trial}
        (run / "results.jsonl").write_text(json.dumps({"args": args, "hparams": {"batch_size": 8}, "step": 0}) + "\n")
        (run / "done").write_text("done")
        (run / "model.pkl").write_bytes(b"")
        masks = out / "masks" / f"trial{trial}"  # exported already: nothing is run
        masks.mkdir(parents=True)
        (masks / "manifest.json").write_text(json.dumps({"environments": {"textures": {"iou": iou}}}))
    (out / "masks.md").write_text("an earlier table\n")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(sys, "argv", ["align_masks_sanity.py", "--align_runs", str(runs), "--output_dir", str(out),
                                      "--masks_only"])
    assert _script().main() == 0
    table = (out / "masks.md").read_text()
    assert "0.600 ± 0.100" in table  # the mean ± standard error of the two trials' IoUs
    assert synced  # flushed to disk before the rename
    assert sorted(p.name for p in out.iterdir()) == ["masks", "masks.md"]  # no temporary file beside it
