"""`python -m domainbed_align.doctor` reports what is right and names the fix for what is wrong."""

import os
import sys
from pathlib import Path

import pytest

from conftest import STANDIN, hook_active, run_python


def _doctor(tmp_path, domainbed, path_first):
    old_path = os.environ["PATH"]
    os.environ["PATH"] = os.pathsep.join([path_first, old_path])
    try:
        return run_python(["-m", "domainbed_align.doctor"], domainbed, cwd=tmp_path, python_on_path=False)
    finally:
        os.environ["PATH"] = old_path


@pytest.mark.skipif(not hook_active(), reason="pip install -e . first (the .pth hook is inactive)")
def test_healthy_environment(tmp_path):
    result = _doctor(tmp_path, STANDIN, str(Path(sys.executable).parent))
    assert result.returncode == 0, result.stdout
    assert f"domainbed resolves to {STANDIN}" in result.stdout
    assert "TimmERM, DRE, ALIGN, SGT, GRADIA, HAICS, RRR, RES_G, RES_L, CARE are registered" in result.stdout
    assert "datasets TextureMNIST, SpuriousTextureMNIST, VLCSMini are registered" in result.stdout
    assert "registration hook (domainbed_align_hook.pth) is active" in result.stdout
    assert result.stdout.strip().endswith("all good")


def test_missing_domainbed_and_foreign_python_are_reported_with_fixes(tmp_path, monkeypatch):
    monkeypatch.delenv("DOMAINBED_ROOT", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    impostor = tmp_path / "bin"
    impostor.mkdir()
    (impostor / "python").symlink_to(Path(sys.base_prefix) / "bin" / "python3")
    result = _doctor(tmp_path, None, str(impostor))
    assert result.returncode == 1
    assert "[FAIL] `import domainbed` fails" in result.stdout
    assert "git -C DomainBed checkout b93c22a" in result.stdout
    assert "sweeps would train without the plugin" in result.stdout
    assert "fix: activate this environment" in result.stdout
    assert "2 problem(s) found" in result.stdout


@pytest.mark.skipif(not hook_active(), reason="pip install -e . first (the .pth hook is inactive)")
def test_a_wrong_domainbed_root_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINBED_ROOT", str(tmp_path / "no_domainbed_here"))
    result = _doctor(tmp_path, STANDIN, str(Path(sys.executable).parent))
    assert result.returncode == 1
    assert f"[FAIL] DOMAINBED_ROOT={tmp_path / 'no_domainbed_here'} is not a DomainBed checkout" in result.stdout
    assert "1 problem(s) found" in result.stdout  # the rest (domainbed from PYTHONPATH) is fine
