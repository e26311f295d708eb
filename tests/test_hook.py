"""Registration through the .pth post-import hook, in fresh interpreters.

Runs against the project's stand-in DomainBed in CI and, when available, against real upstream too.
"""

import json

import pytest

from conftest import STANDIN, hook_active, run_python, upstream_root

pytestmark = pytest.mark.skipif(not hook_active(), reason="the package is not pip-installed in this "
                                "interpreter (its .pth hook is inactive): pip install -e . first")

SOURCES = [pytest.param(STANDIN, id="standin")]
if upstream_root() is not None:
    SOURCES.append(pytest.param(upstream_root(), id="upstream"))

CHECK_REGISTERED = """
import json, domainbed.algorithms as a, domainbed.hparams_registry as h
from domainbed_align.methods.hparams import specs_for
from domainbed_align.methods.registry import algorithm_names
cls = a.get_algorithm_class('ALIGN')
hp_default = h.default_hparams('ALIGN', __DATASET__)
hp_random = h.random_hparams('ALIGN', __DATASET__, 3)
print(json.dumps({
    'ours': list(algorithm_names()),
    'algorithms': [n for n in a.ALGORITHMS if n in algorithm_names()],
    'is_algorithm': all(issubclass(a.get_algorithm_class(n), a.Algorithm) for n in algorithm_names()),
    'default': hp_default, 'random': hp_random,
    # ours only: upstream's own random lr etc. are numpy floats (JSON-safe float subclasses)
    'random_types': sorted({type(hp_random[s.name]).__name__ for s in specs_for('ALIGN')}),
    'deterministic': hp_random == h.random_hparams('ALIGN', __DATASET__, 3),
    'erm_untouched': 'lambda_align' not in h.default_hparams('ERM', __DATASET__),
    'datasets': [n for n in __import__('domainbed.datasets').datasets.DATASETS if n.endswith(('MNIST', 'Mini'))],
}))
"""


def _dataset(source):
    return "Tiny28" if source == STANDIN else "Debug28"


