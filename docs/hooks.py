"""MkDocs hook: the hyperparameter table of docs/hyperparameters.md, built from the registry at build time.

The page holds the marker below; ``on_page_markdown`` replaces it with one row per hparam of
``domainbed_align.methods.registry.entries()``: its name, the algorithms that have it ("all" when every one does),
its default (a dataset-dependent default is described in words), its random search and its meaning (the spec's
own help text). Nothing of the table is written by hand, so it cannot drift from the code.
"""

from __future__ import annotations

import json

MARKER = "<!-- hparams-table -->"
PAGE = "hyperparameters.md"
HEADER = ("| hparam | algorithms | default | random search | meaning |\n"
          "|---|---|---|---|---|")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _value(value) -> str:
    """A default as the table shows it: JSON for numbers, booleans and the empty string, else the string."""
    return json.dumps(value) if value == "" or not isinstance(value, str) else value


def _datasets() -> list:
    """Dataset names a dataset-dependent default is evaluated on (every one our hparams name, and upstream's MNISTs)."""
    from domainbed_align.methods import hparams

    return sorted(set(hparams.PHOTO_DATASETS) | set(hparams.MASK_DATASETS) | set(hparams.OFFLINE_DATASETS)
                  | {"ColoredMNIST", "RotatedMNIST"})


def describe_default(spec) -> str:
    """The default in words: a value, or for a callable default the datasets where it differs from elsewhere."""
    if not callable(spec.default):
        return f"`{_value(spec.default)}`"
    elsewhere = spec.default_for(None)
    by_value: dict = {}
    for dataset in _datasets():
        value = spec.default_for(dataset)
        if value != elsewhere:
            by_value.setdefault(json.dumps(value), []).append(dataset)
    parts = [f"`{value}` on {', '.join(names)}" for value, names in by_value.items()]
    return "; ".join(parts + [f"`{_value(elsewhere)}` elsewhere"]) if parts else f"`{_value(elsewhere)}`"


def describe_random(spec) -> str:
    """The random-search distribution of ``--hparams_seed`` draws, read from the spec's sampler."""
    sample = spec.sample
    if sample is None:
        return "fixed"
    cells = dict(zip(sample.__code__.co_freevars, (c.cell_contents for c in sample.__closure__ or ())))
    if sample.__qualname__.startswith("log_uniform.") and {"low", "high"} <= set(cells):
        scaled = {dataset: spec.scale_for(dataset) for dataset in _datasets()} if spec.scale_for else {}
        scaled = {dataset: factor for dataset, factor in scaled.items() if factor != 1.0}
        return f"10^U({cells['low']:g}, {cells['high']:g})" + "".join(
            f"; times {factor:.3g} on {dataset}" for dataset, factor in scaled.items())
    if sample.__qualname__.startswith("choice.") and "values" in cells:
        return "{" + ", ".join(f"{v:g}" if isinstance(v, float) else _value(v) for v in cells["values"]) + "}"
    return "random"


def hparam_rows() -> list:
    """[(name, algorithms, default, random search, meaning)], one per hparam name, in registration order."""
    from domainbed_align.methods import registry

    entries = registry.entries()
    every = [entry.name for entry in entries]
    specs: dict = {}  # name -> [(algorithm, spec)]
    for entry in entries:
        for spec in entry.hparams:
            specs.setdefault(spec.name, []).append((entry.name, spec))
    rows = []
    for name, having in specs.items():
        algorithms = [algorithm for algorithm, _ in having]
        shown = "all" if algorithms == every else ", ".join(algorithms)

        def per_algorithm(describe):
            texts: dict = {}
            for algorithm, spec in having:
                texts.setdefault(describe(spec), []).append(algorithm)
            if len(texts) == 1:
                return next(iter(texts))
            return "; ".join(f"{text} ({', '.join(names)})" for text, names in texts.items())

        rows.append((name, shown, per_algorithm(describe_default), per_algorithm(describe_random),
                     per_algorithm(lambda spec: spec.doc)))
    return rows


def hparam_table() -> str:
    lines = [HEADER]
    for name, algorithms, default, random, meaning in hparam_rows():
        lines.append(f"| `{name}` | {_cell(algorithms)} | {_cell(default)} | {_cell(random)} | {_cell(meaning)} |")
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/{PAGE} lost its marker {MARKER}: the hyperparameter table has nowhere to go")
    return markdown.replace(MARKER, hparam_table())
