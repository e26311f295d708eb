"""``python -m domainbed_align.figures``: where trained runs look, and how they trained (matplotlib, one PNG each).

    python -m domainbed_align.figures maps --input_dir SWEEP --out maps.png [--envs all] [--checkpoint last]
    python -m domainbed_align.figures maps --model a/model.pkl b/model.pkl --out maps.png
    python -m domainbed_align.figures curves --input_dir SWEEP --out curves.png

``maps``: per environment a block of rows over the same images (evaluate's seeded subset): the image, its
ground-truth mask where the dataset has one, each run's true-class Grad-CAM over the image (``jet``, each map min-max
normalised as ``explain`` gives it, opacity growing with the map, so a map that is zero everywhere leaves the image
as it is) and, for ALIGN, its masker's mask. ``--input_dir``: one run per algorithm (``--trial``, default 0, and
DomainBed's default hparams), its selected checkpoint (``model_selected.pkl``) unless ``--checkpoint last``.
Environments: the runs' held-out one (default) or ``--envs all`` (images of the whole environment).

``curves``: from results.jsonl alone (a results/ copy of a sweep works), one quantity per panel, x the step: accuracy
per environment (held-out domains: their ``in`` split, as the tables; training domains: their ``out`` split, what
selection sees), the cross-entropy, ALIGN's ``mask_mean`` and the blank-Grad-CAM share ``zero_cams``, one line per
method; below them small multiples, each method's own explanation loss (its registry ``explanation_term``) alone in
its panel. Each line is the mean over the method's runs (trials) with the same held-out domains, its band ± DomainBed's
standard error over them; the reference, TimmERM, is the black dashed line wherever it logs the quantity. It logs no
``zero_cams``: with ``--explanations`` (evaluate's records of the sweep) its checkpoints' evaluated zero-map share
stands there as marked points, otherwise the panel's legend says so.

``--input_dir``: a sweep's output folder, or a results folder holding its run folders in ``runs/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from domainbed_align import atomic  # noqa: E402
from domainbed_align.report import metrics  # noqa: E402
from domainbed_align.errors import CheckpointError, DomainbedAlignError, ResultsFileError  # noqa: E402
from domainbed_align.errors import print_error  # noqa: E402

COMMAND = "domainbed-align figures"  # how its errors are prefixed (errors.print_error)

TILE_INCHES = 1.0
LABEL_INCHES = 1.1  # the row labels' margin
TITLE_INCHES = 0.3
CAM_OPACITY = 0.6


def unnormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the datasets' normalisation (ImageNet mean/std, as DomainBed's image datasets use) to [0, 1] RGB."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[N, h, w]`` maps -> ``[N, H, W]`` (bilinear), clamped to [0, 1]."""
    return F.interpolate(maps.unsqueeze(1).float(), size=tuple(size), mode="bilinear",
                         align_corners=False).squeeze(1).clamp(0, 1)


# --- maps ---------------------------------------------------------------------------------------------------------
def environment_rows(runs: Sequence[tuple[str, Any]], environment: Any, indices: Sequence[int],
                     device: str) -> list[tuple[str, str, torch.Tensor, torch.Tensor | None]]:
    """``[(label, kind, pictures [N, H, W, 3] or [N, H, W], overlay or None)]`` for one environment's images.
    ``runs``: (label, loaded algorithm)."""
    from domainbed_align.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    samples = [environment[i] for i in indices]
    images = torch.stack([x for x, _ in samples]).to(device)
    labels = torch.tensor([int(y) for _, y in samples], device=device)
    pictures = unnormalize(images, IMAGENET_MEAN, IMAGENET_STD).permute(0, 2, 3, 1).cpu()
    rows = [("image", "image", pictures, None)]
    if metrics.has_ground_truth(environment):
        masks = torch.stack([environment.mask(i).reshape(images.shape[-2:]) for i in indices]).float()
        rows.append(("ground truth", "mask", masks, None))
    for label, algorithm in runs:
        cams = upsample(algorithm.explain(images, labels), images.shape[-2:]).cpu()
        rows.append((f"{label}\nGrad-CAM", "cam", pictures, cams))
        masker = getattr(algorithm, "masker", None)
        if masker is not None:
            with torch.no_grad(), algorithm.autocast(images):
                masks = masker(algorithm.prepare_images(images)).float()
            rows.append((f"{label}\nmask", "mask", masks.reshape(len(indices), *images.shape[-2:]).cpu(), None))
    return rows