@pytest.mark.parametrize("source", SOURCES)
def test_fresh_process_sees_align(source, tmp_path):
    result = run_python(CHECK_REGISTERED.replace("__DATASET__", repr(_dataset(source))), source, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # every registered method, in registration order, after upstream's own
    assert report["algorithms"] == report["ours"] == ["TimmERM", "DRE", "ALIGN", "SGT", "GRADIA", "HAICS", "RRR",
                                                      "RES_G", "RES_L", "CARE"]
    assert report["is_algorithm"] and report["deterministic"] and report["erm_untouched"]
    assert report["default"]["lambda_align"] == 1.0 and report["default"]["pretrained"] is False
    assert set(report["random_types"]) <= {"bool", "int", "float", "str"}
    assert report["random"]["lambda_align"] != report["default"]["lambda_align"]  # a real random draw
    # our datasets are registered where sweep and collect_results look for them
    assert {"TextureMNIST", "SpuriousTextureMNIST", "VLCSMini"} <= set(report["datasets"])


@pytest.mark.parametrize("source", SOURCES)
def test_plugin_imported_first_and_registration_idempotent(source, tmp_path):
    code = """
import domainbed_align.methods, domainbed_align
from domainbed_align.upstream import hook as _hook
_hook.install(); _hook.install()
import domainbed.algorithms as a
domainbed_align.register(); domainbed_align.register()
import sys
print(a.ALGORITHMS.count('ALIGN'), sum(isinstance(f, _hook._DomainBedFinder) for f in sys.meta_path))
"""
    result = run_python(code, source, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]


def test_register_without_the_pth_hook(tmp_path):
    code = """
import sys
from domainbed_align.upstream import hook as _hook
sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _hook._DomainBedFinder)]
import domainbed.algorithms as a
before = 'ALIGN' in a.ALGORITHMS
import domainbed_align
domainbed_align.register()
print(before, 'ALIGN' in a.ALGORITHMS, hasattr(a, 'ALIGN'))
"""
    result = run_python(code, STANDIN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True"]


def test_interpreter_start_imports_nothing_heavy(tmp_path):
    result = run_python("import sys; print(sorted(m for m in ('torch', 'numpy', 'timm', 'domainbed') "
                        "if m in sys.modules))", STANDIN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_our_errors_print_one_message_not_a_traceback(tmp_path):
    code = """
import domainbed.algorithms as a, domainbed.hparams_registry as h
hp = h.default_hparams('ALIGN', 'Tiny28'); hp['lambda_algin'] = 2.0
a.get_algorithm_class('ALIGN')((3, 28, 28), 2, 2, hp)
"""
    result = run_python(code, STANDIN, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip().splitlines()[0]]  # exactly one line
    assert "unknown hparam 'lambda_algin' (did you mean 'lambda_align'?)" in result.stderr


def test_a_broken_hook_never_breaks_interpreter_start(tmp_path):
    # A shadowing package whose hook raises: the interpreter must still start and say why registration is off.
    shadow = tmp_path / "shadow" / "domainbed_align"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (shadow / "upstream").mkdir()
    (shadow / "upstream" / "__init__.py").write_text("")
    (shadow / "upstream" / "hook.py").write_text("raise RuntimeError('boom')\n")
    result = run_python("print('alive')", tmp_path / "shadow", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "alive"
    assert "registration hook disabled (RuntimeError('boom'))" in result.stderr
    assert "python -m domainbed_align.doctor" in result.stderr


READ_RECORDS = """
import sys
from domainbed.lib import reporting
print(len(reporting.load_records(sys.argv[1])))
"""


def _sweep_output(root, damaged: bool):
    good = '{"step": 0, "args": {}}\n{"step": 1, "args": {}}\n'
    for run, text in (("run_a", good), ("run_b", good + ('{"step": 2, "ar' if damaged else ""))):
        (root / run).mkdir(parents=True)
        (root / run / "results.jsonl").write_text(text)
    (root / "results.txt").write_text("collect_results writes this file into the same folder\n")
    return root


@pytest.mark.parametrize("source", SOURCES)
def test_damaged_results_file_is_named_in_one_message(source, tmp_path):
    sweep = _sweep_output(tmp_path / "sweep", damaged=True)
    before = (sweep / "run_b" / "results.jsonl").read_bytes()
    result = run_python(["-c", READ_RECORDS, str(sweep)], source, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]  # upstream's tqdm bar aside
    assert len(lines) == 1 and lines[0].startswith("domainbed-align: error: "), result.stderr
    assert f"{sweep / 'run_b' / 'results.jsonl'} line 3: not JSON" in lines[0]
    assert "run_a" not in lines[0] and "delete the damaged line" in lines[0]
    assert (sweep / "run_b" / "results.jsonl").read_bytes() == before  # nothing is changed


@pytest.mark.parametrize("source", SOURCES)
def test_intact_results_and_missing_folder(source, tmp_path):
    sweep = _sweep_output(tmp_path / "sweep", damaged=False)
    intact = run_python(["-c", READ_RECORDS, str(sweep)], source, cwd=tmp_path)
    assert intact.returncode == 0 and intact.stdout.strip() == "4", intact.stderr  # the wrapper changes nothing
    missing = run_python(["-c", READ_RECORDS, str(tmp_path / "no_such_sweep")], source, cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "is not a folder; give the --output_dir that 'sweep launch' wrote to" in missing.stderr


@pytest.mark.parametrize("source", SOURCES)
def test_log_file_in_a_missing_folder_is_named_in_one_line(source, tmp_path):
    code = "import sys; from domainbed.lib import misc; t = misc.Tee(sys.argv[1], 'w'); t.write('kept\\n')"
    written = run_python(["-c", code, str(tmp_path / "results.txt")], source, cwd=tmp_path)
    assert written.returncode == 0 and (tmp_path / "results.txt").read_text() == "kept\n"  # unchanged behaviour
    missing = run_python(["-c", code, str(tmp_path / "typo" / "results.txt")], source, cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"domainbed-align: error: {str(tmp_path / 'typo')!r} is not a folder, so DomainBed cannot write "
        f"'results.txt' there; for collect_results give --input_dir the --output_dir that 'sweep launch' wrote to."]


@pytest.mark.parametrize("source", SOURCES)
def test_our_one_line_errors_can_show_their_traceback_and_others_always_do(source, tmp_path):
    sweep = _sweep_output(tmp_path / "sweep", damaged=True)
    import os

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOMAINBED_ALIGN_TRACEBACK", "1")
        shown = run_python(["-c", READ_RECORDS, str(sweep)], source, cwd=tmp_path)
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "ResultsFileError" in shown.stderr
    assert os.environ.get("DOMAINBED_ALIGN_TRACEBACK") is None
    # an error that is not ours keeps its traceback, switch or not
    other = run_python("import domainbed.algorithms\nraise KeyError('not ours')", source, cwd=tmp_path)
    assert other.returncode == 1 and "Traceback" in other.stderr and "KeyError: 'not ours'" in other.stderr


START_UP = """
import os, site, sys
site.addsitedir(sys.argv[1])  # only the package's path: what site's own machinery imports is loaded now
before = set(sys.modules)
site.addsitedir(sys.argv[2])  # our .pth
print(sorted(set(sys.modules) - before))
import domainbed_align.upstream.hook as hook
calls = []
hook.install = lambda: calls.append(1)
site.addsitedir(sys.argv[3])  # the same .pth again: a venv's lib64 -> lib link makes site read it twice
print(len(calls), sum(type(f).__name__ == "_DomainBedFinder" for f in sys.meta_path))
"""


def test_the_hook_imports_only_itself_at_start_up_and_runs_once(tmp_path):
    import shutil
    import subprocess
    import sys

    from conftest import REPO

    package, hook = tmp_path / "package", tmp_path / "lib"
    package.mkdir()
    hook.mkdir()
    (package / "repo.pth").write_text(f"{REPO}\n")
    shutil.copy(REPO / "domainbed_align" / "domainbed_align_hook.pth", hook)
    (tmp_path / "lib64").symlink_to(hook)
    # -S: no site-packages of this environment (whose own .pth would have imported us already)
    result = subprocess.run([sys.executable, "-S", "-c", START_UP, str(package), str(hook), str(tmp_path / "lib64")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modules, runs = result.stdout.splitlines()
    assert modules == "['domainbed_align', 'domainbed_align.upstream', 'domainbed_align.upstream.hook']"
    assert runs == "0 1"  # the second read did not install again: one finder
