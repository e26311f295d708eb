"""The README stays short, its quickstart runs, and every number of its results table is copied from the file its
row cites. (The hyperparameter table lives on the docs site, generated from the registry: tests/test_docs.py.)"""

import re

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.]*\w)")


def _numbers(text: str) -> set:
    return set(NUMBER.findall(text))


def _section(heading: str) -> str:
    return README.split(heading, 1)[1].split("\n## ", 1)[0]


def _cited(text: str) -> list:
    """The results/ files a piece of text names (backticked paths), each checked to exist."""
    paths = re.findall(r"`(results/[\w./-]+)`", text)
    for path in paths:
        assert (REPO / path).is_file(), f"README cites {path}, which does not exist"
    return paths


def test_readme_is_short():
    lines = README.splitlines()
    assert len(lines) <= 160, f"README has {len(lines)} lines; move detail to docs/"
    long = [(number, len(line)) for number, line in enumerate(lines, 1) if len(line) > 120]
    assert not long, f"README lines over 120 characters (line, length): {long}"


def test_quickstart_is_two_commands_that_run_sh_accepts():
    block = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["bash run.sh demo", "bash run.sh test"]
    script = (REPO / "run.sh").read_text()
    assert "  demo)" in script and "  test)" in script
    assert "bash run.sh test" in (REPO / ".ci" / "run").read_text()



def test_run_sh_test_keeps_pytests_summary_line(tmp_path):
    """`bash run.sh test -q` must not become pytest -q -q, which drops the final "N passed" line. A stand-in
    interpreter records what run.sh asks of it (its set-up's pip calls too), so nothing is installed or run."""
    import os
    import subprocess

    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\nif [ "$1 $2" = "-m pytest" ]; then shift 2; echo "pytest $*"; fi\nexit 0\n')
    python.chmod(0o755)
    for args, expected in [([], "pytest -q -p no:cacheprovider"), (["-q"], "pytest -p no:cacheprovider -q"),
                           (["-v", "-k", "x"], "pytest -p no:cacheprovider -v -k x"),
                           (["-k", "x"], "pytest -q -p no:cacheprovider -k x")]:
        ran = subprocess.run(["bash", str(REPO / "run.sh"), "test", *args], capture_output=True, text=True,
                             env={**os.environ, "VENV": str(python.parent.parent)}, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == expected, (args, ran.stdout)
    assert "docs" in re.search(r'-e "\.\[([\w,]+)\]"', (REPO / "run.sh").read_text())[1].split(","), \
        "run.sh's set-up installs the docs extra (tests/test_docs.py builds the site)"

def test_every_results_table_number_is_in_the_file_its_row_cites():
    section = _section("## Does it help?")
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| evidence")]
    assert len(rows) >= 2, "the README's results table is gone"
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        cited = _cited(row)
        assert len(cited) == 1, f"each results row cites exactly one file: {row}"
        source = (REPO / cited[0]).read_text(encoding="utf-8")
        # the number as the file prints it (mean ± standard error, with its marks), and every number in the row
        for cell in cells:
            if "±" in cell:
                assert cell in source, f"{cell!r} is not in {cited[0]}"
        missing = _numbers(" ".join(cell for cell in cells if not cell.startswith("`results/"))) - _numbers(source)
        assert not missing, f"numbers {sorted(missing)} of row {row!r} are not in {cited[0]}"


def test_every_number_describing_the_evidence_is_in_the_folder_it_cites():
    """The bullets under the table (hardware, steps, trials): their numbers are in the cited folder's files."""
    section = _section("## Does it help?")
    bullets = [bullet for paragraph in section.split("\n\n") if paragraph.startswith("- ")
               for bullet in re.split(r"\n(?=- )", paragraph)]
    checked = 0
    for bullet in bullets:
        cited = _cited(bullet)
        if not cited:
            continue
        folder = (REPO / cited[0]).parent
        source = "\n".join(path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.md")))
        missing = _numbers(re.sub(r"`[^`]*`", "", bullet)) - _numbers(source)
        assert not missing, f"numbers {sorted(missing)} of {bullet[:60]!r}... are not in {folder.name}/*.md"
        checked += 1
    assert checked >= 2


def test_the_demos_time_is_the_measured_one():
    quickstart = _section("## Quickstart")
    times = re.findall(r"\d+ min \d+ s", quickstart)
    cited = re.findall(r"(\d+ min \d+ s)[^(]*\(`(results/[\w./-]+)`\)", quickstart)
    assert len(cited) == len(times), "every time the README states names the results file that measured it"
    for time, source in cited:
        assert time in (REPO / source).read_text(encoding="utf-8"), (time, source)


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (REPO / target).exists(), f"README links to {target}, which does not exist"


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
