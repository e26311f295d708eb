"""``python -m domainbed_align.doctor``: is this environment ready to run ALIGN through DomainBed?

Checks every dependency against its tested floor, where ``domainbed`` resolves from (and at which commit), whether our registration hook is active and
ALIGN registered, whether upstream's import-time dependencies are installed, whether the ``python`` on PATH
(the literal command sweeps launch) is this interpreter, and every ``DOMAINBED_ALIGN_*`` setting that is set.
Exits 1 with the fix when something is off.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping

PINNED_COMMIT = "b93c22a"
# Modules upstream DomainBed imports at module level (datasets.py, scripts) besides torch/torchvision.
UPSTREAM_IMPORTS = {"torchvision": "torchvision", "PIL": "pillow", "numpy": "numpy", "tqdm": "tqdm",
                    "wilds": "wilds", "pandas": "pandas"}


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def ok(self, message: str) -> None:
        print(f"[ok]   {message}")

    def warn(self, message: str) -> None:
        print(f"[warn] {message}")

    def fail(self, message: str, fix: str) -> None:
        self.failures += 1
        print(f"[FAIL] {message}\n       fix: {fix}")


def _git_commit(root: Path) -> str | None:
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def _is_domainbed_checkout(folder: Path) -> bool:
    return (folder / "domainbed" / "algorithms.py").is_file() and (folder / "domainbed" / "scripts").is_dir()


def check_domainbed(report: Report) -> bool:
    spec = importlib.util.find_spec("domainbed")
    root_hint = os.environ.get("DOMAINBED_ROOT")
    if root_hint and not _is_domainbed_checkout(Path(root_hint)):
        report.fail(f"DOMAINBED_ROOT={root_hint} is not a DomainBed checkout (no domainbed/algorithms.py there)",
                    f"git clone https://github.com/facebookresearch/DomainBed && git -C DomainBed checkout "
                    f"{PINNED_COMMIT}, then export DOMAINBED_ROOT=$PWD/DomainBed")
        root_hint = None
    if spec is None or not spec.origin:
        fix = (f"export PYTHONPATH={root_hint}" if root_hint else
               f"git clone https://github.com/facebookresearch/DomainBed && git -C DomainBed checkout "
               f"{PINNED_COMMIT}, then run from that folder or export PYTHONPATH=/path/to/DomainBed")
        report.fail("`import domainbed` fails: DomainBed is not on sys.path", fix)
        return False
    root = Path(spec.origin).resolve().parent.parent
    if root_hint and Path(root_hint).resolve() != root:
        report.warn(f"DOMAINBED_ROOT is {root_hint} but this interpreter imports domainbed from {root}; "
                    f"`run.sh` uses DOMAINBED_ROOT, a plain `python -m domainbed...` uses {root}")
    commit = _git_commit(root)
    where = f"domainbed resolves to {root}"
    if commit is None:
        report.ok(f"{where} (commit unknown: not a git checkout; this package is tested at {PINNED_COMMIT})")
    elif commit.startswith(PINNED_COMMIT):
        report.ok(f"{where} at the pinned commit {commit[:12]}")
    else:
        report.warn(f"{where} at commit {commit[:12]}; this package is tested at {PINNED_COMMIT}")
    return True


def check_dependencies(report: Report) -> bool:
    missing = [package for module, package in UPSTREAM_IMPORTS.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        report.fail(f"upstream DomainBed imports {missing} at module level but they are not installed",
                    f"{sys.executable} -m pip install {' '.join(missing)}  (or pip install 'domainbed-align[domainbed]')")
        return False
    report.ok("upstream's import-time dependencies are installed: " + ", ".join(UPSTREAM_IMPORTS.values()))
    return True


def check_floors(report: Report) -> bool:
    """Every dependency of ours against its floor (:mod:`domainbed_align.floors`), one line each."""
    from domainbed_align.floors import EXTRAS, FLOORS, below_floor, installed_version

    extra_of = {name: extra for extra, names in EXTRAS.items() for name in names}
    ok = True
    for name, floor in FLOORS.items():
        if name in extra_of and installed_version(name) is None:  # an optional part: only what needs it fails
            report.warn(f"{name} is not installed (optional, the [{extra_of[name]}] extra): pip install "
                        f"'domainbed-align[{extra_of[name]}]' for what needs it")
            continue
        problem = below_floor(name)
        if problem:
            ok = False
            report.fail(problem.split(": pip install")[0], f"{sys.executable} -m pip install --upgrade '{name}>={floor}'")
        else:
            report.ok(f"{name} {installed_version(name)} (tested from {floor})")
    return ok


def check_registration(report: Report, domainbed_ok: bool, dependencies_ok: bool) -> None:
    from domainbed_align.upstream import adapter, hook

    if hook.is_installed():
        report.ok("the registration hook (domainbed_align_hook.pth) is active in this interpreter")
    else:
        report.fail("the registration hook is not active: domainbed_align_hook.pth did not run",
                    f"{sys.executable} -m pip install -e /path/to/domainbed-align  (a plain PYTHONPATH entry "
                    "or pip --target does not run .pth files; `python -S` skips them)")
    if not (domainbed_ok and dependencies_ok):
        return
    from domainbed_align.methods.registry import algorithm_names  # imports torch: only once the floors hold

    ours = algorithm_names()
    try:
        adapter.import_algorithm_registries()
    except Exception as error:  # report any import failure of upstream as one line
        report.fail(f"importing domainbed.algorithms failed: {type(error).__name__}: {error}",
                    "install what the message names into this environment")
        return
    missing = adapter.unregistered_algorithms(ours)
    if missing:
        report.fail(f"{missing} are not registered in domainbed.algorithms",
                    f"{sys.executable} -m pip install -e /path/to/domainbed-align, or call "
                    "domainbed_align.register() in a notebook")
    elif "lambda_align" not in adapter.default_hparams("ALIGN", "VLCS"):
        report.fail("ALIGN's hparams are missing from domainbed.hparams_registry", "reinstall domainbed-align")
    else:
        report.ok(f"{', '.join(ours)} are registered (algorithms and hparams registry)")
    from domainbed_align.data import DATASETS as OUR_DATASETS

    absent = adapter.unregistered_datasets(list(OUR_DATASETS))
    if absent:
        report.fail(f"our datasets {absent} are not registered in domainbed.datasets",
                    f"{sys.executable} -m pip install -e /path/to/domainbed-align")
    else:
        report.ok(f"datasets {', '.join(OUR_DATASETS)} are registered (prepare them with "
                  f"`python -m domainbed_align.data prepare --data_dir DIR`)")


def check_python_on_path(report: Report) -> None:
    found = shutil.which("python")
    if found is None:
        report.fail("no `python` on PATH, but `sweep launch` runs the literal `python -m domainbed.scripts.train`",
                    f"activate this environment (source {Path(sys.prefix) / 'bin' / 'activate'})")
        return
    probe = subprocess.run([found, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    if Path(probe.stdout.strip() or "/nonexistent").resolve() != Path(sys.prefix).resolve():
        report.fail(f"`python` on PATH is {found} (prefix {probe.stdout.strip() or '?'}), not this "
                    f"interpreter (prefix {sys.prefix}): sweeps would train without the plugin",
                    f"activate this environment (source {Path(sys.prefix) / 'bin' / 'activate'})")
    else:
        report.ok(f"`python` on PATH ({found}) is this interpreter's environment")


def check_settings(report: Report, environ: Mapping[str, str] | None = None) -> bool:
    """Every ``DOMAINBED_ALIGN_*`` variable that is set, and every key of the launcher config file: its value, or
    what is wrong with it (an unknown name, a wrong type, a value out of range) and the fix."""
    from domainbed_align import settings

    found = settings.findings(environ)
    if not found:
        report.ok("no DOMAINBED_ALIGN_* setting is set: every default applies "
                  "(`python -m domainbed_align.settings` lists them)")
    for finding in found:
        if finding.error is not None:
            report.fail(finding.error.problem, finding.error.fix)
        else:
            test_only = finding.setting is not None and finding.setting.scope == settings.TEST
            report.ok(f"{finding.name} = {finding.parsed!r}" + (" (a test-suite switch)" if test_only else ""))
    return not any(finding.error for finding in found)


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="python -m domainbed_align.doctor", description=__doc__.split("\n\n")[0]).parse_args(argv)
    report = Report()
    print(f"domainbed-align doctor (python {sys.version.split()[0]} at {sys.executable})")
    floors_ok = check_floors(report)
    domainbed_ok = check_domainbed(report)
    dependencies_ok = check_dependencies(report) and floors_ok
    check_registration(report, domainbed_ok, dependencies_ok)
    check_python_on_path(report)
    check_settings(report)
    print("all good" if not report.failures else f"{report.failures} problem(s) found")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
