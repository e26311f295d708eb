"""Every DOMAINBED_ALIGN_* variable is declared in domainbed_align/settings.py and read through one checker:
unknown names, wrong types and values out of range are named, the same way from the environment and the file."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from domainbed_align import settings
from domainbed_align.errors import DomainbedAlignError
from domainbed_align.settings import SettingsError

REPO = Path(__file__).resolve().parent.parent
# misspellings the tests use on purpose, to see them refused
MISSPELT_ON_PURPOSE = {"DOMAINBED_ALIGN_KEEP_SELECTD", "DOMAINBED_ALIGN_JOS", "DOMAINBED_ALIGN_SLURM_PARTITON",
                       "DOMAINBED_ALIGN_QQQ"}


def _files_mentioning_settings() -> list[Path]:
    roots = [REPO / "domainbed_align", REPO / "tests", REPO / "sweeps", REPO / ".ci"]
    files = [REPO / name for name in ("README.md", "run.sh", "setup.py", "pyproject.toml") if (REPO / name).is_file()]
    for root in (r for r in roots if r.is_dir()):
        files += [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix in (".py", ".sh", ".md", ".toml", "")]
    return files


def test_every_variable_the_project_mentions_is_declared():
    mentioned = {}
    for path in _files_mentioning_settings():
        for name in re.findall(r"\bDOMAINBED_ALIGN_[A-Z][A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")):
            mentioned.setdefault(name, path.relative_to(REPO))
    assert "DOMAINBED_ALIGN_KEEP_SELECTED" in mentioned and "DOMAINBED_ALIGN_TEST_SLURM" in mentioned  # the scan works
    undeclared = {name: str(where) for name, where in mentioned.items()
                  if name not in MISSPELT_ON_PURPOSE and name[len(settings.PREFIX):].lower() not in settings.SETTINGS}
    assert undeclared == {}, "declare these in domainbed_align/settings.py"
    listing = settings.describe()
    assert all(s.variable in listing and s.doc in listing for s in settings.SETTINGS.values())


@pytest.mark.parametrize("word, expected", [
    ("1", True), ("true", True), ("TRUE", True), ("Yes", True), ("on", True), (" ON ", True),
    ("0", False), ("false", False), ("False", False), ("NO", False), ("off", False), ("OFF", False)])
def test_booleans_take_every_usual_word_in_any_case(word, expected):
    assert settings.value("keep_selected", {"DOMAINBED_ALIGN_KEEP_SELECTED": word}) is expected
    assert settings.value("detach", {"DOMAINBED_ALIGN_DETACH": word}) is expected


@pytest.mark.parametrize("word", ["maybe", "2", "tru", "-1", "disabled"])
def test_a_boolean_refuses_anything_else(word):
    with pytest.raises(SettingsError, match=rf"DOMAINBED_ALIGN_KEEP_SELECTED = '{word}' is not a boolean.*"
                                            r"give true or false \(also 1/0, yes/no, on/off\)"):
        settings.value("keep_selected", {"DOMAINBED_ALIGN_KEEP_SELECTED": word})


@pytest.mark.parametrize("raw, why", [("nan", "is not a finite number"), ("inf", "is not a finite number"),
                                      ("-inf", "is not a finite number"), ("-5", "is out of range"),
                                      ("0", "is out of range"), ("lots", "is not a number")])
def test_a_number_refuses_nan_infinity_and_out_of_range(raw, why):
    with pytest.raises(SettingsError, match=rf"DOMAINBED_ALIGN_SLURM_MEM_GB = '{raw}' {why} .*give a finite number "
                                            r"above 0, or unset DOMAINBED_ALIGN_SLURM_MEM_GB for the default"):
        settings.value("slurm_mem_gb", {"DOMAINBED_ALIGN_SLURM_MEM_GB": raw})
    assert settings.value("slurm_mem_gb", {"DOMAINBED_ALIGN_SLURM_MEM_GB": "32"}) == 32.0


@pytest.mark.parametrize("key, raw, why", [
    ("slurm_mem_gb", float("nan"), "is not a finite number"), ("slurm_mem_gb", -5, "is out of range"),
    ("slurm_mem_gb", "32", "is not a number"), ("jobs", 0, "is out of range"), ("jobs", 2.5, "is not an integer"),
    ("jobs", True, "is not an integer"), ("detach", "yes", "is not a boolean"),
    ("slurm_gpus_per_task", -1, "is out of range"), ("gpus", "cuda:0", "is not valid:"),
    ("slurm_setup", "module load cuda", "is not a list of lines"), ("slurm_additional", ["qos"], "is not a JSON object")])
def test_the_file_goes_through_the_same_checks(tmp_path, key, raw, why):
    config = tmp_path / "launcher.json"
    config.write_text(json.dumps({key: raw}))  # json writes nan as NaN, which json.load reads back
    with pytest.raises(SettingsError, match=rf"'{re.escape(str(config))}': {key} = .* {why}.*remove '{key}' from"):
        settings.launcher_settings({settings.CONFIG_VARIABLE: str(config)})


def test_the_environment_wins_and_both_sources_agree(tmp_path):
    config = tmp_path / "launcher.json"
    config.write_text(json.dumps({"slurm_mem_gb": 16, "jobs": 3, "detach": True, "timeout_min": None}))
    values = settings.launcher_settings({settings.CONFIG_VARIABLE: str(config), "DOMAINBED_ALIGN_JOBS": "4"})
    assert values["slurm_mem_gb"] == 16.0 and values["jobs"] == 4 and values["detach"] is True
    assert values["timeout_min"] == 1440  # null: the default, not None


def test_an_unknown_variable_is_named_with_the_closest_one():
    with pytest.raises(SettingsError, match=r"^DOMAINBED_ALIGN_KEEP_SELECTD is not a domainbed-align setting, so it "
                                            r"would be ignored \(did you mean DOMAINBED_ALIGN_KEEP_SELECTED\?\); "
                                            r"rename it or unset it"):
        settings.value("keep_selected", {"DOMAINBED_ALIGN_KEEP_SELECTD": "0"})
    with pytest.raises(SettingsError, match=r"DOMAINBED_ALIGN_jobs is not .*did you mean DOMAINBED_ALIGN_JOBS"):
        settings.launcher_settings({"DOMAINBED_ALIGN_jobs": "2"})  # variable names are case-sensitive
    with pytest.raises(SettingsError, match=r"^DOMAINBED_ALIGN_QQQ is not .*ignored; rename it or unset it .*"
                                            r"`python -m domainbed_align.settings` lists them"):
        settings.launcher_settings({"DOMAINBED_ALIGN_QQQ": "1"})


def test_an_unknown_or_misplaced_file_key_is_named(tmp_path):
    config = tmp_path / "launcher.json"
    config.write_text(json.dumps({"slurm_partiton": "gpu"}))
    with pytest.raises(SettingsError, match=r"'slurm_partiton' is not a launcher setting .*did you mean "
                                            r"'slurm_partition'\?"):
        settings.launcher_settings({settings.CONFIG_VARIABLE: str(config)})
    config.write_text(json.dumps({"keep_selected": False}))
    with pytest.raises(SettingsError, match=r"'keep_selected' is not a launcher setting .*set "
                                            r"DOMAINBED_ALIGN_KEEP_SELECTED in the environment instead"):
        settings.launcher_settings({settings.CONFIG_VARIABLE: str(config)})
    config.write_text("[1, 2]")
    with pytest.raises(SettingsError, match="holds a JSON list, not an object"):
        settings.launcher_settings({settings.CONFIG_VARIABLE: str(config)})


def test_gpus_take_indices_and_uuids_and_refuse_the_rest():
    uuids = "GPU-5a3c1f2e-aaaa-bbbb-cccc-0123456789ab,MIG-7f1e2d3c-dddd-eeee-ffff-ba9876543210"
    assert settings.value("gpus", {"DOMAINBED_ALIGN_GPUS": uuids}) == uuids
    assert settings.value("gpus", {"DOMAINBED_ALIGN_GPUS": "0,1,"}) == "0,1,"
    assert settings.value("gpus", {"DOMAINBED_ALIGN_GPUS": "None"}) == "None"
    with pytest.raises(SettingsError, match=r"entry 'gpu0' is neither a GPU index"):
        settings.value("gpus", {"DOMAINBED_ALIGN_GPUS": "0,gpu0"})


def test_an_empty_variable_means_the_default_and_defaults_are_not_shared():
    assert settings.value("keep_selected", {"DOMAINBED_ALIGN_KEEP_SELECTED": ""}) is True
    assert settings.value("timeout_min", {"DOMAINBED_ALIGN_TIMEOUT_MIN": " "}) == 1440
    first = settings.launcher_settings({})
    first["slurm_setup"].append("changed")
    assert settings.launcher_settings({})["slurm_setup"] == []


def test_test_switches_are_declared_and_checked():
    assert settings.value("test_slurm", {"DOMAINBED_ALIGN_TEST_SLURM": "required"}) == "required"
    with pytest.raises(SettingsError, match=r"DOMAINBED_ALIGN_TEST_SLURM = 'yes' is not one of the choices.*give "
                                            r"one of '0', '1', 'required'"):
        settings.value("test_slurm", {"DOMAINBED_ALIGN_TEST_SLURM": "yes"})


def test_any_bad_variable_stops_every_reader_but_a_lenient_read_falls_back():
    bad = {"DOMAINBED_ALIGN_SLURM_MEM_GB": "-5", "DOMAINBED_ALIGN_TRACEBACK": "maybe"}
    with pytest.raises(SettingsError, match="SLURM_MEM_GB = '-5' is out of range"):  # sorted: the first is named
        settings.value("keep_selected", bad)
    assert settings.value("traceback", bad, fallback=True) is True  # for the excepthook: never raises
    assert settings.value("traceback", {"DOMAINBED_ALIGN_TRACEBACK": "on"}, fallback=True) is True
    assert settings.value("traceback", {}, fallback=True) is False


def test_the_error_is_ours_and_survives_pickling():
    with pytest.raises(SettingsError) as caught:
        settings.value("jobs", {"DOMAINBED_ALIGN_JOBS": "two"})
    error = caught.value
    assert isinstance(error, DomainbedAlignError)  # so the excepthook prints its one line
    assert error.problem.startswith("DOMAINBED_ALIGN_JOBS = 'two' is not an integer") and "unset" in error.fix
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_reading_settings_imports_nothing_heavy():
    code = ("import sys, domainbed_align; before = set(sys.modules); from domainbed_align import settings; "
            "settings.value('keep_selected', {}); print(sorted(set(sys.modules) - before))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    added = set(eval(done.stdout))
    assert {m for m in added if m.startswith("domainbed_align")} <= {"domainbed_align.settings", "domainbed_align.errors"}
    assert not {m.split(".")[0] for m in added} & {"torch", "numpy", "json", "difflib", "domainbed", "dataclasses"}