def maps_figure(blocks: Sequence[tuple[str, list]]) -> Figure:
    """One figure: per block (its title, :func:`environment_rows`), the rows over its images."""
    n_columns = max(rows[0][2].shape[0] for _, rows in blocks)
    width = LABEL_INCHES + TILE_INCHES * n_columns
    heights = [TILE_INCHES * len(rows) + TITLE_INCHES for _, rows in blocks]
    figure = plt.figure(figsize=(width, sum(heights)))
    parts = figure.subfigures(len(blocks), 1, height_ratios=heights, squeeze=False)[:, 0]
    for part, (title, rows), height in zip(parts, blocks, heights):  # one sub-figure per environment
        axes = part.subplots(len(rows), n_columns, squeeze=False)
        part.subplots_adjust(left=LABEL_INCHES / width, right=0.99, bottom=0.01, top=1 - TITLE_INCHES / height,
                             wspace=0.04, hspace=0.04)
        part.suptitle(title, x=LABEL_INCHES / width, ha="left", fontsize=9)
        for r, (label, kind, pictures, cams) in enumerate(rows):
            for c in range(n_columns):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= pictures.shape[0]:
                    ax.axis("off")
                    continue
                if kind == "mask":
                    ax.imshow(pictures[c].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(pictures[c].numpy())
                if kind == "cam":
                    cam = cams[c].numpy()
                    ax.imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=CAM_OPACITY * cam)
            axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    return figure


def runs_of_sweep(input_dir: Path, checkpoint: str, trial: int) -> list[Path]:
    """One checkpoint file per algorithm: a finished run (its ``done`` file) of trial ``trial`` with DomainBed's
    default hparams (hparams_seed 0) and the first held-out domain set found; in registry order. ``input_dir``: a
    sweep folder, or a results folder holding its runs in ``runs/``."""
    from domainbed_align.report import evaluate
    from domainbed_align.methods import registry
    from domainbed_align.runs.records import readable_records, sweep_folder

    chosen: dict[str, Path] = {}
    test_envs = None
    for model_pkl in evaluate.find_models(sweep_folder(input_dir), checkpoint):
        records = readable_records(model_pkl.parent)
        if not records or not (model_pkl.parent / "done").exists():  # a run still training is no result yet
            continue
        args = records[0]["args"]
        if args["trial_seed"] != trial or args["hparams_seed"] != 0:
            continue
        test_envs = test_envs if test_envs is not None else args["test_envs"]
        if args["test_envs"] == test_envs and args["algorithm"] not in chosen:
            chosen[args["algorithm"]] = model_pkl
    if not chosen:
        raise CheckpointError(f"no finished run of trial {trial} with hparams_seed 0 in {input_dir}: pass --trial, "
                              f"or wait for the runs to end.")
    order = list(registry.algorithm_names())
    return [chosen[name] for name in sorted(chosen, key=lambda n: order.index(n) if n in order else len(order))]


# --- curves -------------------------------------------------------------------------------------------------------
REFERENCE = "TimmERM"  # the plain-ERM reference (tables.REFERENCE): drawn in every panel whose quantity it logs
REFERENCE_STYLE = {"color": "black", "linestyle": "--"}
BAND_ALPHA = 0.18
COLUMNS = 4  # panels per row of the shared quantities
TERM_COLUMNS = 5  # panels per row of the small multiples (one method's own explanation loss each)
PANEL_INCHES = (3.1, 2.35)
TERM_PANEL_INCHES = (2.48, 1.95)
CAPTION = ("lines: mean over trials; bands: ± standard error (DomainBed's: std over trials / √n); "
           "losses and shares: mean over the steps since the previous checkpoint")


