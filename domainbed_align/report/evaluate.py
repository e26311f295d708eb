"""``python -m domainbed_align.evaluate``: explanation metrics of trained DomainBed runs (what collect_results lacks).

Give it run folders' ``model.pkl`` files (``--model``) or a sweep's output folder (``--input_dir``: every
``*/model.pkl`` in it, or with ``--checkpoint selected`` every ``*/model_selected.pkl``, the checkpoint
training-domain validation selects, which our algorithms keep while train.py runs:
:mod:`domainbed_align.upstream.checkpoint_keeper`; each record says which checkpoint and step it describes). Each
model is loaded with :func:`domainbed_align.methods.checkpoints.load_algorithm`, its dataset
rebuilt from the run's own arguments (without data augmentation), and on each evaluated environment it reports
accuracy and the three metrics of :mod:`domainbed_align.report.metrics` for its true-class Grad-CAMs (``--explain
predicted`` for the predicted class), next to the same metrics for random maps of the same resolution (the level
an explanation that knows nothing reaches), averaged over the images.

Images: the run's test environments, whole (train.py never trained on them), by default; ``--envs all`` adds the
training environments' held-out ("out") splits, rebuilt with upstream's own split function, so it needs
``domainbed`` importable (run from your DomainBed clone, or set DOMAINBED_ROOT), as do DomainBed's own datasets.
At most ``--max_images`` per environment, a seeded random subset (image folders are sorted by class, so the first
images would be one class).

Output: one JSON line per (run, environment) on stdout (``split`` "test": a whole test environment; "out": a
training environment's held-out split; ``zero_maps``: the share of images whose Grad-CAM is zero everywhere, which
ranks no pixel above another: the metrics then take the pixels in a fixed scrambled order, like a random map;
``diverged``: whether the run's last results.jsonl record says ``diverged`` > 0, ``degenerate_mask``: whether that
record's masker mask is degenerate (:func:`domainbed_align.runs.records.degenerate_mask`), both null without one), or
with ``--format table`` a markdown table averaged over the runs of each algorithm and environment (it pools every
run it is given: pass the runs you want compared, e.g. ``--hparams_seed 0`` for DomainBed's default hparams).
``--records FILE`` tabulates saved JSON lines. On datasets with ground-truth foreground masks (TextureMNIST,
SpuriousTextureMNIST, DecoyMNIST: the digit's strokes) it also reports ``foreground_mass``, the share of the Grad-CAM's mass on the object, next to
``foreground_share``, the object's share of the image (what a uniform map scores), and for ALIGN its masker's own
mask against the object: ``masker_iou`` (mask > 0.5), ``masker_soft_iou`` (sum(min) / sum(max)) and ``mask_mean``,
beside ``all_ones_iou``, the IoU of a mask that keeps everything. On DecoyMNIST also ``decoy_mass``, the Grad-CAM's
mass on the decoy patch, beside ``decoy_share`` (1/49, what a uniform map scores), and for ALIGN ``mask_decoy_mass``,
its mask's mass on the patch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from domainbed_align import annotations
from domainbed_align.report import metrics
from domainbed_align.report import selection
from domainbed_align.runs import validation
from domainbed_align.report import sweep_records
from domainbed_align.report.render import (DEGENERATE_MASK_MARK, DIVERGED_MARK, UNFINISHED_MARK, format_cell,
                                           mean_and_error, pipe_table)
from domainbed_align.runs import records as results_files
from domainbed_align.runs.records import readable_records
from domainbed_align.errors import CheckpointError, DomainbedAlignError, ResultsFileError
from domainbed_align.errors import print_error
from domainbed_align.methods.backbones import NO_GRADCAM

COMMAND = "domainbed-align evaluate"  # how its errors are prefixed (errors.print_error)

REPORTED = ("accuracy", "sufficiency", "comprehensiveness", "insertion_auc", "random_sufficiency",
            "random_comprehensiveness", "random_insertion_auc", "zero_maps")
FOREGROUND = ("foreground_mass", "foreground_share")  # None where the dataset has no ground-truth masks
MASKER = ("masker_iou", "masker_soft_iou", "all_ones_iou", "mask_mean")  # ALIGN on datasets with masks, else None
# Decoy-MNIST (environment.decoy(i), the patch): the Grad-CAM's mass on the decoy, the decoy's share of the image (what
# a uniform map scores: 1/49) and ALIGN's mask's mass on it; None elsewhere, and the table shows them only then.
DECOY = ("decoy_mass", "decoy_share", "mask_decoy_mass")


CHECKPOINT_FILES = {"last": validation.LAST_FILE, "selected": validation.SELECTED_FILE}


def find_models(input_dir: str | os.PathLike, checkpoint: str = "last") -> list[Path]:
    """Every run's ``model.pkl`` (``checkpoint`` "last") or ``model_selected.pkl`` ("selected") in a sweep output
    folder (sorted)."""
    folder = Path(input_dir)
    name = CHECKPOINT_FILES[checkpoint]
    if not folder.is_dir():
        raise CheckpointError(f"--input_dir {folder} is not a folder: give the --output_dir of 'sweep launch' "
                              f"(or of one train.py run's parent).")
    models = sorted(folder.glob(f"*/{name}")) + sorted(folder.glob(name))
    if not models:
        why = ("train.py writes model.pkl when a run ends (not with --skip_model_save); unfinished runs have none"
               if checkpoint == "last" else
               "our algorithms write it at the first checkpoint inside train.py (not with --skip_model_save, nor "
               "with DOMAINBED_ALIGN_KEEP_SELECTED=0; runs of DomainBed's own algorithms have none)")
        raise CheckpointError(f"no */{name} in {folder}: {why}.")
    return models


def dataset_of_run(checkpoint: dict, data_dir: str | None = None) -> Any:
    """The run's dataset as its train.py built it (its hparams and test environments), but without data
    augmentation (explain the images, not random crops of them) and without the mask channel of annotation methods
    (masks come from ``environment.mask(i)``). ``data_dir`` overrides the run's own."""
    args = checkpoint["args"]
    plain = {**checkpoint["model_hparams"], "data_augmentation": False, "gt_masks": False, "mask_dir": ""}
    assert not annotations.wants_mask_channel(plain)  # the one rule, by which the datasets append the channel
    return _dataset(args["dataset"], data_dir or args["data_dir"], list(args["test_envs"]), plain)


