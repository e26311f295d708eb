"""The README's main job: a real DomainBed sweep of ALIGN against TimmERM on TextureMNIST, then its OOD table.

``python -m domainbed_align.demo --domainbed_root DIR [--full]`` prepares the offline data, runs upstream's
``sweep launch`` (local launcher) with our algorithms, shows progress, and prints ``collect_results``' table, then
the explanation metrics of each run (``python -m domainbed_align.evaluate``).
The default is a CPU-sized demo (short runs: its numbers show the pipeline works, not what ALIGN achieves);
``--full`` runs DomainBed's usual run length and several hparam draws and trials, for a GPU.
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

from domainbed_align import ALGORITHM_NAMES as ALGORITHMS
from domainbed_align.errors import DomainbedAlignError
from domainbed_align.records import readable_records

DEMO = dict(steps=200, n_hparams=1, n_trials=1, hparams={"batch_size": 12, "warmup_steps": 60}, explained_images=100)
FULL = dict(steps=None, n_hparams=5, n_trials=3, hparams={}, explained_images=500)


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
            and json.loads(args["hparams"] or "{}") == settings["hparams"] and args["algorithm"] in ALGORITHMS
            and args["hparams_seed"] < settings["n_hparams"] and args["trial_seed"] < settings["n_trials"])


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


def run(domainbed_root: Path, data_dir: Path, output_dir: Path | None, full: bool, steps: int | None,
        n_hparams: int | None, n_trials: int | None, dataset: str) -> int:
    if not (domainbed_root / "domainbed" / "scripts" / "sweep.py").is_file():
        raise DomainbedAlignError(f"{domainbed_root} is not a DomainBed checkout (no domainbed/scripts/sweep.py); "
                                  "set DOMAINBED_ROOT to a clone of facebookresearch/DomainBed at b93c22a")
    config = dict(FULL if full else DEMO)
    config.update({k: v for k, v in dict(steps=steps, n_hparams=n_hparams, n_trials=n_trials).items()
                   if v is not None})
    output_dir = (output_dir or default_output_dir(dataset, full, config["steps"], config["n_hparams"],
                                                   config["n_trials"])).resolve()
    settings = {"dataset": dataset, "steps": config["steps"], "hparams": config["hparams"],
                "n_hparams": config["n_hparams"], "n_trials": config["n_trials"]}
    foreign = foreign_runs(output_dir, settings)
    if foreign:
        raise DomainbedAlignError(
            f"{output_dir} holds runs made with other settings, e.g. {foreign[0]} ({len(foreign)} in all); "
            f"collect_results would pool them with this sweep's. Use another --output_dir, or delete that folder.")
    env = _environment(domainbed_root)
    print(f"== preparing offline data in {data_dir}", flush=True)
    prepared = subprocess.run([sys.executable, "-m", "domainbed_align.data", "prepare", "--data_dir",
                               str(data_dir)], env=env)
    if prepared.returncode != 0:
        return prepared.returncode  # prepare has printed its one-line reason
    from domainbed_align.data import DATASETS

    n_envs = len(DATASETS[dataset].ENVIRONMENTS)
    total = len(ALGORITHMS) * n_envs * config["n_hparams"] * config["n_trials"]
    label = "FULL" if full else "DEMO (short CPU runs: numbers show the pipeline works, not ALIGN's accuracy)"
    print(f"== sweep: {' vs '.join(ALGORITHMS)} on {dataset}, {total} runs, {label}", flush=True)
    sweep_args = ["--datasets", dataset, "--algorithms", *ALGORITHMS, "--n_hparams", str(config["n_hparams"]),
                  "--n_trials", str(config["n_trials"]), "--single_test_envs", "--data_dir", str(data_dir),
                  "--output_dir", str(output_dir), "--skip_confirmation", "--command_launcher", "local"]
    if config["steps"]:
        sweep_args += ["--steps", str(config["steps"])]
    if config["hparams"]:
        sweep_args += ["--hparams", json.dumps(config["hparams"])]
    sweep = [sys.executable, "-m", "domainbed.scripts.sweep"]
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir.parent / f"{output_dir.name}.log"
    with open(log, "w") as handle:
        # Runs an interrupted demo left half-done cannot resume in DomainBed and block `launch`: redo them.
        cleaned = subprocess.run([*sweep, "delete_incomplete", *sweep_args], env=env, stdout=handle,
                                 stderr=subprocess.STDOUT).returncode
    if cleaned != 0:
        print(f"error: `sweep delete_incomplete` failed; see {log}", file=sys.stderr)
        return 1
    command = [*sweep, "launch", *sweep_args]
    print("   " + " ".join(command[1:]), flush=True)
    stop = threading.Event()
    watcher = threading.Thread(target=_progress, args=(output_dir, total, stop), daemon=True)
    watcher.start()
    started = time.monotonic()
    with open(log, "a") as handle:
        code = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    stop.set()
    watcher.join()
    done = sum((p / "done").exists() for p in output_dir.iterdir() if p.is_dir())
    print(f"== sweep finished in {time.monotonic() - started:.0f}s: {done}/{total} runs done (log: {log})")
    if code != 0 or done != total:
        print(f"error: {total - done} of {total} runs did not finish; see {log} and each run's err.txt under "
              f"{output_dir}. Rerun the same command to redo them (finished runs are kept).", file=sys.stderr)
        return 1
    table = subprocess.run([sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir",
                            str(output_dir)], env=env, capture_output=True, text=True)
    print(table.stdout)
    (output_dir.parent / f"{output_dir.name}.table.txt").write_text(table.stdout)
    if table.returncode != 0:
        print(table.stderr, file=sys.stderr)
        return table.returncode
    return explanation_table(output_dir, env, config["explained_images"])


def explanation_table(output_dir: Path, env: dict[str, str], max_images: int) -> int:
    """What collect_results lacks: the explanation metrics of every run on its test environment
    (``python -m domainbed_align.evaluate``), saved next to the sweep's table and printed."""
    records = output_dir.parent / f"{output_dir.name}.explanations.jsonl"
    print(f"== explanation metrics of each run's true-class Grad-CAM on its test environment ({max_images} images "
          f"each; random_*: random maps), written to {records}", flush=True)
    with open(records, "w") as handle:  # its progress lines (stderr) and any error message reach the console
        evaluated = subprocess.run([sys.executable, "-m", "domainbed_align.evaluate", "--input_dir", str(output_dir),
                                    "--max_images", str(max_images)], env=env, stdout=handle)
    if evaluated.returncode != 0:
        return evaluated.returncode
    from domainbed_align import evaluate

    print(evaluate.markdown_table(evaluate.read_records(records)))  # the table `evaluate --records` prints
    return 0


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
    parser.add_argument("--full", action="store_true", help="DomainBed's run length, 5 hparam draws, 3 trials")
    parser.add_argument("--steps", type=_positive_int)
    parser.add_argument("--n_hparams", type=_positive_int)
    parser.add_argument("--n_trials", type=_positive_int)
    args = parser.parse_args(argv)
    if not args.domainbed_root:
        print("error: no DomainBed: pass --domainbed_root or set DOMAINBED_ROOT to a clone of "
              "facebookresearch/DomainBed at b93c22a", file=sys.stderr)
        return 2
    try:
        output_dir = Path(args.output_dir) if args.output_dir else None
        return run(Path(args.domainbed_root).resolve(), Path(args.data_dir).resolve(), output_dir, args.full,
                   args.steps, args.n_hparams, args.n_trials, args.dataset)
    except DomainbedAlignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