class Panel:
    """One quantity on one axes: ``value(record)`` (None: the record does not hold it), drawn for ``algorithms``
    (None: every method holding it); accuracies in percent."""

    def __init__(self, title: str, ylabel: str, value: Any, percent: bool = False,
                 algorithms: Sequence[str] | None = None) -> None:
        self.title, self.ylabel, self.value, self.percent, self.algorithms = title, ylabel, value, percent, algorithms


def mean_and_band(values: Sequence[float], percent: bool) -> tuple[float, float]:
    """Mean and DomainBed's standard error of one step's values over trials (:func:`render.domainbed_mean_and_error`,
    as the tables compute it: ``np.std`` with ddof 0 of ``values / sqrt(n)``); in percent when ``percent``."""
    from domainbed_align.report import render

    mean, error = render.domainbed_mean_and_error(values)
    return (mean, error) if percent else (mean / 100, error / 100)


def trial_curve(records: Sequence[dict], value: Any, percent: bool = False) -> list[tuple[int, float, float, int]]:
    """``[(step, mean, standard error, trials)]`` of one method's runs, by step: each step's values over the runs
    that hold it there (sorted by run, so the sums never depend on the folder's listing order)."""
    by_step: dict[int, list[tuple[str, float]]] = {}
    for record in records:
        v = value(record)
        if v is not None:
            by_step.setdefault(int(record["step"]), []).append((record["_run"], float(v)))
    curve = []
    for step in sorted(by_step):
        values = [v for _, v in sorted(by_step[step])]
        curve.append((step, *mean_and_band(values, percent), len(values)))
    return curve


def _draw(ax: Any, curve: list[tuple[int, float, float, int]], algorithm: str, colour: str) -> None:
    steps = [c[0] for c in curve]
    means = np.array([c[1] for c in curve])
    style = dict(REFERENCE_STYLE) if algorithm == REFERENCE else {"color": colour}
    ax.plot(steps, means, label=algorithm, marker=".", markersize=3, linewidth=1.2, **style)
    if max(c[3] for c in curve) >= 2:  # one trial has no spread to show
        errors = np.array([c[2] for c in curve])
        band = ax.fill_between(steps, means - errors, means + errors, color=style["color"], alpha=BAND_ALPHA,
                               linewidth=0, label=f"_{algorithm} ± SE")
        band.set_gid(algorithm)


def _held_out(records: list[dict]) -> tuple[int, ...]:
    """The most common held-out set (ties: the smallest), so one figure gives each environment one role."""
    counts: dict[tuple[int, ...], int] = {}
    for record in records:
        key = tuple(record["args"]["test_envs"])
        counts[key] = counts.get(key, 0) + 1
    return min(counts, key=lambda key: (-counts[key], key))


def _reference_zero_maps(explanations: Sequence[dict] | None,
                         reference_runs: set[str]) -> tuple[list[tuple[int, float]], list[str]]:
    """``([(step, zero_maps)], checkpoint kinds)``: evaluate's share of all-zero Grad-CAMs for the reference's own
    checkpoints (its runs in this figure, matched by folder name) on its held-out domains (split "test")."""
    points, kinds = [], set()
    for record in explanations or ():
        run = Path(str(record.get("run", ""))).name
        if run in reference_runs and record.get("zero_maps") is not None and record.get("split") == "test":
            points.append((int(record["step"]), float(record["zero_maps"])))
            kinds.add(str(record.get("checkpoint", "evaluated")))
    return sorted(points), sorted(kinds)


