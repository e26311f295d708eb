"""Names and settings checked before any data is loaded: the algorithm, the dataset, ``--hparams`` (JSON, names,
types), ``--data_dir`` and ``--test_envs`` of a DomainBed run, each with one line and a did-you-mean.

Upstream's train.py finds an unknown algorithm only after building the datasets (a NotImplementedError traceback
about 17 s in), a misspelt hparam never (or, for our algorithms, after the datasets), malformed JSON as a
JSONDecodeError traceback, and a missing ``--data_dir`` inside a dataset. The registration hook calls
:func:`check_train_arguments` when train.py first asks for hparams (before it prints them or loads data); sweeps
call :func:`check_run` for every job before launching any.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from domainbed_align.errors import DomainbedAlignError, HParamError, did_you_mean

# DomainBed's datasets that build their examples in memory and read nothing from --data_dir
NO_DATA_DIR = ("Debug28", "Debug224")


class RunArgumentError(DomainbedAlignError, ValueError):
    """A DomainBed run's algorithm, dataset, data folder or test environments that cannot work."""


def parse_hparams(text: str | None) -> dict[str, Any]:
    """``--hparams`` as a dict; one HParamError naming the problem and the expected form otherwise."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise HParamError(f"--hparams is not valid JSON ({error.msg} at character {error.pos}): {text!r}; write it "
                          f"as '{{\"name\": value, ...}}' in single quotes for the shell, e.g. "
                          f"--hparams '{{\"batch_size\": 8}}'.") from None
    if not isinstance(value, dict):
        raise HParamError(f"--hparams must be a JSON object of name: value pairs, got {text!r}, e.g. "
                          f"--hparams '{{\"batch_size\": 8}}'.")
    return value


def check_run(algorithm: str, dataset: str, hparams: dict[str, Any], data_dir: str | None,
              test_envs: Sequence[int], check_data_dir: bool = True, steps: int | None = None,
              check_length: bool = True) -> None:
    """Raise one error for the first thing about this run that cannot work. Needs ``domainbed`` importable (with
    our registration hook active: the names include ours). ``steps``: the run's length (None: the dataset's
    N_STEPS, as train.py); ``check_length``: whether the hparams are the defaults plus ``hparams`` (hparams_seed 0),
    so that the method's own loss can be checked to start within the run."""
    import domainbed.algorithms as algorithms
    import domainbed.datasets as datasets

    if algorithm not in algorithms.ALGORITHMS or not hasattr(algorithms, algorithm):
        raise RunArgumentError(f"unknown algorithm {algorithm!r}{did_you_mean(algorithm, algorithms.ALGORITHMS)}; "
                               f"DomainBed knows {', '.join(algorithms.ALGORITHMS)}.")
    if dataset not in datasets.DATASETS or not hasattr(datasets, dataset):
        raise RunArgumentError(f"unknown dataset {dataset!r}{did_you_mean(dataset, datasets.DATASETS)}; "
                               f"DomainBed knows {', '.join(datasets.DATASETS)}.")
    environments = datasets.num_environments(dataset)
    wrong = [env for env in test_envs if not 0 <= env < environments]
    if wrong:
        raise RunArgumentError(f"--test_envs {' '.join(map(str, wrong))}: {dataset} has environments "
                               f"0-{environments - 1} ({', '.join(getattr(datasets, dataset).ENVIRONMENTS)}).")
    if check_data_dir and dataset not in NO_DATA_DIR:
        if not data_dir:
            raise RunArgumentError(f"--data_dir is missing: give the folder {dataset} is in (our offline datasets: "
                                   f"python -m domainbed_align.data prepare --data_dir DIR, then --data_dir DIR).")
        if not os.path.isdir(data_dir):
            raise RunArgumentError(f"--data_dir {data_dir!r} is not a folder: give the folder {dataset} is in "
                                   f"(relative paths count from {os.getcwd()!r}).")
    run_length = (steps or getattr(datasets, dataset).N_STEPS) if check_length else None
    _check_hparams(algorithm, dataset, hparams, run_length)


def _check_hparams(algorithm: str, dataset: str, given: dict[str, Any], steps: int | None = None) -> None:
    """Names against every registered algorithm's (a sweep's --hparams reaches all of them), and, for our
    algorithms, every value's type and range and, with ``steps``, that a run that long ever trains the method's own
    loss (ALIGN: after its warm-ups)."""
    from domainbed_align.methods import hparams as hparams_lib
    from domainbed_align.methods import registry
    from domainbed_align.upstream.adapter import upstream_hparam_names

    known = upstream_hparam_names()
    if algorithm in registry.algorithm_names():
        import domainbed.hparams_registry as upstream

        merged = {**upstream.default_hparams(algorithm, dataset), **given}
        hparams_lib.validate(algorithm, merged, known)
        if steps is not None:
            registry.algorithm_class(algorithm).check_run_length(merged, steps)
        return
    unknown = sorted(set(given) - known)
    if unknown:
        hints = ", ".join(f"'{name}'{did_you_mean(name, known)}" for name in unknown)
        raise HParamError(f"unknown hparam {hints}: no algorithm defines it.")


def check_train_arguments(argv: Sequence[str]) -> None:
    """:func:`check_run` on train.py's command line (only the arguments it needs; the rest is train.py's)."""
    from domainbed_align.upstream.train_script import train_arguments

    known = train_arguments(argv)
    check_run(known.algorithm, known.dataset, parse_hparams(known.hparams), known.data_dir, known.test_envs,
              steps=known.steps, check_length=known.hparams_seed == 0)
