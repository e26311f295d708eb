"""The docs site builds without a warning (``mkdocs build --strict``: broken links and anchors, pages missing from the
nav), its hyperparameter table is the registry's, and it documents every hparam and every subcommand."""

from __future__ import annotations

import html
import importlib
import importlib.util
import json
import re
import subprocess
import sys

import pytest

from conftest import REPO

DOCS = REPO / "docs"


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' (run.sh's set-up installs it)")
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                            str(REPO / "mkdocs.yml"), "--site-dir", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    return out


def _page(site, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def _hparam_rows(site) -> dict:
    """{hparam: (algorithms cell, default cell)} from the built hyperparameters page."""
    rows = re.findall(r"<tr>\s*<td><code>(\w+)</code></td>\s*<td>(.*?)</td>\s*<td>(.*?)</td>",
                      _page(site, "hyperparameters"), flags=re.S)
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names)), "an hparam has two rows"
    return {name: (_text(algorithms), _text(default)) for name, algorithms, default in rows}


def test_every_page_is_in_the_nav_and_the_hook_is_no_page(site):
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        assert re.search(rf":\s*{re.escape(page.name)}\s*$", config, flags=re.M), f"{page.name} is not in the nav"
        assert (site / ("" if page.stem == "index" else page.stem) / "index.html").is_file(), page.name
    assert not list(site.rglob("hooks.py")) and not list(site.rglob("*.pyc"))


def test_generated_table_has_one_row_per_hparam_with_the_registrys_default(site):
    from domainbed_align.methods import registry

    rows = _hparam_rows(site)
    every = list(registry.algorithm_names())
    having: dict = {}
    for entry in registry.entries():
        for spec in entry.hparams:
            having.setdefault(spec.name, []).append((entry.name, spec))
    assert set(rows) == set(having)
    for name, specs in having.items():
        algorithms, default = rows[name]
        expected = "all" if [a for a, _ in specs] == every else ", ".join(a for a, _ in specs)
        assert algorithms == expected, name
        for _, spec in specs:
            value = spec.default_for(None)  # a dataset-dependent default: its value elsewhere, in words
            shown = json.dumps(value) if value == "" or not isinstance(value, str) else value
            if callable(spec.default):
                assert f"{shown} elsewhere" in default, name
            else:
                assert shown in default.split(" (")[0].split("; ") or f"{shown} (" in default, name


def test_every_hparam_and_every_subcommand_appears_in_the_site(site):
    from domainbed_align import cli
    from domainbed_align.methods import registry

    everything = "\n".join(_text(path.read_text(encoding="utf-8")) for path in site.rglob("*.html"))
    for entry in registry.entries():
        for spec in entry.hparams:
            assert spec.name in everything, f"the site does not document hparam {spec.name}"
    commands = _text(_page(site, "commands"))
    for name in cli.SUBCOMMANDS:
        assert f"domainbed-align {name}" in commands, f"the Commands page lacks domainbed-align {name}"


def test_each_subcommand_names_a_python_m_module_that_exists():
    from domainbed_align import cli

    page = (DOCS / "commands.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## `([\w-]+)`\n(.*?)(?=^## |\Z)", page, flags=re.M | re.S))
    assert list(sections) == list(cli.SUBCOMMANDS), "one section per subcommand, in --help's order"
    for name, body in sections.items():
        assert f"domainbed-align {name}" in body, name
        modules = re.findall(r"python -m (domainbed_align(?:\.\w+)*)", body)
        assert modules, f"{name}: no python -m form"
        for module in modules:
            assert importlib.util.find_spec(module) is not None, f"{name}: {module} does not exist"


def test_docs_name_only_modules_and_names_that_exist():
    """The package is being reorganised: a documented `python -m` module or import that moved fails here."""
    for page in DOCS.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        for module in set(re.findall(r"python -m (domainbed_align(?:\.\w+)*)", text)):
            assert importlib.util.find_spec(module) is not None, f"{page.name}: python -m {module}"
        for module in set(re.findall(r"`(domainbed_align(?:\.\w+)+)`", text)):
            assert importlib.util.find_spec(module) is not None, f"{page.name}: module {module}"
        for module, names in re.findall(r"^from (domainbed_align[\w.]*) import ([\w, ]+)$", text, flags=re.M):
            imported = importlib.import_module(module)
            for name in names.split(","):
                assert hasattr(imported, name.strip()), f"{page.name}: from {module} import {name.strip()}"


def test_docs_lines_fit_in_120_characters():
    long = [(page.name, number) for page in sorted(DOCS.glob("*.md"))
            for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1) if len(line) > 120]
    assert not long, long


def test_every_setting_the_docs_name_is_declared():
    from domainbed_align import settings

    named = {name for page in DOCS.glob("*.md")
             for name in re.findall(r"\bDOMAINBED_ALIGN_[A-Z][A-Z0-9_]*[A-Z0-9]", page.read_text(encoding="utf-8"))}
    assert "DOMAINBED_ALIGN_KEEP_SELECTED" in named  # the scan works
    undeclared = sorted(name for name in named if name[len(settings.PREFIX):].lower() not in settings.SETTINGS)
    assert not undeclared, f"declare these in the package's settings, or fix the docs: {undeclared}"