def curves_figure(records: list[dict], names: Any, explanations: Sequence[dict] | None = None) -> Figure:
    """Training curves of a sweep's runs (records as :func:`domainbed_align.report.tables.load_records` reads them):
    above, one quantity per panel for every method holding it (accuracy per environment, cross-entropy, ALIGN's
    mask, the blank-Grad-CAM share), the reference (TimmERM) dashed in black; below, small multiples, each method's
    own explanation loss (its registry ``explanation_term``) alone. Each line is the mean over the method's trials,
    its band ± DomainBed's standard error. ``explanations``: evaluate's records of the same sweep, whose zero-map
    share of the reference's checkpoints stands in the zero_cams panel for the value TimmERM does not log."""
    from domainbed_align.methods import registry

    held_out = _held_out(records)
    mine = [r for r in records if tuple(r["args"]["test_envs"]) == held_out]
    dataset = mine[0]["args"]["dataset"]
    envs = names.environments(dataset)
    algorithms = [name for name in names.algorithms if any(r["args"]["algorithm"] == name for r in mine)]
    by_algorithm = {name: [r for r in mine if r["args"]["algorithm"] == name] for name in algorithms}
    colours, others = {}, iter(range(10 ** 6))
    for name in names.algorithms:  # one colour per method throughout; the reference black
        colours[name] = REFERENCE_STYLE["color"] if name == REFERENCE else f"C{next(others) % 10}"

    panels = []
    for i, env in enumerate(envs):
        split = "in" if i in held_out else "out"
        panels.append(Panel(f"{env} ({'held out' if i in held_out else 'training'})", f"accuracy, {split} split (%)",
                            (lambda key: lambda r: r.get(key))(f"env{i}_{split}_acc"), percent=True))
    panels.append(Panel("training loss", "cross-entropy (nats)", lambda r: r.get("ce")))
    panels.append(Panel("ALIGN's mask", "mask_mean (share kept, 0-1)", lambda r: r.get("mask_mean")))
    panels.append(Panel("blank Grad-CAMs", "zero_cams (share of batch)", lambda r: r.get("zero_cams")))
    terms = [(name, _term(registry, name)) for name in algorithms if _term(registry, name)]

    rows = -(-len(panels) // COLUMNS)
    legend_slot = rows * COLUMNS > len(panels)
    term_rows = -(-len(terms) // TERM_COLUMNS) if terms else 0
    width = max(COLUMNS * PANEL_INCHES[0] + (0 if legend_slot else 1.6), TERM_COLUMNS * TERM_PANEL_INCHES[0])
    top_height = rows * PANEL_INCHES[1] + 0.75
    term_height = term_rows * TERM_PANEL_INCHES[1] + 0.45
    figure = plt.figure(figsize=(width, top_height + term_height), layout="constrained")
    parts = figure.subfigures(2, 1, height_ratios=[top_height, term_height]) if terms else [figure]
    top = parts[0]
    axes = top.subplots(rows, COLUMNS, squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        drawn = []
        for algorithm in panel.algorithms or algorithms:
            curve = trial_curve(by_algorithm[algorithm], panel.value, panel.percent)
            if curve:
                _draw(ax, curve, algorithm, colours[algorithm])
                drawn.append(algorithm)
        points: list = []
        if panel.title == "blank Grad-CAMs" and REFERENCE in algorithms and REFERENCE not in drawn:
            points, kinds = _reference_zero_maps(explanations, {r["_run"] for r in by_algorithm[REFERENCE]})
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], linestyle="none", marker="*", markersize=8,
                        color=REFERENCE_STYLE["color"], label=f"{REFERENCE}: evaluate's zero_maps\n(held out, "
                                                              f"{'/'.join(kinds)} checkpoints)")
            else:
                ax.plot([], [], linestyle="none", label=f"{REFERENCE} logs no zero_cams\nin training")
            ax.legend(handles=[line for line in ax.get_lines() if line.get_label().startswith(REFERENCE)],
                      fontsize=6.5, loc="best", handlelength=1.0, framealpha=0.85)
        _label(ax, panel.title, panel.ylabel)
        if not drawn and not points:
            ax.text(0.5, 0.5, "no run reports it", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [matplotlib.lines.Line2D([], [], marker=".", label=f"{name} (reference)" if name == REFERENCE else name,
                                       **(REFERENCE_STYLE if name == REFERENCE else {"color": colours[name]}))
               for name in algorithms]
    if legend_slot:
        axes.flat[len(panels)].legend(handles=handles, loc="center", fontsize=8, title="method", ncols=1 +
                                      (len(handles) > 12))
    else:
        top.legend(handles=handles, loc="outside right upper", fontsize=8, title="method")
    trials = sorted({len({r["_run"] for r in rs}) for rs in by_algorithm.values()})
    count = f"{trials[0]}" if len(trials) == 1 else f"{trials[0]}-{trials[-1]}"
    left_out = len({r["_run"] for r in records}) - len({r["_run"] for r in mine})
    other = f" ({left_out} runs with other held-out domains not drawn)" if left_out else ""
    top.suptitle(f"{dataset}, held out: {', '.join(envs[i] for i in held_out)}; {count} trial"
                 f"{'s' if trials[-1] != 1 else ''} per method{other}\n{CAPTION}", fontsize=9)
    if terms:
        bottom = parts[1]
        term_axes = bottom.subplots(term_rows, TERM_COLUMNS, squeeze=False)
        for ax, (algorithm, term) in zip(term_axes.flat, terms):
            term_value = (lambda key: lambda r: r.get(key))(term)
            for name in ([REFERENCE] if REFERENCE in algorithms else []) + [algorithm]:
                curve = trial_curve(by_algorithm[name], term_value)
                if curve:
                    _draw(ax, curve, name, colours[name])
            if not ax.get_lines():
                ax.text(0.5, 0.5, f"no record holds {term}", ha="center", va="center", transform=ax.transAxes,
                        fontsize=7)
            _label(ax, algorithm, f"{term} (loss)", fontsize=7)
        for ax in list(term_axes.flat)[len(terms):]:
            ax.axis("off")
        bottom.suptitle("each method's own explanation loss (its explanation_term), one method per panel, own y "
                        "scale", fontsize=9)
    return figure


def _label(ax: Any, title: str, ylabel: str, fontsize: float = 8) -> None:
    ax.set_title(title, fontsize=fontsize + 1)
    ax.set_xlabel("step", fontsize=fontsize)
    ax.set_ylabel(ylabel, fontsize=fontsize)
    ax.tick_params(labelsize=fontsize - 1)


def _term(registry: Any, algorithm: str) -> str:
    return getattr(registry.algorithm_class(algorithm), "explanation_term", "") if \
        algorithm in registry.algorithm_names() else ""


# --- command line ---------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed_align.figures", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    maps = commands.add_parser("maps", help="images, ground truth, each run's Grad-CAM and ALIGN's mask")
    source = maps.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", nargs="+", type=Path, help="checkpoint files of DomainBed runs (one dataset)")
    source.add_argument("--input_dir", type=Path, help="a sweep's output folder (or a results folder holding it in "
                                                       "runs/): one run per algorithm")
    maps.add_argument("--checkpoint", choices=("selected", "last"), default="selected",
                      help="with --input_dir: model_selected.pkl (default) or model.pkl")
    maps.add_argument("--trial", type=int, default=0, help="with --input_dir: which trial's runs (default 0)")
    maps.add_argument("--envs", choices=("test", "all"), default="test")
    maps.add_argument("--images", type=int, default=6, help="images (columns) per environment, default 6")
    maps.add_argument("--data_dir", help="where the dataset is (default: the first run's own --data_dir)")
    maps.add_argument("--seed", type=int, default=0, help="seeds the image subset (as evaluate's --seed)")
    maps.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    maps.add_argument("--out", type=Path, required=True, help="the PNG to write")
    curves = commands.add_parser("curves", help="training curves from results.jsonl")
    curves.add_argument("--input_dir", type=Path, required=True,
                        help="a sweep's output folder (its run folders), or a results folder holding them in runs/")
    curves.add_argument("--explanations", type=Path,
                        help="JSON lines of `python -m domainbed_align.evaluate` on the same sweep: TimmERM's zero-map "
                             "share at its evaluated checkpoints, in the zero_cams panel")
    curves.add_argument("--out", type=Path, required=True, help="the PNG to write")
    return p


def _maps(options: argparse.Namespace) -> str:
    from domainbed_align.report import evaluate
    from domainbed_align.methods.checkpoints import algorithm_from_checkpoint, read_checkpoint

    paths = list(options.model) if options.model else runs_of_sweep(options.input_dir, options.checkpoint,
                                                                       options.trial)
    checkpoints = [read_checkpoint(path, options.device) for path in paths]
    first = checkpoints[0]["args"]
    others = {c["args"]["dataset"] for c in checkpoints[1:]} - {first["dataset"]}
    if others:
        raise CheckpointError(f"the runs must share one dataset to be shown on the same images; {paths[0]} is "
                              f"{first['dataset']}, the others {sorted(others)}.")
    names = [c["args"]["algorithm"] for c in checkpoints]
    runs = [(name if names.count(name) == 1 else f"{name} {path.parent.name[:8]}",
             algorithm_from_checkpoint(checkpoint, options.device))
            for name, path, checkpoint in zip(names, paths, checkpoints)]
    dataset = evaluate.dataset_of_run(checkpoints[0], options.data_dir)
    envs = range(len(dataset.datasets)) if options.envs == "all" else first["test_envs"]
    blocks = []
    for env in envs:
        environment = dataset.datasets[env]
        chosen = evaluate.seeded_subset(list(range(len(environment))), options.images,
                                        torch.Generator().manual_seed(options.seed))
        role = "held out" if env in first["test_envs"] else "training domain"
        blocks.append((f"{dataset.ENVIRONMENTS[env]} ({role}), images {chosen}",
                       environment_rows(runs, environment, chosen, options.device)))
    save(maps_figure(blocks), options.out)
    return (f"{options.out}: {first['dataset']}; " + "; ".join(title for title, _ in blocks) + "; rows: " +
            "; ".join(label.replace("\n", " ") for label, *_ in blocks[0][1]))


def figure_format(out: Path) -> str | None:
    """The format ``out``'s suffix names (None: no suffix, matplotlib's default, PNG), or why it cannot be written."""
    suffix = out.suffix.lstrip(".").lower()
    if not suffix:
        return None
    supported = Figure().canvas.get_supported_filetypes()
    if suffix not in supported:
        raise ValueError(f"--out {out}: matplotlib cannot write .{suffix} files; use one of "
                         f"{', '.join('.' + name for name in sorted(supported))} (e.g. .png)")
    return suffix


def save(figure: Figure, out: Path) -> None:
    """Render to a temporary file beside ``out``, then rename it over ``out`` (atomic.replacing): a reader never sees
    half a PNG, and a failed render leaves an earlier figure as it was. A file handle carries no suffix, so the format
    is passed."""
    with atomic.replacing(out) as handle:
        figure.savefig(handle, format=figure_format(out), dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("-h", "--help"):
        argv = ["maps", *argv]  # the earlier form, `figures --model ... --out ...`
    options = parser().parse_args(argv)
    try:
        figure_format(options.out)  # before any work: a suffix matplotlib cannot write is one line, not a traceback
    except ValueError as error:
        parser().error(str(error))
    try:
        if options.command == "maps":
            from domainbed_align.report import evaluate

            if options.images < 1:
                parser().error("--images must be at least 1")
            if evaluate.device_problem(options.device):
                parser().error(evaluate.device_problem(options.device))
            print(_maps(options))
        else:
            from domainbed_align.report import tables

            records = tables.load_records(options.input_dir)
            explanations = tables.read_explanations(options.explanations) if options.explanations else None
            save(curves_figure(records, tables.Names(records), explanations), options.out)
            print(f"{options.out}: training curves of {len({r['_run'] for r in records})} runs")
    except (DomainbedAlignError, ResultsFileError) as error:
        print_error(f"{error}", COMMAND)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
