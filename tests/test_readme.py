"""The README's hparam table and quickstart stay true to the code."""

import json
import re

from conftest import REPO
from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.methods import registry

README = (REPO / "README.md").read_text()


def _table_rows() -> dict:
    """{hparam: (algorithms named in its row, default shown)} from the README's hparam table."""
    table = README.split("| hparam | algorithms |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([\w, ]+) \| ([^|]+) \|", table, flags=re.M)
    every = set(registry.algorithm_names())
    return {name: (every if names.strip() == "all" else {n.strip() for n in names.split(",")}, default.strip())
            for name, names, default in rows}


def _table_defaults() -> dict:
    return {name: default for name, (_, default) in _table_rows().items()}


def test_every_hparam_row_names_exactly_the_algorithms_that_have_it():
    rows = _table_rows()
    for name, (algorithms, _) in rows.items():
        having = {a for a in registry.algorithm_names() if any(spec.name == name for spec in hparams_lib.specs_for(a))}
        assert algorithms == having, name


def test_every_hparam_is_documented_with_its_default():
    documented = _table_defaults()
    for algorithm in registry.algorithm_names():
        for spec in hparams_lib.specs_for(algorithm):
            assert spec.name in documented, f"README lacks hparam {spec.name}"
            if callable(spec.default):
                continue  # dataset-dependent: described in words
            shown = documented[spec.name].strip("`")
            expected = json.dumps(spec.default) if spec.default == "" or not isinstance(spec.default, str) \
                else spec.default
            assert shown == expected, spec.name


def test_quickstart_is_two_commands_that_run_sh_accepts():
    block = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["bash run.sh demo", "bash run.sh test"]
    script = (REPO / "run.sh").read_text()
    assert "  demo)" in script and "  test)" in script
    assert "bash run.sh test" in (REPO / ".ci" / "run").read_text()


def test_no_tracked_file_names_a_local_absolute_path():
    """Scripts take arguments and docs use relative paths: a folder of the machine that made a file is no use to
    anyone else (results.jsonl records train.py's --data_dir and --output_dir: run sweeps with relative ones)."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode != 0:
        import pytest

        pytest.skip("not a git checkout")
    pattern = re.compile(rb"(?<![\w.])/(?:work|home|root|Users|tmp/pytest-of-|tmp/pip-)[\w.-]*/")
    offenders = []
    for name in listed.stdout.decode().split("\0"):
        path = REPO / name
        if name and path.is_file() and pattern.search(path.read_bytes()):
            offenders.append(name)
    assert not offenders, offenders
