"""Upstream DomainBed against a prepared data dir (offline). Runs only when DOMAINBED_ROOT is set."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


ROOT = os.environ.get("DOMAINBED_ROOT")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not ROOT, reason="set DOMAINBED_ROOT to an upstream DomainBed checkout at b93c22a to run")]
REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    # A fresh interpreter with upstream on sys.path: nothing leaks into the other tests' sys.modules.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(REPO)]), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_upstream_mnist_datasets_load_offline(data_dir: Path) -> None:
    out = _run(f"""
        import torchvision.datasets.mnist as tv
        def no_download(*a, **k):
            raise SystemExit("torchvision tried to download")
        tv.download_and_extract_archive = no_download
        from domainbed import datasets, hparams_registry
        hp = hparams_registry.default_hparams("ERM", "RotatedMNIST")
        rot = datasets.RotatedMNIST({str(data_dir)!r}, [0], hp)
        col = datasets.ColoredMNIST({str(data_dir)!r}, [0], hp)
        print(sum(len(e) for e in rot.datasets), sum(len(e) for e in col.datasets))
    """)
    assert out.split() == ["70000", "70000"]


def test_our_datasets_through_upstream_train_utilities(data_dir: Path) -> None:
    # The pieces of upstream's train.py that touch a dataset: holdout split, class-balanced weights,
    # and both loaders.
    out = _run(f"""
        import torch
        from domainbed.lib import misc
        from domainbed.lib.fast_data_loader import FastDataLoader, InfiniteDataLoader
        from domainbed_align.data import DATASETS
        for name, cls in DATASETS.items():
            ds = cls({str(data_dir)!r}, [len(cls.ENVIRONMENTS) - 1], {{"data_augmentation": True}})
            out, in_ = misc.split_dataset(ds[0], int(len(ds[0]) * 0.2), misc.seed_hash(0, 0))
            w = misc.make_weights_for_balanced_classes(in_)
            x, y = next(iter(InfiniteDataLoader(in_, w, 8, 0)))
            assert tuple(x.shape) == (8,) + tuple(ds.input_shape), (name, x.shape)
            n = sum(len(b[1]) for b in FastDataLoader(out, 64, 0))
            print(name, n == len(out), int(y.max()) < ds.num_classes)
    """)
    assert out.split() == ["TextureMNIST", "True", "True", "SpuriousTextureMNIST", "True", "True",
                           "VLCSMini", "True", "True"]


@pytest.mark.parametrize("dataset", ["TextureMNIST", "SpuriousTextureMNIST", "VLCSMini"])
def test_align_trains_on_each_new_dataset_through_upstream_train_py(data_dir: Path, tmp_path: Path,
                                                                    dataset: str) -> None:
    from conftest import hook_active, run_python

    if not hook_active():
        pytest.skip("pip install -e . first (the .pth hook is inactive)")
    out = tmp_path / dataset
    hparams = '{"batch_size": 4, "warmup_steps": 1}'
    result = run_python(["-m", "domainbed.scripts.train", "--algorithm", "ALIGN", "--dataset", dataset,
                         "--data_dir", str(data_dir), "--test_envs", "0", "--steps", "2", "--checkpoint_freq", "5",
                         "--hparams", hparams, "--output_dir", str(out)], Path(ROOT), cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    import json

    last = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 1 and last["in_warmup"] == 0.0 and 0.0 < last["mask_mean"] < 1.0
    assert last["hparams"]["lr"] == 1e-3 and last["hparams"]["pretrained"] is False  # offline-dataset defaults
    n_envs = {"TextureMNIST": 4, "SpuriousTextureMNIST": 3, "VLCSMini": 3}[dataset]
    assert all(0.0 <= last[f"env{i}_out_acc"] <= 1.0 for i in range(n_envs))


ANNOTATION_TERMS = {"GRADIA": "gradia_l1", "HAICS": "haics_bce", "RRR": "rrr_penalty"}
BASELINE_TERMS = {"SGT": "sgt_kl", **ANNOTATION_TERMS}


@pytest.mark.parametrize("algorithm", sorted(BASELINE_TERMS))
def test_baselines_train_through_upstream_train_py_annotation_methods_on_their_masks(
        data_dir: Path, tmp_path: Path, algorithm: str) -> None:
    """No --hparams about masks: gt_masks is the annotation methods' default on TextureMNIST (SGT has none);
    upstream's own evaluation (predict on loaders that carry the mask channel) runs too."""
    from conftest import hook_active, run_python

    from domainbed_align import registry

    assert {e.name for e in registry.entries() if e.annotations} == set(ANNOTATION_TERMS)
    annotated = algorithm in ANNOTATION_TERMS
    if not hook_active():
        pytest.skip("pip install -e . first (the .pth hook is inactive)")
    out = tmp_path / algorithm
    result = run_python(["-m", "domainbed.scripts.train", "--algorithm", algorithm, "--dataset", "TextureMNIST",
                         "--data_dir", str(data_dir), "--test_envs", "3", "--steps", "2", "--checkpoint_freq", "5",
                         "--hparams", '{"batch_size": 4}', "--output_dir", str(out)], Path(ROOT), cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    import json

    last = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    if annotated:
        assert last["hparams"]["gt_masks"] is True and last["annotated"] == 1.0
    else:
        assert "gt_masks" not in last["hparams"] and "annotated" not in last
    assert last[BASELINE_TERMS[algorithm]] > 0.0
    assert all(0.0 <= last[f"env{i}_out_acc"] <= 1.0 for i in range(4))
    assert "plain ERM" not in (out / "err.txt").read_text()
