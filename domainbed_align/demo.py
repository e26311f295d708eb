"""The README's main job: a real DomainBed sweep of ALIGN against TimmERM on TextureMNIST, then its OOD table.

``python -m domainbed_align.demo --domainbed_root DIR [--full]`` prepares the offline data, runs upstream's
``sweep launch`` (local launcher) with our algorithms, shows progress, and prints ``collect_results``' table.
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

DEMO = dict(steps=200, n_hparams=1, n_trials=1, hparams={"batch_size": 12, "warmup_steps": 60})
FULL = dict(steps=None, n_hparams=5, n_trials=3, hparams={})


def _environment(domainbed_root: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(domainbed_root), env.get("PYTHONPATH", "")] if p)
    # sweep launches the literal `python`: make it this interpreter's environment
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _progress(output_dir: Path, total: int, stop: threading.Event) -> None:
    """Print a line whenever a run starts, checkpoints or finishes (polls the sweep's output folders)."""
    last = None
    while not stop.wait(5):
        done, current = 0, ""
        for run in sorted(p for p in output_dir.glob("*") if p.is_dir()):
            if (run / "done").exists():
                done += 1
                continue
            results = run / "results.jsonl"
            if results.exists() and results.stat().st_size:
                record = json.loads(results.read_text().splitlines()[-1])
                args = record["args"]
                current = (f"{args['algorithm']} test_env={args['test_envs']} step {record['step']}"
                           f" (last checkpoint)")
        line = f"[{done}/{total} runs done] {current}".rstrip()
        if line != last:
            print(line, flush=True)
            last = line


def run(domainbed_root: Path, data_dir: Path, output_dir: Path, full: bool, steps: int | None,
        n_hparams: int | None, n_trials: int | None, dataset: str) -> int:
    if not (domainbed_root / "domainbed" / "scripts" / "sweep.py").is_file():
        raise DomainbedAlignError(f"{domainbed_root} is not a DomainBed checkout (no domainbed/scripts/sweep.py); "
                                  "set DOMAINBED_ROOT to a clone of facebookresearch/DomainBed at b93c22a")
    config = dict(FULL if full else DEMO)
    config.update({k: v for k, v in dict(steps=steps, n_hparams=n_hparams, n_trials=n_trials).items()
                   if v is not None})
    env = _environment(domainbed_root)
    print(f"== preparing offline data in {data_dir}", flush=True)
    subprocess.run([sys.executable, "-m", "domainbed_align.data", "prepare", "--data_dir", str(data_dir)],
                   check=True, env=env)
    from domainbed_align.data import DATASETS

    n_envs = len(DATASETS[dataset].ENVIRONMENTS)
    total = len(ALGORITHMS) * n_envs * config["n_hparams"] * config["n_trials"]
    label = "FULL" if full else "DEMO (short CPU runs: numbers show the pipeline works, not ALIGN's accuracy)"
    print(f"== sweep: {' vs '.join(ALGORITHMS)} on {dataset}, {total} runs, {label}", flush=True)
    command = [sys.executable, "-m", "domainbed.scripts.sweep", "launch", "--datasets", dataset,
               "--algorithms", *ALGORITHMS, "--n_hparams", str(config["n_hparams"]),
               "--n_trials", str(config["n_trials"]), "--single_test_envs", "--command_launcher", "local",
               "--data_dir", str(data_dir), "--output_dir", str(output_dir), "--skip_confirmation"]
    if config["steps"]:
        command += ["--steps", str(config["steps"])]
    if config["hparams"]:
        command += ["--hparams", json.dumps(config["hparams"])]
    print("   " + " ".join(command[1:]), flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir.parent / f"{output_dir.name}.log"
    stop = threading.Event()
    watcher = threading.Thread(target=_progress, args=(output_dir, total, stop), daemon=True)
    watcher.start()
    started = time.monotonic()
    with open(log, "w") as handle:
        code = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    stop.set()
    watcher.join()
    done = sum((p / "done").exists() for p in output_dir.iterdir() if p.is_dir())
    print(f"== sweep finished in {time.monotonic() - started:.0f}s: {done}/{total} runs done (log: {log})")
    if code != 0 or done < total:
        print(f"error: some runs failed; see {log}. Rerun the same command to finish them "
              f"(done runs are kept; incomplete ones need `python -m domainbed.scripts.sweep delete_incomplete` "
              f"with the same arguments).", file=sys.stderr)
        return 1
    table = subprocess.run([sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir",
                            str(output_dir)], env=env, capture_output=True, text=True)
    print(table.stdout)
    (output_dir.parent / f"{output_dir.name}.table.txt").write_text(table.stdout)
    if table.returncode != 0:
        print(table.stderr, file=sys.stderr)
    return table.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m domainbed_align.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domainbed_root", default=os.environ.get("DOMAINBED_ROOT"),
                        help="upstream DomainBed checkout (default: $DOMAINBED_ROOT)")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--output_dir", default="sweeps/out/texturemnist_demo")
    parser.add_argument("--dataset", default="TextureMNIST", choices=["TextureMNIST", "SpuriousTextureMNIST"])
    parser.add_argument("--full", action="store_true", help="DomainBed's run length, 5 hparam draws, 3 trials")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--n_hparams", type=int)
    parser.add_argument("--n_trials", type=int)
    args = parser.parse_args(argv)
    if not args.domainbed_root:
        print("error: no DomainBed: pass --domainbed_root or set DOMAINBED_ROOT to a clone of "
              "facebookresearch/DomainBed at b93c22a", file=sys.stderr)
        return 2
    try:
        return run(Path(args.domainbed_root).resolve(), Path(args.data_dir).resolve(),
                   Path(args.output_dir).resolve(), args.full, args.steps, args.n_hparams, args.n_trials,
                   args.dataset)
    except DomainbedAlignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
