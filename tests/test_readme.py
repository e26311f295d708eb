"""The README's hparam table and quickstart stay true to the code."""

import json
import re

from conftest import REPO
from domainbed_align import hparams as hparams_lib

README = (REPO / "README.md").read_text()


def _table_defaults() -> dict:
    rows = re.findall(r"^\| `(\w+)` \| (?:both|ALIGN) \| ([^|]+) \|", README, flags=re.M)
    return {name: default.strip() for name, default in rows}


def test_every_hparam_is_documented_with_its_default():
    documented = _table_defaults()
    for algorithm in hparams_lib.SPECS:
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
