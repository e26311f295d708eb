"""The one console command: every subcommand listed and runnable, the python -m forms kept, one error printer, and
a missing optional dependency named with its extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from domainbed_align import cli, settings

SCRIPT = Path(sys.executable).parent / "domainbed-align"  # the console script pip installed beside this Python


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_console_script_lists_every_subcommand_with_an_example():
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: install the package (pip install -e .)"
    result = _run(str(SCRIPT), "--help")
    assert result.returncode == 0, result.stderr
    for name, command in cli.COMMANDS.items():
        assert f"\n  {name} " in result.stdout and f"e.g. {command.example}" in result.stdout, name
    for key, spec in settings.SETTINGS.items():  # the launcher settings, read from their one declaration
        launcher = spec.scope == settings.LAUNCHER or key == "launcher_config"
        assert (settings.PREFIX + key.upper() in result.stdout) == (launcher or key == "traceback"), key


def test_no_arguments_prints_the_usage_and_fails():
    result = _run(str(SCRIPT))
    assert result.returncode == 2 and result.stdout.startswith("usage: domainbed-align <command>")


@pytest.mark.parametrize("name", [name for name in cli.SUBCOMMANDS if name != "sweep"])  # sweep's --help needs DomainBed
def test_each_subcommand_help_shows_its_arguments_its_example_and_settings(name):
    result = _run(sys.executable, "-m", "domainbed_align.cli", name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ") and "-h, --help" in result.stdout
    assert f"example: {cli.COMMANDS[name].example}" in result.stdout
    launcher = "DOMAINBED_ALIGN_JOBS" in result.stdout
    assert launcher == cli.COMMANDS[name].launches and "DOMAINBED_ALIGN_TRACEBACK" in result.stdout


def test_every_subcommand_names_a_module_with_a_main():
    import importlib

    for command in cli.COMMANDS.values():
        module = importlib.import_module(command.module)
        assert callable(module.main), command.name


def test_an_unknown_subcommand_is_one_line_with_a_suggestion():
    result = _run(str(SCRIPT), "tabels")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"domainbed-align: error: unknown command 'tabels' (did you mean 'tables'?); the commands are "
        f"{', '.join(cli.SUBCOMMANDS)} (domainbed-align --help)"]


@pytest.mark.parametrize("form", [["domainbed-align", "tables"], ["-m", "domainbed_align.tables"]])
def test_both_forms_print_one_error_line_from_the_one_printer(tmp_path, form):
    missing = tmp_path / "no_such_sweep"
    args = [str(SCRIPT), *form[1:]] if form[0] == "domainbed-align" else [sys.executable, *form]
    result = _run(*args, "--input_dir", str(missing), cwd=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"domainbed-align tables: error: --input_dir {missing} is not a folder")


def test_a_missing_extra_is_named_before_anything_runs(tmp_path):
    hide_matplotlib = ("import importlib.util, sys\n"
                       "real = importlib.util.find_spec\n"
                       "importlib.util.find_spec = lambda name, *a: None if name == 'matplotlib' else real(name, *a)\n"
                       "from domainbed_align import cli\n"
                       "sys.exit(cli.main(['figures', 'curves', '--input_dir', '.', '--out', 'x.png']))\n")
    result = _run(sys.executable, "-c", hide_matplotlib, cwd=tmp_path)
    assert result.returncode == 1 and not (tmp_path / "x.png").exists()
    assert result.stderr.splitlines() == ["domainbed-align figures: error: domainbed-align figures needs matplotlib, "
                                          "which is not installed: pip install 'domainbed-align[report]'"]


def test_the_python_m_forms_users_scripts_call_still_run():
    for module in ("domainbed_align.tables", "domainbed_align.evaluate", "domainbed_align.figures",
                   "domainbed_align.masks", "domainbed_align.demo", "domainbed_align.bench", "domainbed_align.doctor",
                   "domainbed_align.gpu_check", "domainbed_align.data"):
        result = _run(sys.executable, "-m", module, "--help")
        assert result.returncode == 0 and result.stdout.startswith("usage: "), (module, result.stderr[-500:])
