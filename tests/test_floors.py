"""Version floors: declared for every dependency, met by the environment (exactly, in CI's floor environment), and
a torch or timm below its floor named in one line, at import and when DomainBed imports our algorithms."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import REPO, hook_active
from domainbed_align import doctor, floors, settings

# .ci/run sets this in its second environment, where every dependency is installed at exactly its floor
IN_FLOOR_ENVIRONMENT = bool(settings.value("floor_env"))


def _declared_floors(extra: str | None = None) -> dict[str, str]:
    """name -> floor of the installed package's metadata: the Requires-Dist entries without an extra, or those of
    ``extra``."""
    declared = {}
    for requirement in metadata.requires("domainbed-align") or []:
        spec, _, marker = requirement.partition(";")
        if (extra is None and marker) or (extra is not None and f'extra == "{extra}"' not in marker):
            continue
        name, _, floor = spec.replace(" ", "").partition(">=")
        declared[name.lower().replace("-", "_")] = floor
    return declared


def test_the_metadata_declares_every_floor_and_only_floors():
    optional = {name for names in floors.EXTRAS.values() for name in names}
    assert _declared_floors() == {name.lower(): floor for name, floor in floors.FLOORS.items() if name not in optional}
    for extra, names in floors.EXTRAS.items():  # the optional parts, each at its floor
        assert _declared_floors(extra) == {name.lower(): floors.FLOORS[name] for name in names}, extra


def test_a_missing_extra_is_named_with_its_install_command(monkeypatch):
    import importlib.util

    from domainbed_align.errors import MissingExtraError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"^domainbed-align figures needs matplotlib, which is not installed: "
                                                r"pip install 'domainbed-align\[report\]'$"):
        floors.require_extra("report", "domainbed-align figures")
    floors.require_extra("slurm", "the slurm launcher")  # installed here: no error


def test_the_environment_meets_the_floors_exactly_in_the_floor_environment():
    for name, floor in floors.FLOORS.items():
        found = metadata.version(name)
        if IN_FLOOR_ENVIRONMENT:
            assert floors.release(found) == floors.release(floor), f"{name} {found} installed, floor {floor}"
        else:
            assert floors.release(found) >= floors.release(floor), f"{name} {found} is below its floor {floor}"


@pytest.mark.parametrize("version, release", [("2.4.1", (2, 4, 1)), ("2.4.1+cu121", (2, 4, 1)),
                                              ("2.12.0.dev20250101", (2, 12, 0)), ("1.0.3rc1", (1, 0, 3)),
                                              ("0.23.0", (0, 23, 0)), ("10", (10,))])
def test_release_reads_the_numeric_release(version, release):
    assert floors.release(version) == release


def test_release_orders_versions_numerically_not_as_text():
    assert floors.release("2.10.0") > floors.release("2.4.1") and floors.release("0.9.0") < floors.release("0.10.0")


def test_below_floor_names_the_package_the_floor_and_what_was_found(monkeypatch):
    versions = {"torch": "2.1.0", "timm": "1.0.31"}
    monkeypatch.setattr(floors, "installed_version", versions.get)
    assert floors.below_floor("torch") == (
        "domainbed-align needs torch >= 2.4.1, found 2.1.0: pip install --upgrade 'torch>=2.4.1' "
        "(or install a domainbed-align release that supports torch 2.1.0)")
    assert floors.below_floor("timm") is None
    monkeypatch.setattr(floors, "installed_version", lambda name: None)
    assert "timm is not installed" in floors.below_floor("timm")


def test_doctor_reports_each_dependency_against_its_floor(monkeypatch, capsys):
    real = floors.installed_version
    monkeypatch.setattr(floors, "installed_version", lambda name: "1.9.0" if name == "numpy" else real(name))
    report = doctor.Report()
    assert doctor.check_floors(report) is False
    out = capsys.readouterr().out
    assert report.failures == 1
    assert "[FAIL] domainbed-align needs numpy >= 1.24.4, found 1.9.0" in out
    assert f"-m pip install --upgrade 'numpy>=1.24.4'" in out
    assert f"[ok]   torch {real('torch')} (tested from {floors.FLOORS['torch']})" in out


def _fake_distribution(folder: Path, name: str, version: str) -> None:
    """Metadata of an installed ``name`` at ``version``, found first on sys.path (the real one stays importable)."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _python(args: list[str], pythonpath: list[Path], *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)))
    env.pop("DOMAINBED_ALIGN_TRACEBACK", None)
    return subprocess.run([sys.executable, *flags, *args], env=env, capture_output=True, text=True, timeout=120)


def test_importing_the_package_below_the_torch_floor_stops_with_one_line(tmp_path):
    _fake_distribution(tmp_path, "torch", "2.1.0")
    _fake_distribution(tmp_path, "timm", floors.FLOORS["timm"])
    # -S: no site-packages, so no .pth hook imported us already; the package comes from the checkout
    result = _python(["-c", "import domainbed_align"], [tmp_path, REPO], "-S")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "domainbed-align: error: domainbed-align needs torch >= 2.4.1, found 2.1.0: pip install --upgrade "
        "'torch>=2.4.1' (or install a domainbed-align release that supports torch 2.1.0)"]


@pytest.mark.skipif(not hook_active(), reason="pip install -e . first (the .pth hook is inactive)")
def test_the_hook_is_silent_at_start_up_and_names_an_old_timm_when_domainbed_imports_our_algorithms(tmp_path):
    _fake_distribution(tmp_path, "timm", "0.9.16")
    # a DomainBed without torch, so that the check reads the (fake) metadata, as before torch's first import
    (tmp_path / "domainbed").mkdir()
    (tmp_path / "domainbed" / "__init__.py").write_text("")
    (tmp_path / "domainbed" / "algorithms.py").write_text("ALGORITHMS = []\n\n\nclass Algorithm:\n    pass\n")
    started = _python(["-c", "print('started')"], [tmp_path])
    assert (started.returncode, started.stdout, started.stderr) == (0, "started\n", "")
    result = _python(["-c", "import domainbed.algorithms"], [tmp_path])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "domainbed-align: error: domainbed-align needs timm >= 1.0.3, found 0.9.16: pip install --upgrade "
        "'timm>=1.0.3' (or install a domainbed-align release that supports timm 0.9.16)"]