def seeded_subset(indices: Sequence[int], count: int, generator: torch.Generator) -> list[int]:
    """At most ``count`` of ``indices`` in a random order drawn from ``generator`` (image folders are sorted by
    class, so the first images would be one class)."""
    return [indices[i] for i in torch.randperm(len(indices), generator=generator)[:count].tolist()]


def evaluation_images(checkpoint: dict, envs: str, data_dir: str | None) -> list[dict]:
    """``[{env, env_name, split, environment, indices}]``: the environments to evaluate and which of their images,
    as the run saw them."""
    checkpoint_args = checkpoint["args"]
    test_envs = list(checkpoint_args["test_envs"])
    dataset = dataset_of_run(checkpoint, data_dir)
    chosen = []
    for index, environment in enumerate(dataset.datasets):
        if index in test_envs:  # all of it: never trained on
            everything = list(range(len(environment)))
            chosen.append(dict(env=index, split="test", environment=environment, indices=everything))
        elif envs == "all":
            from domainbed_align.upstream import adapter

            _require_domainbed("--envs all (the training environments' held-out splits)")
            out = adapter.upstream_holdout_indices(environment, checkpoint_args["holdout_fraction"],
                                                 checkpoint_args["trial_seed"], index)
            chosen.append(dict(env=index, split="out", environment=environment, indices=out))
    for entry in chosen:
        entry["env_name"] = dataset.ENVIRONMENTS[entry["env"]]
    return chosen


