"""`python -m domainbed_align.doctor` reports what is right and names the fix for what is wrong."""

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import STANDIN, hook_active, run_python
from domainbed_align import doctor


def _doctor(tmp_path, domainbed, path_first):
    old_path = os.environ["PATH"]
    os.environ["PATH"] = os.pathsep.join([path_first, old_path])
    try:
        return run_python(["-m", "domainbed_align.doctor"], domainbed, cwd=tmp_path, python_on_path=False)
    finally:
        os.environ["PATH"] = old_path


@pytest.mark.skipif(not hook_active(), reason="pip install -e . first (the .pth hook is inactive)")
def test_healthy_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINBED_ALIGN_JOBS", "2")
    result = _doctor(tmp_path, STANDIN, str(Path(sys.executable).parent))
    assert "[ok]   DOMAINBED_ALIGN_JOBS = 2" in result.stdout  # the settings check is part of the doctor
    assert result.returncode == 0, result.stdout
    assert f"domainbed resolves to {STANDIN}" in result.stdout
    assert "TimmERM, DRE, ALIGN, SGT, GRADIA, HAICS, RRR, RES_G, RES_L, CARE are registered" in result.stdout
    assert ("datasets TextureMNIST, SpuriousTextureMNIST, VLCSMini, DecoyMNIST, DecoyMNISTFull are registered"
            in result.stdout)
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


def test_every_set_setting_is_reported_ok_or_with_its_fix(tmp_path, capsys):
    config = tmp_path / "launcher.json"
    config.write_text(json.dumps({"slurm_partition": "gpu", "slurm_mem_gb": -5, "slurm_partiton": "cpu"}))
    environ = {"DOMAINBED_ALIGN_KEEP_SELECTED": "OFF", "DOMAINBED_ALIGN_SLURM_MEM_GB": "nan",
               "DOMAINBED_ALIGN_KEEP_SELECTD": "0", "DOMAINBED_ALIGN_TEST_SLURM": "1",
               "DOMAINBED_ALIGN_LAUNCHER_CONFIG": str(config), "UNRELATED": "x"}
    report = doctor.Report()
    assert doctor.check_settings(report, environ) is False
    out = capsys.readouterr().out
    assert "[ok]   DOMAINBED_ALIGN_KEEP_SELECTED = False" in out
    assert "[ok]   DOMAINBED_ALIGN_TEST_SLURM = '1' (a test-suite switch)" in out
    assert f"[ok]   {config}: slurm_partition = 'gpu'" in out
    assert ("[FAIL] DOMAINBED_ALIGN_SLURM_MEM_GB = 'nan' is not a finite number" in out
            and "fix: give a finite number above 0, or unset DOMAINBED_ALIGN_SLURM_MEM_GB" in out)
    assert ("[FAIL] DOMAINBED_ALIGN_KEEP_SELECTD is not a domainbed-align setting" in out
            and "did you mean DOMAINBED_ALIGN_KEEP_SELECTED?" in out and "fix: rename it or unset it" in out)
    assert f"[FAIL] '{config}': slurm_mem_gb = -5 is out of range" in out  # every bad key, not just the first
    assert "[FAIL] 'slurm_partiton' is not a launcher setting" in out and "did you mean 'slurm_partition'?" in out
    assert report.failures == 4 and "UNRELATED" not in out


def test_no_settings_is_fine_and_a_bad_one_fails_the_doctor(monkeypatch, capsys):
    report = doctor.Report()
    assert doctor.check_settings(report, {}) is True and report.failures == 0
    assert "no DOMAINBED_ALIGN_* setting is set" in capsys.readouterr().out
    for check in ("check_floors", "check_domainbed", "check_dependencies", "check_registration",
                  "check_python_on_path"):  # only the settings check runs here (the others have their tests)
        monkeypatch.setattr(doctor, check, lambda *args: True)
    monkeypatch.setenv("DOMAINBED_ALIGN_TIMEOUT_MIN", "0")
    assert doctor.main([]) == 1
    assert "1 problem(s) found" in capsys.readouterr().out
