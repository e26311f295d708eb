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
                           "VLCSMini", "True", "True", "DecoyMNIST", "True", "True", "DecoyMNISTFull", "True", "True"]


@pytest.mark.parametrize("dataset", ["TextureMNIST", "SpuriousTextureMNIST", "VLCSMini"])
def test_align_trains_on_each_new_dataset_through_upstream_train_py(data_dir: Path, tmp_path: Path,
                                                                    dataset: str) -> None:
    from conftest import hook_active, run_python

    if not hook_active():
        pytest.skip("pip install -e . first (the .pth hook is inactive)")
    out = tmp_path / dataset
    hparams = '{"batch_size": 4, "warmup_steps": 1, "masker_warmup_steps": 0}'
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


ANNOTATION_TERMS = {"GRADIA": "gradia_l1", "HAICS": "haics_bce", "RRR": "rrr_penalty", "RES_G": "res_imputation",
                    "RES_L": "res_imputation", "CARE": "care_inner"}
BASELINE_TERMS = {"SGT": "sgt_kl", **ANNOTATION_TERMS}


@pytest.mark.parametrize("algorithm", sorted(BASELINE_TERMS))
def test_baselines_train_through_upstream_train_py_annotation_methods_on_their_masks(
        data_dir: Path, tmp_path: Path, algorithm: str) -> None:
    """No --hparams about masks: gt_masks is the annotation methods' default on TextureMNIST (SGT has none);
    upstream's own evaluation (predict on loaders that carry the mask channel) runs too."""
    from conftest import hook_active, run_python

    from domainbed_align.methods import registry

    assert {e.name for e in registry.entries() if e.annotations} == set(ANNOTATION_TERMS)
    annotated = algorithm in ANNOTATION_TERMS
    if not hook_active():
        pytest.skip("pip install -e . first (the .pth hook is inactive)")
    out = tmp_path / algorithm
    result = run_python(["-m", "domainbed.scripts.train", "--algorithm", algorithm, "--dataset", "TextureMNIST",
                         "--data_dir", str(data_dir), "--test_envs", "3", "--steps", "2", "--checkpoint_freq", "5",
                         "--hparams", '{"batch_size": 4, "warmup_steps": 0, "masker_warmup_steps": 0}',
                         "--output_dir", str(out)], Path(ROOT), cwd=tmp_path)
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