def evaluate_environment(algorithm: Any, environment: Any, indices: Sequence[int], max_images: int, batch_size: int,
                         explain: str, steps: int, fractions: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Means over a seeded random subset of ``environment[indices]``: accuracy, the three metrics for the model's
    Grad-CAMs and for random maps, and the share of all-zero Grad-CAMs; where the dataset has ground-truth
    foreground masks (``environment.mask(i)``, our TextureMNIST datasets), also the Grad-CAMs' mass on them and the
    foreground's share of the image (what a uniform map scores)."""
    device = next(algorithm.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    order = seeded_subset(indices, max_images, generator)
    has_masks = metrics.has_ground_truth(environment)
    has_decoys = callable(getattr(environment, "decoy", None))
    sums: dict[str, float] = defaultdict(float)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        samples = [environment[i] for i in chunk]
        images = torch.stack([x for x, _ in samples]).to(device)
        labels = torch.tensor([int(y) for _, y in samples], device=device)
        with torch.no_grad():
            predicted = algorithm.predict(images).argmax(dim=1)
        classes = labels if explain == "label" else predicted
        saliency = algorithm.explain(images, classes)
        random_maps = torch.rand(saliency.shape, generator=generator).to(device)
        ours = metrics.explanation_metrics(algorithm.predict, images, saliency, classes, fractions, steps)
        chance = metrics.explanation_metrics(algorithm.predict, images, random_maps, classes, fractions, steps)
        batch = {"accuracy": (predicted == labels).float(), "zero_maps": (saliency.flatten(1).amax(1) == 0).float(),
                 **{key: ours[key] for key in ("sufficiency", "comprehensiveness", "insertion_auc")},
                 **{f"random_{key}": chance[key] for key in ("sufficiency", "comprehensiveness", "insertion_auc")}}
        if has_masks:
            masks = torch.stack([environment.mask(i) for i in chunk]).flatten(0, 1).to(device)  # [N, H, W]
            batch["foreground_mass"] = metrics.foreground_mass(saliency, masks)
            batch["foreground_share"] = masks.flatten(1).mean(1)
            if hasattr(algorithm, "masker"):  # ALIGN: is its mask the object?
                with torch.no_grad():
                    kept = algorithm.masker(images).squeeze(1).float()
                batch["masker_iou"] = metrics.mask_iou(kept, masks)
                batch["masker_soft_iou"] = metrics.mask_iou(kept, masks, threshold=None)
                batch["all_ones_iou"] = metrics.mask_iou(torch.ones_like(kept), masks)
                batch["mask_mean"] = kept.flatten(1).mean(1)
        if has_decoys:
            patches = torch.stack([environment.decoy(i) for i in chunk]).flatten(0, 1).to(device)  # [N, H, W]
            batch["decoy_mass"] = metrics.foreground_mass(saliency, patches)
            batch["decoy_share"] = patches.flatten(1).mean(1)
            if hasattr(algorithm, "masker"):
                batch["mask_decoy_mass"] = (kept * patches).flatten(1).sum(1) / kept.flatten(1).sum(1).clamp(
                    min=torch.finfo(kept.dtype).tiny)
        for key, values in batch.items():
            sums[key] += float(values.sum())
    measured = set(sums)  # before the lookups below, which would add the missing keys to the defaultdict
    means = {key: sums[key] / max(len(order), 1) for key in (*REPORTED, *FOREGROUND, *MASKER, *DECOY)}
    return {"n_images": len(order), **{key: (means[key] if key in measured else None) for key in means}}


def evaluate_model(model_pkl: Path, options: argparse.Namespace, finished: bool | None = None) -> Iterable[dict]:
    """One record per evaluated environment of one run (``finished``: whether its run finished, None: unknown)."""
    from domainbed_align.methods.checkpoints import algorithm_from_checkpoint, read_checkpoint

    checkpoint = read_checkpoint(model_pkl, options.device)
    args = checkpoint["args"]
    if options.hparams_seed is not None and args["hparams_seed"] != options.hparams_seed:
        return  # not selected (filtered here, so each file is read once)
    algorithm = algorithm_from_checkpoint(checkpoint, options.device)
    if not algorithm.classifier.has_gradcam:  # dtak/rrr's perceptron: nothing here to score, the others still are
        why = NO_GRADCAM.format(what="evaluate's metrics")
        raise CheckpointError(f"{model_pkl}: {why} Its "
                              f"accuracies are in its results.jsonl (Decoy-MNIST: sweeps/decoy_accuracy.py adds the "
                              f"input gradient's share on the patch).")
    # which weights: the checkpoint training-domain validation selected (model_selected.pkl) or the last one
    which = "selected" if "selection" in checkpoint else "last"
    results = readable_records(model_pkl.parent)
    step = selection.checkpoint_step(checkpoint, results)
    # whether the run diverged (its last record: tables marks the same runs §); None: no results.jsonl to tell
    diverged = results_files.diverged(results[-1]) if results else None
    # whether its final mask is degenerate (the same record: tables marks the same runs ¶); None: nothing to tell
    degenerate_mask = results_files.degenerate_mask(results[-1]) if results else None
    for entry in evaluation_images(checkpoint, options.envs, options.data_dir):
        print(f"domainbed-align: {model_pkl.parent.name}: {args['algorithm']}, {entry['env_name']} "
              f"({entry['split']})", file=sys.stderr, flush=True)
        figures = evaluate_environment(algorithm, entry["environment"], entry["indices"], options.max_images,
                                       options.batch_size, options.explain, options.steps, options.fractions,
                                       options.seed)
        yield {"run": str(model_pkl.parent), "finished": finished, "diverged": diverged,
               "degenerate_mask": degenerate_mask,
               "algorithm": args["algorithm"], "dataset": args["dataset"],
               "test_envs": list(args["test_envs"]), "hparams_seed": args["hparams_seed"],
               "trial_seed": args["trial_seed"], "checkpoint": which, "step": step, "env": entry["env"],
               "env_name": entry["env_name"],
               "split": entry["split"], "explain": options.explain, "insertion_steps": options.steps,
               "fractions": list(options.fractions), **figures}


def read_records(path: Path) -> list[dict]:
    """The records of a .jsonl file this command wrote; one clear error for a missing or damaged one."""
    try:
        lines = results_files.json_lines(path)  # the one JSON-lines reader
    except OSError as error:
        raise ResultsFileError(f"--records {path} cannot be read ({error.strerror}).") from None
    records = []
    for number, _, record, error in lines:
        if error is None and (not isinstance(record, dict)
                              or any(key not in record for key in ("algorithm", "env_name", *REPORTED))):
            error = ValueError("not one of this command's records")
        if error is not None:
            raise ResultsFileError(f"--records {path} line {number} is not a record of domainbed_align.report.evaluate "
                                   f"({str(error)[:80]}); give the file its jsonl output was written to.")
        records.append(record)
    if not records:
        raise ResultsFileError(f"--records {path} is empty.")
    return records


def finished_runs(models: Sequence[Path]) -> tuple[dict[Path, bool | None], dict[Path, str]]:
    """(run folder -> whether the run finished, None when the folder is no run folder (a model file copied out of
    its run: nothing tells), the unfinished run folders -> why), by :func:`domainbed_align.report.sweep_records.unfinished_runs`."""
    folders = list(dict.fromkeys(model.parent for model in models))
    runs = [folder for folder in folders if folder.is_dir() and results_files.is_run_folder(folder)]
    why = sweep_records.unfinished_runs(runs)
    finished = {folder: (folder not in why if folder in runs else None) for folder in folders}
    return finished, why


def markdown_table(records: list[dict]) -> str:
    """Mean (± standard error over runs, when several) per algorithm, environment and checkpoint kind (selected or
    last, with the steps evaluated); a row that counts an unfinished run (``finished`` false) is marked †, one that
    counts a run that diverged (``diverged`` true) §, one whose final mask is degenerate (``degenerate_mask`` true)
    ¶."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        which = record.get("checkpoint", "last")  # records written before the field existed: model.pkl's
        groups[(record["dataset"], record["algorithm"], record["env_name"], record["split"], which)].append(record)
    decoys = DECOY if any(record.get("decoy_mass") is not None for record in records) else ()
    columns = ("accuracy", "sufficiency", "comprehensiveness", "insertion_auc", "random_insertion_auc", "zero_maps",
               *FOREGROUND, *MASKER, *decoys)
    rows = []
    for (dataset, algorithm, env_name, split, which), group in sorted(groups.items()):
        cells = [_mean_and_error([r.get(c) for r in group]) for c in columns]
        images = sum(r["n_images"] for r in group)
        steps = sorted({r.get("step") for r in group}, key=lambda step: (step is None, step))
        shown = ", ".join("?" if step is None else str(step) for step in steps)
        marks = (UNFINISHED_MARK if any(r.get("finished") is False for r in group) else "") + \
            (DIVERGED_MARK if any(r.get("diverged") for r in group) else "") + \
            (DEGENERATE_MASK_MARK if any(r.get("degenerate_mask") for r in group) else "")
        checkpoint = f"{which} (step {shown})" + (f" {marks}" if marks else "")
        rows.append([dataset, algorithm, f"{env_name} ({split})", checkpoint, str(len(group)), str(images), *cells])
    lines = pipe_table(["dataset", "algorithm", "environment", "checkpoint", "runs", "images", *columns], rows)
    unfinished = sorted({Path(r["run"]).name for r in records if r.get("finished") is False})
    if unfinished:
        lines.append(f"\n{UNFINISHED_MARK}: counts unfinished runs (no DomainBed `done` file; --include_unfinished): "
                     f"{', '.join(unfinished)}.")
    diverged = sorted({Path(r["run"]).name for r in records if r.get("diverged")})
    if diverged:
        lines.append(f"\n{DIVERGED_MARK}: counts runs that diverged (their results.jsonl's last record says `diverged` "
                     f"> 0; see each run's err.txt): {', '.join(diverged)}.")
    degenerate = sorted({Path(r["run"]).name for r in records if r.get("degenerate_mask")})
    if degenerate:
        lines.append(f"\n{DEGENERATE_MASK_MARK}: counts runs whose final mask is degenerate (their results.jsonl's "
                     f"last record has a `mask_mean` past warm-up under {annotations.EMPTY_MASK:.0%} or over "
                     f"{annotations.FULL_MASK:.0%}; see each run's err.txt): {', '.join(degenerate)}.")
    return "\n".join(lines)


def _mean_and_error(values: list[float | None]) -> str:
    if any(value is None for value in values):  # e.g. the foreground columns of a dataset without masks
        return "-"
    mean, spread = mean_and_error(values)
    return format_cell({"mean": mean, "se": spread if len(values) > 1 else None, "digits": 3}, "markdown")


def _dataset(name: str, root: str, test_envs: list[int], hparams: dict) -> Any:
    from domainbed_align.data import DATASETS as ours

    if name in ours:  # offline datasets: no DomainBed needed
        return ours[name](root, test_envs, hparams)
    from domainbed_align.upstream import adapter

    _require_domainbed(f"the run's dataset {name!r} (one of DomainBed's)")
    try:
        return adapter.upstream_dataset(name, root, test_envs, hparams)
    except (OSError, RuntimeError) as error:  # DomainBed's own datasets fail on a missing folder with these
        reason = f"{type(error).__name__}: {str(error)[:200]}"
        raise CheckpointError(f"DomainBed could not load the run's dataset {name!r} from {root!r} ({reason}); pass "
                              f"--data_dir where DomainBed's download script put it.") from None


def _require_domainbed(what: str) -> None:
    from domainbed_align.upstream import adapter

    if not adapter.domainbed_importable():
        raise CheckpointError(f"{what} needs DomainBed: run from your DomainBed clone (python -m "
                              f"domainbed_align.report.evaluate ...) or set DOMAINBED_ROOT to it.")


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. "
                                         f"0.01,0.05,0.1,0.2,0.5") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed_align.evaluate", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", nargs="+", type=Path, help="model.pkl file(s) of DomainBed runs")
    source.add_argument("--input_dir", type=Path, help="a sweep's output folder (every */model.pkl in it, or "
                                                       "*/model_selected.pkl with --checkpoint selected; its finished "
                                                       "runs'), or a results folder holding them in runs/")
    source.add_argument("--records", type=Path, help="tabulate records an earlier run printed (a .jsonl file); "
                                                     "implies --format table")
    p.add_argument("--checkpoint", choices=tuple(CHECKPOINT_FILES), default="last",
                   help="with --input_dir: each run's last checkpoint (model.pkl, what oracle selection reports; "
                        "default) or the one training-domain validation selected (model_selected.pkl)")
    p.add_argument("--data_dir", help="where the datasets are (default: each run's own --data_dir)")
    p.add_argument("--envs", choices=("test", "all"), default="test",
                   help="test: the run's test environments (default); all: also the training environments' "
                        "held-out splits (needs domainbed importable)")
    p.add_argument("--explain", choices=("label", "predicted"), default="label",
                   help="explain (and track the probability of) the true class (default) or the predicted one")
    p.add_argument("--max_images", type=int, default=500, help="per environment, a seeded random subset (500)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--steps", type=int, default=metrics.INSERTION_STEPS, help="insertion steps (DRE: 28)")
    p.add_argument("--fractions", type=_fractions, default=metrics.DEFAULT_FRACTIONS,
                   help="pixel shares for sufficiency/comprehensiveness (ERASER: 0.01,0.05,0.1,0.2,0.5)")
    p.add_argument("--hparams_seed", type=int, help="only runs with this hparams_seed (0: DomainBed's defaults)")
    p.add_argument("--include_unfinished", action="store_true",
                   help="with --input_dir: also runs without DomainBed's `done` file (killed, failed, still running; "
                        "by default left out, in one line on stderr); their records say \"finished\": false and the "
                        "table marks them †")
    p.add_argument("--seed", type=int, default=0, help="seeds the image subset and the random maps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    return p


def device_problem(device: str) -> str | None:
    """Why ``--device`` cannot be used here (one line), or None."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        return f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return f"--device {device!r}: this torch sees no CUDA device; use --device cpu"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    if device_problem(options.device):
        parser().error(device_problem(options.device))
    for flag in ("max_images", "batch_size", "steps"):
        if getattr(options, flag) < 1:
            parser().error(f"--{flag} must be at least 1")
    try:
        metrics.check_settings(options.fractions, options.steps)  # before any model is loaded
        if options.records:
            print(markdown_table(read_records(options.records)))
            return 0
        if options.model:
            models = list(options.model)
        else:
            models = find_models(results_files.sweep_folder(options.input_dir), options.checkpoint)
        finished, why = finished_runs(models)
        if why:  # one line: how many runs, and why; named files (--model) are evaluated as asked
            counted = bool(options.model or options.include_unfinished)
            fix = ('their records say "finished": false' if counted else
                   '--include_unfinished evaluates them (their records then say "finished": false)')
            summary = results_files.unfinished_summary(why, len(finished), counted, fix)
            if not counted:
                models = [model for model in models if model.parent not in why]
                if not models:
                    raise CheckpointError(f"no finished run under {options.input_dir}: {summary}")
            print(f"domainbed-align: note: {summary}", file=sys.stderr, flush=True)
        records, failed = [], []
        for model_pkl in models:
            try:
                for record in evaluate_model(model_pkl, options, finished[model_pkl.parent]):
                    records.append(record)
                    if options.format == "jsonl":
                        print(json.dumps(record), flush=True)
            except CheckpointError as error:  # one damaged run must not cost the others' records
                failed.append(str(error))
                print_error(f"{error}", COMMAND)
        if failed and not records:
            if len(failed) > 1:
                print_error(f"none of the {len(models)} models could be evaluated (above).",
                            COMMAND)
            return 1
        if not records and options.hparams_seed is not None:
            raise CheckpointError(f"no run has hparams_seed {options.hparams_seed}.")
    except DomainbedAlignError as error:
        print_error(f"{error}", COMMAND)
        return 1
    if options.format == "table":
        print(markdown_table(records))
    if failed:  # the records above are complete for the others; the exit status says some are missing
        print_error(f"{len(failed)} of {len(models)} models could not be evaluated (named above); "
                    f"the output holds the other {len(models) - len(failed)}.", COMMAND)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