@pytest.mark.parametrize("algorithm", ["RRR", "ALIGN"])
def test_decoy_mnist_trains_through_upstream_train_py_holding_out_the_randomized_decoys(
        data_dir: Path, tmp_path: Path, algorithm: str) -> None:
    """Issue 30: DecoyMNIST is a dataset of upstream's registry; RRR gets the patch annotation (gt_masks on by default)
    and the reference's lambda translated to pixel/255 inputs; ALIGN's masker runs on the one-channel digits."""
    from conftest import hook_active, run_python

    if not hook_active():
        pytest.skip("pip install -e . first (the .pth hook is inactive)")
    out = tmp_path / algorithm
    result = run_python(["-m", "domainbed.scripts.train", "--algorithm", algorithm, "--dataset", "DecoyMNIST",
                         "--data_dir", str(data_dir), "--test_envs", "2", "--steps", "2", "--checkpoint_freq", "5",
                         "--hparams", '{"batch_size": 4, "warmup_steps": 1, "masker_warmup_steps": 0}',
                         "--output_dir", str(out)],
                        Path(ROOT), cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    import json

    last = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert all(0.0 <= last[f"env{i}_in_acc"] <= 1.0 for i in range(3)) and "env3_in_acc" not in last
    if algorithm == "RRR":
        assert last["hparams"]["gt_masks"] is True and last["annotated"] == 1.0 and last["rrr_penalty"] > 0.0
        assert last["hparams"]["lambda_rrr"] == pytest.approx(1000 / 255 ** 2)
    else:
        assert last["in_warmup"] == 0.0 and 0.0 < last["mask_mean"] < 1.0 and "gt_masks" not in last["hparams"]


def _write_half_masks(environments: list, mask_dir: Path) -> None:
    """Synthetic masks for image-folder environments: the left half of each image."""
    from PIL import Image

    from domainbed_align.annotations.folder import image_folder_keys, mask_path

    for environment in environments:
        for (path, _), key in zip(environment.samples, image_folder_keys(environment)):
            with Image.open(path) as image:
                width, height = image.size
            pixels = bytearray(width * height)
            for row in range(height):
                pixels[row * width: row * width + width // 2] = b"\xff" * (width // 2)
            mask_path(mask_dir, key).parent.mkdir(parents=True, exist_ok=True)
            Image.frombytes("L", (width, height), bytes(pixels)).save(mask_path(mask_dir, key))


def test_an_annotation_method_trains_through_train_py_on_vlcsmini_with_a_mask_folder(data_dir: Path,
                                                                                     tmp_path: Path) -> None:
    """The same --hparams reach an annotation-free method in a sweep: it keeps its plain images."""
    import json

    from conftest import hook_active, run_python

    from domainbed_align.data import VLCSMini

    if not hook_active():
        pytest.skip("pip install -e . first (the .pth hook is inactive)")
    masks = tmp_path / "masks"
    _write_half_masks(VLCSMini(str(data_dir), [0], {}).datasets[1:], masks)
    hparams = json.dumps({"batch_size": 4, "mask_dir": str(masks)})
    for algorithm in ("GRADIA", "TimmERM"):
        out = tmp_path / algorithm
        result = run_python(["-m", "domainbed.scripts.train", "--algorithm", algorithm, "--dataset", "VLCSMini",
                             "--data_dir", str(data_dir), "--test_envs", "0", "--steps", "2", "--checkpoint_freq",
                             "5", "--hparams", hparams, "--output_dir", str(out)], Path(ROOT), cwd=tmp_path)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        last = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
        assert all(0.0 <= last[f"env{i}_out_acc"] <= 1.0 for i in range(3))
        errors = (out / "err.txt").read_text()
        if algorithm == "GRADIA":
            assert last["annotated"] == 1.0 and last["gradia_l1"] > 0 and "plain ERM" not in errors
        else:
            assert "annotated" not in last and "mask_dir" in errors and "is ignored" in errors
    (masks / "SUN09" / "bird").rename(masks / "SUN09" / "birds")  # a gap: refused before training, one line
    result = run_python(["-m", "domainbed.scripts.train", "--algorithm", "GRADIA", "--dataset", "VLCSMini",
                         "--data_dir", str(data_dir), "--test_envs", "0", "--steps", "2", "--hparams", hparams,
                         "--output_dir", str(tmp_path / "gap")], Path(ROOT), cwd=tmp_path)
    shown = result.stdout + result.stderr  # train.py's Tee sends stderr to its log and the console
    assert result.returncode != 0 and "domainbed-align: error: mask_dir" in shown
    assert "SUN09/bird/" in shown and "Traceback" not in shown


def test_upstream_image_folder_datasets_take_a_mask_folder(data_dir: Path, tmp_path: Path) -> None:
    """DomainBed's own VLCS class (a MultipleEnvironmentImageFolder), on a small copy of VLCSMini's photos laid out
    as VLCS: the hook attaches the masks; augmented training images keep their mask's shape."""
    from PIL import Image

    from conftest import hook_active

    from domainbed_align.data import VLCSMini

    if not hook_active():
        pytest.skip("pip install -e . first (the .pth hook is inactive)")
    photos = [path for environment in VLCSMini(str(data_dir), [0], {}).datasets for path, _ in environment.samples]
    for e, domain in enumerate(["Caltech101", "LabelMe", "SUN09", "VOC2007"]):
        for c, name in enumerate(["bird", "car", "chair", "dog", "person"]):
            folder = tmp_path / "data" / "VLCS" / domain / name
            folder.mkdir(parents=True)
            for i in range(2):  # each photo's left half painted white: the region its mask marks
                with Image.open(photos[(e * 10 + c * 2 + i) % len(photos)]) as photo:
                    photo = photo.convert("RGB")
                photo.paste((255, 255, 255), (0, 0, photo.size[0] // 2, photo.size[1]))
                photo.save(folder / f"{i}.png")
    out = _run(f"""
        import json
        from pathlib import Path
        import torch
        from domainbed import datasets, hparams_registry
        from domainbed_align.annotations.folder import MaskFolderError
        import test_data_integration as t
        plain = datasets.VLCS({str(tmp_path / "data")!r}, [3], hparams_registry.default_hparams("GRADIA", "VLCS"))
        t._write_half_masks(plain.datasets[:3], Path({str(tmp_path / "masks")!r}))
        hparams = hparams_registry.default_hparams("GRADIA", "VLCS")
        hparams["mask_dir"] = {str(tmp_path / "masks")!r}
        masked = datasets.VLCS({str(tmp_path / "data")!r}, [3], hparams)
        torch.manual_seed(0)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1); std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        aligned, sides = [], set()
        for draw in range(16):  # augmented: crop, flip, colour jitter
            x, y = masked.datasets[0][3]
            brightness = (x[:3] * std + mean).mean(0)
            inside, outside = brightness[x[3] > 0.5].mean().item(), brightness[x[3] < 0.5].mean().item()
            aligned.append(inside > outside + 0.1)  # the mask still covers the painted half
            sides.add(x[3, :, :112].mean().item() > x[3, :, 112:].mean().item())
        print(tuple(masked.input_shape), masked.input_shape.has_mask_channel, sorted(x[3].unique().tolist()))
        print(all(aligned), sides == {{True, False}}, bool((masked.datasets[3][0][0][3] == -1).all()))
        erm = datasets.VLCS({str(tmp_path / "data")!r}, [3], {{**hparams_registry.default_hparams("ERM", "VLCS"),
                                                             "gt_masks": False, "mask_dir": hparams["mask_dir"]}})
        print(tuple(erm.input_shape))  # a sweep's --hparams reach DomainBed's ERM: it keeps plain images
        next(Path({str(tmp_path / "masks")!r}).rglob("*.png")).unlink()
        try:
            datasets.VLCS({str(tmp_path / "data")!r}, [3], hparams)
        except MaskFolderError as error:
            print("refused", "lacks 1 of the 10 masks" in str(error))
    """.replace("import test_data_integration as t", "import sys; sys.path.insert(0, 'tests'); "
                                                       "import test_data_integration as t"))
    lines = out.splitlines()
    assert lines[0] == "(4, 224, 224) True [0.0, 1.0]"
    assert lines[1] == "True True True"  # aligned in every draw, flipped in some
    assert lines[2] == "(3, 224, 224)" and lines[3] == "refused True"
